import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// The caller's books per run (`RunBook`): a batch sent straight to an executor is one record,
/// not a flight and a ticket per call, and behaves exactly as the same calls made one by one.
@Suite struct RunBookTests {
    @Test("A batch sent on credit is one record; its results close it")
    func batchIsOneRecord() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1000), from: ex, now: 0)
        let (ids, _) = c.call(batch: (0..<200).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        #expect(c.bookedRuns == 1 && c.outstandingCalls == 200 && c.flightCount == 200)
        #expect(ids.allSatisfy { c.isOutstanding($0) && c.isDirect($0) && c.executor(of: $0) == ex && c.attempt(of: $0) == 1 })
        let first = ids[0].sequence
        let answered = c.received(.resultRun(ResultRun(firstSequence: first, outcomes: (0..<150).map { .success([UInt8($0)]) })),
                                  from: ex, now: 2)
        #expect(answered.completions.count == 150 && answered.completions[ids[149]] == .success([149]))
        #expect(c.bookedRuns == 1 && c.outstandingCalls == 50 && !c.isOutstanding(ids[0]) && c.isOutstanding(ids[150]))
        // Another member cannot answer them; a repeat is ignored.
        #expect(c.received(results((ids[150].sequence, .success([]))), from: ex2, now: 3).completions.isEmpty)
        #expect(c.counters.refusedResults == 1 && c.isOutstanding(ids[150]))
        #expect(c.received(results((first, .success([]))), from: ex, now: 3).completions.isEmpty)
        #expect(c.counters.ignoredResults == 1)
        let rest = c.received(.resultRun(ResultRun(firstSequence: ids[150].sequence, outcomes: (0..<50).map { _ in .success([]) })),
                              from: ex, now: 4)
        #expect(rest.completions.count == 50 && c.bookedRuns == 0 && c.outstandingCalls == 0 && c.runRecordsHeld == 0)
    }

    /// One call of an early run never answered must not keep every later, finished run's
    /// record: memory stays proportional to the runs waiting.
    @Test("Finished runs behind one still waiting are dropped")
    func recordsStayBounded() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(UInt32(CallerMachine.maxCredit)), from: ex, now: 0)
        let (stuck, _) = c.call(batch: (0..<4).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        _ = c.received(.resultRun(ResultRun(firstSequence: stuck[1].sequence, outcomes: [.success([]), .success([]), .success([])])),
                       from: ex, now: 1)
        for round in 0..<2000 {
            let (ids, _) = c.call(batch: (0..<8).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 2)
            _ = c.received(.resultRun(ResultRun(firstSequence: ids[0].sequence, outcomes: (0..<8).map { _ in .success([]) })),
                           from: ex, now: 2)
            _ = c.received(.credit(8), from: ex, now: 2)
            #expect(c.runRecordsHeld <= 2 + 64 + 1, "round \(round): \(c.runRecordsHeld) records")
        }
        #expect(c.bookedRuns == 1 && c.outstandingCalls == 1 && c.isOutstanding(stuck[0]))
    }

    /// The same calls, results and faults fed to two callers: one making its calls in batches
    /// (booked per run), one making them one by one (a flight and a ticket each). Every call
    /// must end the same way, and every message and push must carry the same calls.
    @Test("Booked per run or per call: the same outcomes, messages and pushes", arguments: 1...24)
    func sameAsPerCall(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var batched = CallerMachine(localPeer: me)
        var single = CallerMachine(localPeer: me)
        var now: UInt64 = 1
        var issued: [CallID] = []
        var ended: [CallID: Result<[UInt8], RemoteCallError>] = [:]
        var endedSingle: [CallID: Result<[UInt8], RemoteCallError>] = [:]

        func compare(_ a: [CallerAction], _ b: [CallerAction], _ step: String) {
            for (id, result) in a.completions {
                #expect(ended.updateValue(result, forKey: id) == nil, "\(step): \(id) ended twice")
            }
            for (id, result) in b.completions { endedSingle[id] = result }
            #expect(ended == endedSingle, "\(step)")
            #expect(calls(in: a) == calls(in: b), "\(step)")
            #expect(a.pushes.map { "\($0.id) \($0.attempt) \($0.arguments)" }.sorted()
                    == b.pushes.map { "\($0.id) \($0.attempt) \($0.arguments)" }.sorted(), "\(step)")
            #expect(batched.outstandingCalls == single.outstandingCalls, "\(step)")
            #expect(batched.counters == single.counters, "\(step)")
        }

        var runsBooked = 0
        for step in 0..<300 {
            let pick = random.next() % 100
            switch pick {
            case 0..<30:
                let count = Int(random.next() % 40) + 1
                let deadline: UInt64? = random.next() % 3 == 0 ? now + 20 + random.next() % 50 : nil
                let requests: [CallerMachine.Request] = (0..<count).map { n in
                    let kind = random.next() % 10
                    return .init(function: kind == 0 ? "g" : "f", arguments: [UInt8(n & 0xFF), UInt8(random.next() % 4)],
                                 memoize: kind == 1, deadline: kind == 2 ? nil : deadline)
                }
                let (ids, a) = batched.call(batch: requests, now: now, wallClock: 1_000_000)
                var b: [CallerAction] = []
                for request in requests {
                    b += single.call(function: request.function, arguments: request.arguments, memoize: request.memoize,
                                     deadline: request.deadline, now: now, wallClock: 1_000_000).1
                }
                issued += ids
                runsBooked += batched.bookedRuns
                compare(a, b, "step \(step): batch of \(count)")
            case 30..<60:
                // Results for some calls, from their executor, now and then from another peer.
                let open = issued.filter { batched.isOutstanding($0) }
                guard !open.isEmpty else { continue }
                let from = random.next() % 10 == 0 ? ex2 : ex
                let start = Int(random.next() % UInt64(open.count))
                let length = min(open.count - start, Int(random.next() % 30) + 1)
                let chosen = open[start..<start + length]
                let outcomes: [CallOutcome] = chosen.map { $0.sequence % 7 == 0 ? .badArguments("no") : .success([UInt8($0.sequence & 0xFF)]) }
                let message: RemoteCallMessage = zip(chosen, chosen.dropFirst()).allSatisfy({ $1.sequence == $0.sequence + 1 })
                    ? .resultRun(ResultRun(firstSequence: chosen.first!.sequence, outcomes: outcomes))
                    : .results(zip(chosen, outcomes).map { CallResultEntry(sequence: $0.sequence, outcome: $1) })
                compare(batched.received(message, from: from, now: now), single.received(message, from: from, now: now),
                        "step \(step): results")
            case 60..<70:
                let open = issued.filter { batched.isOutstanding($0) }
                guard let id = open.randomElement(using: &random) else { continue }
                compare(batched.cancel(id, now: now), single.cancel(id, now: now), "step \(step): cancel")
            case 70..<82:
                now += random.next() % 30
                compare(batched.tick(now: now), single.tick(now: now), "step \(step): tick")
            case 82..<92:
                // One executor grants credit: a batch spreads over several in blocks, calls one by
                // one alternate, by design (`batchSpreadsInBlocks`); `ex2` only forges results.
                let slots = UInt32(random.next() % 60)
                compare(batched.received(.credit(slots), from: ex, now: now), single.received(.credit(slots), from: ex, now: now),
                        "step \(step): credit")
            case 92..<96:
                compare(batched.peerDisconnected(ex, now: now), single.peerDisconnected(ex, now: now), "step \(step): disconnect")
            default:
                compare(batched.peerDied(ex, now: now), single.peerDied(ex, now: now), "step \(step): death")
                _ = batched.peerJoined(ex, now: now)
                _ = single.peerJoined(ex, now: now)
            }
        }
        // The walk went through the paths it compares: runs booked, and calls of them answered,
        // timed out, cancelled and retried.
        let kinds = Set(ended.values.map { result -> String in
            switch result {
            case .success: "success"
            case .failure(let error): String("\(error)".split(separator: " ").last ?? "")
            }
        })
        #expect(runsBooked > 0 && batched.counters.direct > 0 && batched.counters.retries > 0, "\(batched.counters)")
        #expect(kinds.isSuperset(of: ["success", "out", "cancelled"]), "\(kinds)")
    }

    /// The calls the messages of `actions` carry, as comparable lines (runs as their calls).
    private func calls(in actions: [CallerAction]) -> [String] {
        actions.sends.flatMap { message, peer -> [String] in
            switch message {
            case .directRun(let run): return run.items().map { "\(peer) direct \($0.id) \($0.attempt) \($0.arguments) \($0.deadline)" }
            case .direct(let items): return items.compactMap { try? CallItem.decode($0) }.map { "\(peer) direct \($0.id) \($0.attempt) \($0.arguments) \($0.deadline)" }
            case .cancel(let sequences): return sequences.map { "\(peer) cancel \($0)" }
            default: return ["\(peer) \(message)"]
            }
        }.sorted()
    }
}

/// Runs left waiting far apart, finished ones between them: losing their executor retries every
/// call still waiting, whatever the book compacts while it turns them into flights.
@Suite struct RunBookLossTests {
    @Test("Losing the executor of runs spread through a compacting book retries each waiting call once")
    func lossAcrossCompaction() {
        // Waiting runs with finished ones before them (0, 100 and 100 + gap), so that at some
        // gap the book compacts while the runs are turned into flights one after the other.
        for gap in 1..<80 {
            var c = CallerMachine(localPeer: me)
            _ = c.received(.credit(UInt32(CallerMachine.maxCredit)), from: ex, now: 0)
            var stuck: [CallID] = []
            for round in 0...(100 + gap) {
                let (ids, _) = c.call(batch: (0..<8).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
                // These runs keep their last call waiting; the others are answered whole.
                let answered = [0, 100, 100 + gap].contains(round) ? 7 : 8
                if answered == 7 { stuck.append(ids[7]) }
                _ = c.received(.resultRun(ResultRun(firstSequence: ids[0].sequence, outcomes: (0..<answered).map { _ in .success([]) })),
                               from: ex, now: 1)
            }
            #expect(c.bookedRuns == 3 && c.outstandingCalls == 3)
            let retried = c.peerDied(ex, now: 2)
            #expect(retried.pushes.map(\.id).sorted { $0.sequence < $1.sequence } == stuck, "gap \(gap)")
            #expect(retried.pushes.allSatisfy { $0.attempt == 2 && $0.arguments == [7] }, "gap \(gap)")
            #expect(c.bookedRuns == 0 && c.outstandingCalls == 3 && stuck.allSatisfy { c.attempt(of: $0) == 2 }, "gap \(gap)")
        }
    }
}
