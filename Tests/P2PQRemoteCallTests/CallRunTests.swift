import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// Direct calls as runs (`0x45`): the codec, and both machines fed runs.
@Suite struct CallRunCodecTests {
    static let run = CallRun(caller: peer(1), firstSequence: 7, attempt: 2, function: "fib", memoize: true,
                             deadline: 1_700_000_000_000_000_000, arguments: [[0, 0, 0, 30], [], [9]])

    @Test func roundTripsAndAgreesWithItsItems() throws {
        let runs = [
            Self.run,
            CallRun(caller: peer(2), firstSequence: .max, function: String(repeating: "é", count: 127), arguments: [[]]),
            CallRun(caller: peer(3), firstSequence: 0, function: "x", arguments: (0..<1000).map { [UInt8(truncatingIfNeeded: $0)] }),
        ]
        for run in runs {
            let message = RemoteCallMessage.directRun(run)
            let framed = try message.encoded()
            #expect(framed.count == 5 + message.bodySize)
            #expect(framed[4] == 0x45)
            #expect(try RemoteCallMessage.decode(type: .remoteCallDirectRun, body: Array(framed.dropFirst(5))) == message)
            let items = run.items()
            #expect(items.count == run.count)
            #expect(items.map(\.id.sequence) == (0..<run.count).map { run.firstSequence &+ UInt64($0) })
            #expect(try run.encodedItems().map { try CallItem.decode($0) } == items)
        }
        #expect(RemoteCallMessage.messageTypes.contains(.remoteCallDirectRun))
    }

    /// The documented layout, byte for byte.
    @Test func layout() throws {
        let run = CallRun(caller: peer(0xAB), firstSequence: 5, attempt: 2, function: "f", memoize: true, deadline: 9,
                          arguments: [[1, 2], []])
        let expected: [UInt8] = [UInt8](repeating: 0xAB, count: 32) + be64(5) + [2, 1] + be64(9) + str("f") + be16(2)
            + be32(2) + [1, 2] + be32(0)
        #expect(try Array(RemoteCallMessage.directRun(run).encoded().dropFirst(5)) == expected)
    }

    @Test func malformedRuns() {
        let head: [UInt8] = [UInt8](repeating: 1, count: 32) + be64(1) + [1, 0] + be64(0) + str("f")
        let cases: [(String, [UInt8], WireError)] = [
            ("count 0", head + be16(0), .malformed(field: "directRun.count", reason: "no entries")),
            ("fewer entries than the count", head + be16(3) + be32(1) + [7] + be32(0),
             .truncated(field: "directRun[2].arguments.length", needed: 4, available: 0)),
            ("an entry longer than what is left", head + be16(1) + be32(1000) + [1, 2],
             .truncated(field: "directRun[0].arguments", needed: 1000, available: 2)),
            ("more entries than the count", head + be16(1) + be32(0) + be32(0),
             .trailingBytes(type: .remoteCallDirectRun, count: 4)),
            ("attempt 0", [UInt8](repeating: 1, count: 32) + be64(1) + [0, 0] + be64(0) + str("f") + be16(1) + be32(0),
             .malformed(field: "directRun.attempt", reason: "attempt 0")),
            ("unknown flags", [UInt8](repeating: 1, count: 32) + be64(1) + [1, 2] + be64(0) + str("f") + be16(1) + be32(0),
             .malformed(field: "directRun.flags", reason: "unknown flag bits 0x2")),
            ("empty function", [UInt8](repeating: 1, count: 32) + be64(1) + [1, 0] + be64(0) + str("") + be16(1) + be32(0),
             .malformed(field: "directRun.function", reason: "empty")),
            ("sequences past the last", [UInt8](repeating: 1, count: 32) + be64(.max) + [1, 0] + be64(0) + str("f") + be16(2)
                + be32(0) + be32(0),
             .malformed(field: "directRun.count", reason: "2 calls from sequence \(UInt64.max) pass the last sequence")),
            ("cut in the header", [UInt8](repeating: 1, count: 20), .truncated(field: "directRun.caller", needed: 32, available: 20)),
        ]
        for (name, body, expected) in cases {
            let result = Result { () throws(WireError) in try RemoteCallMessage.decode(type: .remoteCallDirectRun, body: body) }
            switch result {
            case .success: Issue.record("\(name): decoded")
            case .failure(let error): #expect(error == expected, "\(name)")
            }
        }
    }

    @Test func encoderValidatesAndRunsKeepToTheLimits() {
        #expect(throws: WireError.malformed(field: "directRun.count", reason: "no entries")) {
            try RemoteCallMessage.directRun(CallRun(caller: peer(1), firstSequence: 1, function: "f")).encoded()
        }
        // The entry limit: a run takes 65535 calls and no more.
        var run = CallRun(caller: peer(1), firstSequence: 1, function: "f")
        while run.hasRoom(forArguments: 0) { run.append(arguments: []) }
        #expect(run.count == RemoteCallLimits.maxEntriesPerMessage)
        #expect((try? RemoteCallMessage.directRun(run).encoded()) != nil)
        // The size limit: a run stays within a frame, but always takes a first call.
        var big = CallRun(caller: peer(1), firstSequence: 1, function: "f")
        #expect(big.hasRoom(forArguments: 2 * CallRun.maxBodySize))
        while big.hasRoom(forArguments: 100_000) { big.append(arguments: [UInt8](repeating: 1, count: 100_000)) }
        #expect(big.count == 10 && big.bodySize <= CallRun.maxBodySize)
        #expect((try? RemoteCallMessage.directRun(big).encoded()) != nil)
    }

    @Test func mergingKeepsRunsApartWhereTheyDiffer() {
        func one(_ sequence: UInt64, _ function: String = "f", attempt: UInt8 = 1) -> CallRun {
            CallRun(caller: peer(1), firstSequence: sequence, attempt: attempt, function: function, arguments: [[UInt8(sequence)]])
        }
        var runs: [CallRun] = []
        for run in [one(1), one(2), one(3), one(5), one(6, "g"), one(7, "g", attempt: 2), one(8, "g", attempt: 2)] {
            runs.appendMerging(run)
        }
        #expect(runs.map(\.firstSequence) == [1, 5, 6, 7])
        #expect(runs.map(\.count) == [3, 1, 1, 2])
        #expect(runs[0].items().map(\.arguments) == [[1], [2], [3]])
    }
}

@Suite struct CallRunMachineTests {
    /// A run in: the same actions, results and counters as the same calls as single items.
    @Test func executorTreatsARunAsItsCalls() {
        let run = CallRun(caller: caller, firstSequence: 1, function: "f", arguments: [[1], [2], [3], [4]])
        let memoRun = CallRun(caller: caller, firstSequence: 5, function: "m", memoize: true, arguments: [[7], [7]])
        let unknown = CallRun(caller: caller, firstSequence: 7, function: "nope", arguments: [[1]])
        var byRun = executor(slots: 3, credit: true), byItems = executor(slots: 3, credit: true)
        _ = byRun.start()
        _ = byItems.start()
        for each in [run, memoRun, unknown] {
            let a = byRun.directRun(each, from: caller, wallClock: 0)
            let b = byItems.direct(each.encodedItems(), from: caller, wallClock: 0)
            #expect(a == b)
        }
        #expect(byRun.backlogCount == byItems.backlogCount && byRun.backlogCount == 3)
        // Every task finishes: the same results go out.
        var outRun: [ExecutorAction] = [], outItems: [ExecutorAction] = []
        for task in 1...6 {
            outRun += byRun.finished(TaskID(UInt64(task)), outcome: .success([UInt8(task)])) + byRun.flush()
            outItems += byItems.finished(TaskID(UInt64(task)), outcome: .success([UInt8(task)])) + byItems.flush()
        }
        #expect(outRun == outItems)
        #expect(outRun.messages.contains { if case .results = $0.0 { true } else { false } })
        #expect(byRun.counters == byItems.counters)
        #expect(byRun.counters.direct == 7 && byRun.counters.coalesced == 1 && byRun.counters.unknownFunction == 1)
    }

    @Test func executorRefusesARunOfAnotherCallerAndAnswersOversizedArguments() {
        var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: 4, maxArgumentSize: 2, grantsCredit: true),
                                localPeer: peer(9))
        e.register("f")
        _ = e.start()
        let forged = e.directRun(CallRun(caller: caller2, firstSequence: 1, function: "f", arguments: [[], []]),
                                 from: caller, wallClock: 0)
        #expect(forged.runs.isEmpty && e.counters.malformed == 2)
        #expect(forged.contains { if case .discard = $0 { true } else { false } })
        let mixed = e.directRun(CallRun(caller: caller, firstSequence: 1, function: "f", arguments: [[1], [1, 2, 3], [2]]),
                                from: caller, wallClock: 0)
        #expect(mixed.runs.map(\.call.sequence) == [1, 3])
        #expect(e.counters.malformed == 3)
        let answered = e.flush().messages.compactMap { message -> [CallResultEntry]? in
            if case .results(let entries) = message.0 { entries } else { nil }
        }.flatMap { $0 }
        #expect(answered.map(\.sequence) == [2])
        if case .malformedCall(let reason)? = answered.first?.outcome {
            #expect(reason.contains("call.arguments"))
        } else {
            Issue.record("not answered malformed: \(answered)")
        }
    }

    @Test func executorSkipsExpiredAndCancelledCallsOfARun() {
        var e = executor(slots: 4, credit: true)
        _ = e.start()
        _ = e.received(.cancel([2]), from: caller)
        let run = CallRun(caller: caller, firstSequence: 1, function: "f", deadline: 1000, arguments: [[1], [2], [3]])
        let late = e.directRun(run, from: caller, wallClock: 1000 + e.configuration.deadlineGrace + 1)
        #expect(late.runs.isEmpty && e.counters.droppedExpired == 2 && e.counters.droppedCancelled == 1)
        let onTime = e.directRun(CallRun(caller: caller, firstSequence: 4, function: "f", deadline: 1000, arguments: [[1]]),
                                 from: caller, wallClock: 999)
        #expect(onTime.runs.map(\.call.sequence) == [4])
    }

    /// A batch to one executor goes out as runs: one per function (and attempt, flags,
    /// deadline), consecutive sequences, arguments in order.
    @Test func callerSendsABatchAsRuns() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(100), from: ex, now: 0)
        let requests: [CallerMachine.Request] = (0..<5).map { .init(function: "f", arguments: [UInt8($0)]) }
            + [.init(function: "g", arguments: [9])]
            + (0..<2).map { .init(function: "f", arguments: [UInt8($0)], deadline: 100) }
        let (ids, actions) = c.call(batch: requests, now: 1, wallClock: 5000)
        let runs = actions.sends.compactMap { message, to -> CallRun? in
            guard to == ex, case .directRun(let run) = message else { return nil }
            return run
        }
        #expect(actions.sends.count == 3 && runs.count == 3)
        #expect(runs.map(\.function) == ["f", "g", "f"] && runs.map(\.count) == [5, 1, 2])
        #expect(runs.map(\.deadline) == [0, 0, 5000 + 99])
        #expect(runs.flatMap { $0.items() }.map(\.id) == ids)
        #expect(runs[0].items().map(\.arguments) == (0..<5).map { [UInt8($0)] })
        #expect(ids.allSatisfy { c.isDirect($0) && c.executor(of: $0) == ex })
        #expect(c.counters.direct == 8)
    }

    /// Spread call by call, a batch over four executors left each a run of one call per call.
    @Test("A batch over several executors goes in blocks: one run per executor, an even share each")
    func batchSpreadsInBlocks() {
        var c = CallerMachine(localPeer: me)
        let executors = (0..<4).map { peer(UInt8(40 + $0)) }
        for executor in executors { _ = c.received(.credit(100), from: executor, now: 0) }
        let (ids, actions) = c.call(batch: (0..<64).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        let runs = actions.sends.compactMap { message, to -> (PeerID, CallRun)? in
            guard case .directRun(let run) = message else { return nil }
            return (to, run)
        }
        #expect(runs.count == 4 && Set(runs.map(\.0)) == Set(executors), "\(runs.map { ($0.0, $0.1.count) })")
        #expect(runs.allSatisfy { $0.1.count == 16 })
        #expect(runs.flatMap { $0.1.items() }.map(\.id).sorted { $0.sequence < $1.sequence } == ids)
        // A single call afterwards is chosen alone again: the executor furthest behind.
        var shares = Dictionary(uniqueKeysWithValues: executors.map { ($0, 16) })
        for n in 0..<8 {
            let (id, _) = c.call(function: "f", arguments: [UInt8(n)], now: 2)
            shares[c.executor(of: id)!, default: 0] += 1
        }
        #expect(shares.values.allSatisfy { $0 == 18 }, "\(shares)")
        // Credit for fewer calls than the batch: the blocks shrink, nothing waits that could go.
        var d = CallerMachine(localPeer: me)
        for executor in executors { _ = d.received(.credit(3), from: executor, now: 0) }
        let (_, few) = d.call(batch: (0..<12).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        let fewRuns = few.sends.compactMap { message, _ -> CallRun? in
            if case .directRun(let run) = message { run } else { nil }
        }
        #expect(fewRuns.map(\.count) == [3, 3, 3, 3], "\(fewRuns.map(\.count))")
    }

    /// The results of a run's calls complete them one by one; a deadline fails only the calls
    /// still open; a cancel names the one call.
    @Test func callerCompletesCancelsAndTimesOutCallsOfARun() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(10), from: ex, now: 0)
        let (ids, _) = c.call(batch: (0..<4).map { .init(function: "f", arguments: [UInt8($0)], deadline: 100) }, now: 1)
        let done = c.received(results((ids[0].sequence, .success([1])), (ids[2].sequence, .success([3]))), from: ex, now: 2)
        #expect(done.completions == [ids[0]: .success([1]), ids[2]: .success([3])])
        let cancelled = c.cancel(ids[1], now: 3)
        #expect(cancelled.completions == [ids[1]: .failure(.cancelled(function: "f"))])
        #expect(cancelled.sends.map(\.0) == [.cancel([ids[1].sequence])] && cancelled.sends.first?.1 == ex)
        let timedOut = c.tick(now: 100)
        #expect(timedOut.completions == [ids[3]: .failure(.timedOut(function: "f"))])
        #expect(c.outstandingCalls == 0)
    }

    /// The executor of a run is lost: every call of it still open is pushed again (attempt 2),
    /// through the queue when no other executor grants credit, else as a run to one that does.
    @Test func losingTheExecutorOfARunRepushesEveryCall() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(10), from: ex, now: 0)
        let (ids, _) = c.call(batch: (0..<4).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        _ = c.received(results((ids[1].sequence, .success([]))), from: ex, now: 2)
        let retried = c.peerDied(ex, now: 3)
        #expect(retried.pushes.map(\.id) == [ids[0], ids[2], ids[3]])
        #expect(retried.pushes.allSatisfy { $0.attempt == 2 })
        #expect(retried.pushes.map(\.arguments) == [[0], [2], [3]])

        // With another executor granting credit, the re-pushed calls go there as runs.
        var d = CallerMachine(localPeer: me)
        _ = d.received(.credit(4), from: ex, now: 0)
        let (more, _) = d.call(batch: (0..<4).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        _ = d.received(.credit(4), from: ex2, now: 2)
        let moved = d.peerDisconnected(ex, now: 3)
        let runs = moved.sends.compactMap { message, to -> CallRun? in
            guard to == ex2, case .directRun(let run) = message else { return nil }
            return run
        }
        #expect(runs.count == 1 && runs.first?.attempt == 2)
        #expect(runs.flatMap { $0.items() }.map(\.id) == more)
        #expect(more.allSatisfy { d.executor(of: $0) == ex2 })
    }
}

/// Results as runs (`0x46`): the codec, the split of results entries into runs, and the caller
/// fed a run.
@Suite struct ResultRunTests {
    static let run = ResultRun(firstSequence: 41, outcomes: [
        .success([1, 2]), .thrown(typeName: "E", description: "d"), .unknownFunction, .badArguments("b"),
        .malformedCall("m"), .success([]),
    ])

    @Test func roundTripsWithExactSize() throws {
        let runs = [
            Self.run,
            ResultRun(firstSequence: .max, outcomes: [.success([])]),
            ResultRun(firstSequence: 0, outcomes: (0..<1000).map { .success([UInt8(truncatingIfNeeded: $0)]) }),
        ]
        for run in runs {
            let message = RemoteCallMessage.resultRun(run)
            let framed = try message.encoded()
            #expect(framed.count == 5 + message.bodySize)
            #expect(framed[4] == 0x46)
            #expect(try RemoteCallMessage.decode(type: .remoteCallResultRun, body: Array(framed.dropFirst(5))) == message)
            #expect(run.entries.map(\.sequence) == (0..<run.outcomes.count).map { run.firstSequence &+ UInt64($0) })
        }
        #expect(RemoteCallMessage.messageTypes.contains(.remoteCallResultRun))
    }

    /// The documented layout, byte for byte: 5 bytes per 16-byte result besides its value,
    /// where a results entry takes 13.
    @Test func layout() throws {
        let run = ResultRun(firstSequence: 5, outcomes: [.success([1, 2]), .unknownFunction, .badArguments("x")])
        let expected: [UInt8] = be64(5) + be16(3) + [0] + be32(2) + [1, 2] + [2] + [3] + str("x")
        #expect(try Array(RemoteCallMessage.resultRun(run).encoded().dropFirst(5)) == expected)
        let value = [UInt8](repeating: 7, count: 16)
        let entries = (1...64).map { CallResultEntry(sequence: UInt64($0), outcome: .success(value)) }
        #expect(RemoteCallMessage.results(entries).bodySize == 2 + 64 * (13 + 16))
        #expect(RemoteCallMessage.resultRun(ResultRun(firstSequence: 1, outcomes: entries.map(\.outcome))).bodySize == 10 + 64 * (5 + 16))
    }

    @Test func malformedRuns() {
        let cases: [(String, [UInt8], WireError)] = [
            ("count 0", be64(1) + be16(0), .malformed(field: "resultRun.count", reason: "no entries")),
            ("fewer outcomes than the count", be64(1) + be16(2) + [2], .truncated(field: "resultRun[1].kind", needed: 1, available: 0)),
            ("unknown kind", be64(1) + be16(1) + [9], .malformed(field: "resultRun[0].kind", reason: "unknown outcome kind 9")),
            ("a value longer than what is left", be64(1) + be16(1) + [0] + be32(100) + [1],
             .truncated(field: "resultRun[0].value", needed: 100, available: 1)),
            ("a description over the limit", be64(1) + be16(1) + [3] + be32(4097) + [UInt8](repeating: 65, count: 4097),
             .malformed(field: "resultRun[0].description", reason: "length 4097 exceeds the limit of 4096 bytes")),
            ("more outcomes than the count", be64(1) + be16(1) + [2] + [2], .trailingBytes(type: .remoteCallResultRun, count: 1)),
            ("sequences past the last", be64(.max) + be16(2) + [2, 2],
             .malformed(field: "resultRun.count", reason: "2 results from sequence \(UInt64.max) pass the last sequence")),
            ("cut in the header", [0, 0, 0], .truncated(field: "resultRun.firstSequence", needed: 8, available: 3)),
        ]
        for (name, body, expected) in cases {
            let result = Result { () throws(WireError) in try RemoteCallMessage.decode(type: .remoteCallResultRun, body: body) }
            switch result {
            case .success: Issue.record("\(name): decoded")
            case .failure(let error): #expect(error == expected, "\(name)")
            }
        }
        #expect(throws: WireError.malformed(field: "resultRun.count", reason: "no entries")) {
            try RemoteCallMessage.resultRun(ResultRun(firstSequence: 1, outcomes: [])).encoded()
        }
        #expect(throws: WireError.malformed(field: "resultRun[0].typeName", reason: "length 256 exceeds the limit of 255 bytes")) {
            try RemoteCallMessage.resultRun(ResultRun(firstSequence: 1, outcomes: [.thrown(typeName: String(repeating: "t", count: 256), description: "")])).encoded()
        }
    }

    @Test("An outcome over a string limit is refused before it is sent, naming its entry")
    func outcomeOverLimitNamesItsEntry() {
        let long = String(repeating: "x", count: RemoteCallLimits.maxTypeNameLength + 1)
        let outcomes: [CallOutcome] = [.success([1]), .thrown(typeName: long, description: "d")]
        for (message, field) in [(RemoteCallMessage.resultRun(ResultRun(firstSequence: 1, outcomes: outcomes)), "resultRun[1].typeName"),
                                 (.results(outcomes.enumerated().map { CallResultEntry(sequence: UInt64($0.offset + 1), outcome: $0.element) }), "results[1].typeName")] {
            #expect(throws: WireError.malformed(field: field, reason: "length \(long.utf8.count) exceeds the limit of \(RemoteCallLimits.maxTypeNameLength) bytes")) {
                try message.validate()
            }
        }
        #expect(throws: Never.self) { try RemoteCallMessage.resultRun(ResultRun(firstSequence: 1, outcomes: [.success([1])])).validate() }
    }

    @Test func splitKeepsEveryEntryOnce() {
        func entry(_ sequence: UInt64) -> CallResultEntry { CallResultEntry(sequence: sequence, outcome: .success([UInt8(truncatingIfNeeded: sequence)])) }
        let entries = [entry(3), entry(4), entry(5), entry(9), entry(11), entry(12), entry(7), entry(UInt64.max), entry(0)]
        let (runs, singles) = ResultRun.split(entries)
        #expect(runs.map(\.firstSequence) == [3, 11])
        #expect(runs.map(\.outcomes.count) == [3, 2])
        // The last sequence and 0 are not consecutive: no run wraps around.
        #expect(singles.map(\.sequence) == [9, 7, UInt64.max, 0])
        #expect((runs.flatMap(\.entries) + singles).sorted { $0.sequence < $1.sequence } == entries.sorted { $0.sequence < $1.sequence })
        // A run keeps to the entry limit.
        let many = (1...70_000).map { entry(UInt64($0)) }
        let (bigRuns, none) = ResultRun.split(many)
        #expect(none.isEmpty && bigRuns.map(\.outcomes.count) == [65_535, 4_465])
    }

    @Test func callerTakesARunFromTheExecutorOnly() {
        var caller = CallerMachine(localPeer: peer(1))
        _ = caller.received(.credit(8), from: peer(2), now: 0)
        let (ids, _) = caller.call(batch: (0..<4).map { CallerMachine.Request(function: "f", arguments: [UInt8($0)]) }, now: 1)
        let run = ResultRun(firstSequence: ids[0].sequence, outcomes: (0..<4).map { .success([UInt8($0), 9]) })
        // From a peer that was not sent the calls: refused, the calls stay outstanding.
        #expect(caller.received(.resultRun(run), from: peer(3), now: 2).allSatisfy { if case .complete = $0 { false } else { true } })
        #expect(caller.counters.refusedResults == 4 && caller.outstandingCalls == 4)
        let actions = caller.received(.resultRun(run), from: peer(2), now: 3)
        let completed = actions.compactMap { action -> (UInt64, Result<[UInt8], RemoteCallError>)? in
            if case .complete(let id, let result) = action { (id.sequence, result) } else { nil }
        }
        #expect(completed.map(\.0) == ids.map(\.sequence))
        #expect(completed.map(\.1) == (0..<4).map { .success([UInt8($0), 9]) })
        #expect(caller.outstandingCalls == 0)
    }
}
