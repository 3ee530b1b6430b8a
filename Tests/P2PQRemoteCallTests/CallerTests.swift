import Testing
import P2PQWire
@testable import P2PQRemoteCall

let me = peer(1)
let ex = peer(2)
let ex2 = peer(3)
let second: UInt64 = 1_000_000_000

extension Array where Element == CallerAction {
    var pushes: [CallItem] {
        compactMap { if case .push(_, let bytes) = $0 { return try? CallItem.decode(bytes) } else { return nil } }
    }
    var completions: [CallID: Result<[UInt8], RemoteCallError>] {
        var result: [CallID: Result<[UInt8], RemoteCallError>] = [:]
        for case .complete(let id, let r) in self { result[id] = r }
        return result
    }
    var sends: [(RemoteCallMessage, PeerID)] {
        compactMap { if case .send(let m, let p) = $0 { return (m, p) } else { return nil } }
    }
}

func results(_ entries: (UInt64, CallOutcome)...) -> RemoteCallMessage {
    .results(entries.map { CallResultEntry(sequence: $0.0, outcome: $0.1) })
}

func started(_ sequence: UInt64, attempt: UInt8 = 1) -> RemoteCallMessage {
    .started([CallStartedEntry(sequence: sequence, attempt: attempt)])
}

@Suite struct CallerTests {
    @Test func pushThenResultThenDuplicateIgnored() {
        var c = CallerMachine(localPeer: me)
        let (id, actions) = c.call(function: "echo", arguments: [1, 2], now: 0)
        #expect(actions.pushes == [CallItem(id: id, function: "echo", memoize: false, arguments: [1, 2])])
        #expect(c.outstandingCalls == 1)
        _ = c.received(started(id.sequence), from: ex, now: 1)
        let done = c.received(results((id.sequence, .success([9]))), from: ex, now: 1)
        #expect(done.completions == [id: .success([9])])
        #expect(c.outstandingCalls == 0)
        #expect(c.received(results((id.sequence, .success([8]))), from: ex2, now: 2).isEmpty)
        #expect(c.counters.ignoredResults == 1)
    }

    @Test func errorsPropagate() {
        var c = CallerMachine(localPeer: me)
        let (a, _) = c.call(function: "boom", arguments: [], now: 0)
        let (b, _) = c.call(function: "nope", arguments: [], now: 0)
        let (d, _) = c.call(function: "typed", arguments: [0xFF], now: 0)
        let (e, _) = c.call(function: "x", arguments: [], now: 0)
        _ = c.received(.started([a, b, d, e].map { CallStartedEntry(sequence: $0.sequence, attempt: 1) }), from: ex, now: 1)
        let done = c.received(.results([
            CallResultEntry(sequence: a.sequence, outcome: .thrown(typeName: "MyError", description: "it broke")),
            CallResultEntry(sequence: b.sequence, outcome: .unknownFunction),
            CallResultEntry(sequence: d.sequence, outcome: .badArguments("expected Int")),
            CallResultEntry(sequence: e.sequence, outcome: .malformedCall("bad")),
        ]), from: ex, now: 1).completions
        #expect(done[a] == .failure(.remote(typeName: "MyError", description: "it broke")))
        #expect(done[b] == .failure(.unknownFunction("nope")))
        #expect(done[d] == .failure(.badArguments(function: "typed", description: "expected Int")))
        #expect(done[e] == .failure(.malformedCall(function: "x", description: "bad")))
    }

    @Test func invalidCallsFailAtOnce() {
        var c = CallerMachine(localPeer: me, configuration: CallerConfiguration(maxArgumentSize: 4))
        let (a, actions) = c.call(function: "", arguments: [], now: 0)
        #expect(actions == [.complete(a, .failure(.invalidCall("function name must be 1...255 UTF-8 bytes, not 0")))])
        let (b, actions2) = c.call(function: "f", arguments: [1, 2, 3, 4, 5], now: 0)
        #expect(actions2 == [.complete(b, .failure(.invalidCall("arguments of 5 bytes exceed the limit of 4")))])
        #expect(c.outstandingCalls == 0)
    }

    @Test func deadlineFailsQueuedAndStartedCalls() {
        var c = CallerMachine(localPeer: me)
        let (a, actionsA) = c.call(function: "slow", arguments: [], deadline: 5 * second, now: 0, wallClock: 1_000 * second)
        #expect(actionsA.contains(.armTimer(at: 5 * second)))
        #expect(actionsA.pushes.first?.deadline == 1_005 * second)
        let (b, actionsB) = c.call(function: "slow", arguments: [1], deadline: 3 * second, now: 0)
        #expect(actionsB.contains(.armTimer(at: 3 * second)))
        _ = c.received(started(b.sequence), from: ex, now: 1)
        #expect(c.executor(of: b) == ex)
        #expect(c.tick(now: 3 * second - 1).completions.isEmpty)
        let t1 = c.tick(now: 3 * second)
        #expect(t1.completions == [b: .failure(.timedOut(function: "slow"))])
        #expect(t1.sends.map(\.1) == [ex])
        #expect(t1.sends.first?.0 == .cancel([b.sequence]))
        #expect(t1.contains(.armTimer(at: 5 * second)))
        let t2 = c.tick(now: 6 * second)
        #expect(t2.completions == [a: .failure(.timedOut(function: "slow"))])
        #expect(t2.contains(.removeFromQueue(a)))
        // A result after the deadline is ignored.
        #expect(c.received(results((a.sequence, .success([]))), from: ex, now: 7 * second).completions.isEmpty)
        // Without a wall clock the item carries no deadline hint.
        #expect(c.call(function: "slow", arguments: [2], deadline: 9 * second, now: 7 * second).1.pushes.first?.deadline == 0)
        // A deadline already past fails at once.
        let (late, actions) = c.call(function: "slow", arguments: [], deadline: 1, now: 2)
        #expect(actions == [.complete(late, .failure(.timedOut(function: "slow")))])
    }

    @Test func cancellation() {
        var c = CallerMachine(localPeer: me)
        let (queued, _) = c.call(function: "f", arguments: [1], now: 0)
        let (running, _) = c.call(function: "f", arguments: [2], now: 0)
        _ = c.received(started(running.sequence), from: ex, now: 1)
        let a = c.cancel(queued, now: 2)
        #expect(a.completions == [queued: .failure(.cancelled(function: "f"))])
        #expect(a.contains(.removeFromQueue(queued)))
        #expect(a.sends.isEmpty)
        let b = c.cancel(running, now: 3)
        #expect(b.completions == [running: .failure(.cancelled(function: "f"))])
        #expect(b.sends.first?.0 == .cancel([running.sequence]) && b.sends.first?.1 == ex)
        #expect(c.outstandingCalls == 0)
        // The queued item moved on before it could be removed: its started notice gets a cancel.
        let stray = c.received(started(queued.sequence), from: ex2, now: 4)
        #expect(stray.sends.first?.0 == .cancel([queued.sequence]) && stray.sends.first?.1 == ex2)
        #expect(c.cancel(queued, now: 5).isEmpty)
    }

    @Test func executorDeathRetriesThenSucceeds() {
        var c = CallerMachine(localPeer: me)
        let (id, _) = c.call(function: "f", arguments: [7], now: 0)
        _ = c.received(started(id.sequence), from: ex, now: 1)
        #expect(c.peerDied(peer(9), now: 2).isEmpty)  // not its executor
        let retry = c.peerDied(ex, now: 3)
        #expect(retry.pushes == [CallItem(id: id, attempt: 2, function: "f", memoize: false, arguments: [7])])
        #expect(c.executor(of: id) == nil && c.attempt(of: id) == 2)
        // A late notice of attempt 1 no longer names the executor.
        _ = c.received(started(id.sequence, attempt: 1), from: ex2, now: 4)
        #expect(c.executor(of: id) == nil)
        _ = c.received(started(id.sequence, attempt: 2), from: ex2, now: 5)
        #expect(c.executor(of: id) == ex2)
        #expect(c.received(results((id.sequence, .success([49]))), from: ex2, now: 6).completions == [id: .success([49])])
        #expect(c.counters.retries == 1)
    }

    @Test func retriesExhausted() {
        var c = CallerMachine(localPeer: me, configuration: CallerConfiguration(maxRetries: 3))
        let (id, _) = c.call(function: "f", arguments: [], now: 0)
        var last: [CallerAction] = []
        for attempt in 1...4 {
            let executor = peer(UInt8(10 + attempt))
            _ = c.received(started(id.sequence, attempt: UInt8(attempt)), from: executor, now: 1)
            #expect(c.executor(of: id) == executor)
            last = c.peerLeft(executor, now: 2)
            if attempt < 4 { #expect(last.pushes.first?.attempt == UInt8(attempt + 1)) }
        }
        #expect(last.pushes.isEmpty)
        #expect(last.completions == [id: .failure(.retriesExhausted(function: "f", attempts: 4))])
        #expect(c.outstandingCalls == 0)
    }

    @Test func startedFromAPeerAlreadyLostCountsAsALoss() {
        var c = CallerMachine(localPeer: me)
        let (id, _) = c.call(function: "f", arguments: [], now: 0)
        _ = c.peerDied(ex, now: 1)
        let actions = c.received(started(id.sequence), from: ex, now: 2)
        #expect(actions.pushes.first?.attempt == 2)
        _ = c.peerJoined(ex, now: 3)
        _ = c.received(started(id.sequence, attempt: 2), from: ex, now: 4)
        #expect(c.executor(of: id) == ex)
    }

    @Test func memoCoalescingHundredCallsOneItem() {
        var c = CallerMachine(localPeer: me)
        var ids: [CallID] = []
        var pushes = 0
        for _ in 0..<100 {
            let (id, actions) = c.call(function: "fib", arguments: [30], memoize: true, now: 0)
            ids.append(id)
            pushes += actions.pushes.count
        }
        #expect(pushes == 1)
        #expect(c.flightCount == 1 && c.outstandingCalls == 100)
        _ = c.received(started(ids[0].sequence), from: ex, now: 1)
        let done = c.received(results((ids[0].sequence, .success([1, 2]))), from: ex, now: 1).completions
        #expect(done.count == 100 && done.values.allSatisfy { $0 == .success([1, 2]) })
        let (hit, actions) = c.call(function: "fib", arguments: [30], memoize: true, now: 2)
        #expect(actions == [.complete(hit, .success([1, 2]))])
        #expect(c.counters.memoHits == 1 && c.counters.coalesced == 99)
        // Not memoized: no cache, no coalescing.
        #expect(c.call(function: "fib", arguments: [30], now: 3).1.pushes.count == 1)
    }

    @Test func coalescedCallsCancelIndependently() {
        var c = CallerMachine(localPeer: me)
        let (a, _) = c.call(function: "m", arguments: [1], memoize: true, now: 0)
        let (b, _) = c.call(function: "m", arguments: [1], memoize: true, now: 0)
        _ = c.received(started(a.sequence), from: ex, now: 1)
        let cancelA = c.cancel(a, now: 2)
        #expect(cancelA.completions == [a: .failure(.cancelled(function: "m"))])
        #expect(cancelA.sends.isEmpty)  // b still waits for the execution
        #expect(c.received(results((a.sequence, .success([5]))), from: ex, now: 3).completions == [b: .success([5])])
    }

    @Test func laterDeadlineDoesNotJoin() {
        var c = CallerMachine(localPeer: me)
        _ = c.call(function: "m", arguments: [1], memoize: true, deadline: 10, now: 0)
        #expect(c.call(function: "m", arguments: [1], memoize: true, deadline: 20, now: 0).1.pushes.count == 1)
        #expect(c.call(function: "m", arguments: [1], memoize: true, deadline: 5, now: 0).1.pushes.isEmpty)
    }

    @Test func failuresAreNotCached() {
        var c = CallerMachine(localPeer: me)
        let (a, _) = c.call(function: "m", arguments: [1], memoize: true, now: 0)
        _ = c.received(started(a.sequence), from: ex, now: 1)
        _ = c.received(results((a.sequence, .thrown(typeName: "E", description: "no"))), from: ex, now: 1)
        #expect(c.memoCacheCount == 0)
        #expect(c.call(function: "m", arguments: [1], memoize: true, now: 2).1.pushes.count == 1)
    }

    @Test func memoCacheIsBoundedLRU() {
        var c = CallerMachine(localPeer: me, configuration: CallerConfiguration(memoCacheEntries: 2))
        for n: UInt8 in 1...3 {
            let (id, _) = c.call(function: "m", arguments: [n], memoize: true, now: 0)
            _ = c.received(started(id.sequence), from: ex, now: 1)
            _ = c.received(results((id.sequence, .success([n]))), from: ex, now: 1)
            if n == 2 { _ = c.call(function: "m", arguments: [1], memoize: true, now: 1) }  // touch 1
        }
        #expect(c.memoCacheCount == 2)
        #expect(c.isCached(function: "m", arguments: [1]))
        #expect(!c.isCached(function: "m", arguments: [2]))
        #expect(c.isCached(function: "m", arguments: [3]))
    }

    @Test func outstandingLimitAndCapacitySignal() {
        var c = CallerMachine(localPeer: me, configuration: CallerConfiguration(maxOutstandingCalls: 2))
        let (a, _) = c.call(function: "f", arguments: [], now: 0)
        _ = c.call(function: "f", arguments: [], now: 0)
        let (refused, actions) = c.call(function: "f", arguments: [], now: 0)
        #expect(actions == [.complete(refused, .failure(.tooManyOutstandingCalls(limit: 2)))])
        #expect(!c.hasCapacity)
        _ = c.received(started(a.sequence), from: ex, now: 1)
        let done = c.received(results((a.sequence, .success([]))), from: ex, now: 1)
        #expect(done.contains(.capacityAvailable))
        #expect(c.hasCapacity)
    }

    @Test func batchOfCalls() {
        var c = CallerMachine(localPeer: me)
        let (ids, actions) = c.call(batch: [
            .init(function: "f", arguments: [1]),
            .init(function: "", arguments: []),
            .init(function: "f", arguments: [2], deadline: 50),
        ], now: 0)
        #expect(ids.map(\.sequence) == [1, 2, 3])
        #expect(actions.pushes.map(\.arguments) == [[1], [2]])
        #expect(actions.completions.keys.map(\.sequence) == [2])
        #expect(actions.filter { if case .armTimer = $0 { return true } else { return false } } == [.armTimer(at: 50)])
    }

    @Test func deadlineHeapStaysBounded() {
        var c = CallerMachine(localPeer: me)
        for round in 0..<2000 {
            let (id, _) = c.call(function: "f", arguments: [], deadline: UInt64(round) + 1000 * second, now: UInt64(round))
            _ = c.received(started(id.sequence), from: ex, now: UInt64(round))
            _ = c.received(results((id.sequence, .success([]))), from: ex, now: UInt64(round))
        }
        #expect(c.outstandingCalls == 0)
        #expect(c.tick(now: 2000 * second).completions.isEmpty)
    }

    // MARK: Direct calls

    @Test func creditSendsCallsStraightToTheExecutor() throws {
        var c = CallerMachine(localPeer: me)
        #expect(c.received(.credit(2), from: ex, now: 0).isEmpty)
        #expect(c.credit(of: ex) == 2)
        let (a, first) = c.call(function: "echo", arguments: [1], now: 1)
        #expect(first.pushes.isEmpty)
        let sent = first.sends
        #expect(sent.count == 1 && sent[0].1 == ex)
        guard case .directRun(let run) = sent[0].0 else { Issue.record("not a direct run: \(sent)"); return }
        #expect(run.items() == [CallItem(id: a, function: "echo", memoize: false, arguments: [1])])
        #expect(c.executor(of: a) == ex && c.isDirect(a))
        // A batch made in one input travels in one message.
        let (_, batch) = c.call(batch: [.init(function: "echo", arguments: [2]), .init(function: "echo", arguments: [3])], now: 2)
        #expect(batch.pushes.isEmpty)  // the credit ran out after one: the other waits for more
        #expect(c.callsWaitingForCredit == 1)
        #expect(batch.sends.count == 1)
        #expect(c.counters.direct == 2)
        // The result completes it like any other.
        #expect(c.received(results((a.sequence, .success([7]))), from: ex, now: 3).completions == [a: .success([7])])
    }

    /// Calls spread by equal shares (RoundTripSpreadTests); among executors with equal shares
    /// so far, the one with the most credit (free slots) goes first. (This test once pinned
    /// "the most credit always wins", which sent calls made one at a time all to one executor.)
    @Test func amongEqualSharesTheMostCreditGoesFirst() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        _ = c.received(.credit(3), from: ex2, now: 0)
        let (_, actions) = c.call(function: "f", arguments: [], now: 1)
        #expect(actions.sends.first?.1 == ex2)
        // ex2 is a call ahead now: the next goes to ex although ex2 still has more credit.
        #expect(c.call(function: "f", arguments: [], now: 2).1.sends.first?.1 == ex)
    }

    @Test func aLinkDownPushesUnansweredDirectCallsAgain() throws {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(4), from: ex, now: 0)
        let (a, _) = c.call(function: "f", arguments: [], now: 1)
        let (b, _) = c.call(function: "f", arguments: [], now: 1)
        _ = c.received(results((b.sequence, .success([]))), from: ex, now: 2)
        let retried = c.peerDisconnected(ex, now: 3)
        // Only the unanswered one, as attempt 2, and through the queue (the credit is void).
        #expect(retried.pushes.map(\.id) == [a])
        #expect(retried.pushes.first?.attempt == 2)
        #expect(c.credit(of: ex) == 0)
        #expect(c.counters.retries == 1)
        // Its late result from the old attempt still completes it.
        #expect(c.received(results((a.sequence, .success([1]))), from: ex, now: 4).completions == [a: .success([1])])
    }

    @Test func aDeadExecutorsCreditIsVoidAndItsDirectCallsRetried() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        let (a, _) = c.call(function: "f", arguments: [], now: 1)
        let retried = c.peerDied(ex, now: 2)
        #expect(retried.pushes.map(\.id) == [a])
        // Credit from a peer written off is not used.
        _ = c.received(.credit(5), from: ex, now: 3)
        #expect(c.credit(of: ex) == 0)
        let (_, next) = c.call(function: "f", arguments: [], now: 4)
        #expect(next.pushes.count == 1)
    }

    // MARK: Who may answer

    @Test("A result from a peer that neither was sent the call nor announced it is refused and counted")
    func forgedResultIsRefused() {
        var c = CallerMachine(localPeer: me)
        let intruder = peer(7)
        // A queued call: nobody has announced it yet.
        let (queued, _) = c.call(function: "f", arguments: [1], now: 0)
        #expect(c.received(results((queued.sequence, .success([66]))), from: intruder, now: 1).completions.isEmpty)
        #expect(c.counters.refusedResults == 1 && c.isOutstanding(queued))
        // Started at ex: still refused from the intruder, accepted from ex.
        _ = c.received(started(queued.sequence), from: ex, now: 2)
        #expect(c.received(results((queued.sequence, .success([66]))), from: intruder, now: 3).completions.isEmpty)
        #expect(c.counters.refusedResults == 2)
        #expect(c.received(results((queued.sequence, .success([1]))), from: ex, now: 4).completions == [queued: .success([1])])
        // A direct call: only the executor it was sent to answers.
        _ = c.received(.credit(1), from: ex2, now: 5)
        let (direct, _) = c.call(function: "f", arguments: [2], now: 6)
        #expect(c.isDirect(direct))
        #expect(c.received(results((direct.sequence, .success([66]))), from: intruder, now: 7).completions.isEmpty)
        #expect(c.counters.refusedResults == 3)
        #expect(c.received(results((direct.sequence, .success([2]))), from: ex2, now: 8).completions == [direct: .success([2])])
        #expect(c.counters.ignoredResults == 0)
    }

    @Test("Executors of earlier attempts, and a second executor of a duplicate delivery, may still answer")
    func earlierAttemptsStayAcceptable() {
        var c = CallerMachine(localPeer: me)
        let (id, _) = c.call(function: "f", arguments: [], now: 0)
        _ = c.received(started(id.sequence), from: ex, now: 1)
        _ = c.peerDied(ex, now: 2)  // attempt 2 is pushed
        _ = c.received(started(id.sequence, attempt: 2), from: ex2, now: 3)
        #expect(c.received(results((id.sequence, .success([1]))), from: ex, now: 4).completions == [id: .success([1])])
        // A duplicate delivery: two executors announce the same attempt; either may answer.
        let (twice, _) = c.call(function: "f", arguments: [], now: 5)
        _ = c.received(started(twice.sequence), from: ex, now: 6)
        _ = c.received(started(twice.sequence), from: ex2, now: 6)
        #expect(c.received(results((twice.sequence, .success([2]))), from: ex2, now: 7).completions == [twice: .success([2])])
        #expect(c.counters.refusedResults == 0)
    }

    // MARK: Waiting for credit

    @Test("With every granting executor out of credit, calls wait here and go out as credit comes")
    func callsWaitForCreditAndGoOutAsItComes() throws {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        _ = c.received(.credit(1), from: ex2, now: 0)
        let (ids, first) = c.call(batch: (0..<5).map { .init(function: "f", arguments: [UInt8($0)]) }, now: 1)
        #expect(first.pushes.isEmpty)
        #expect(Set(first.sends.map(\.1)) == [ex, ex2])
        #expect(c.callsWaitingForCredit == 3 && c.isWaitingForCredit(ids[2]) && c.counters.heldForCredit == 3)
        // Credit of 2 from ex sends the two oldest there, in order, in one message.
        let more = c.received(.credit(2), from: ex, now: 2)
        guard case .directRun(let run)? = more.sends.first?.0, more.sends.count == 1, more.sends[0].1 == ex else {
            Issue.record("expected one direct run to ex: \(more)"); return
        }
        #expect(run.items().map(\.id) == [ids[2], ids[3]])
        #expect(c.executor(of: ids[2]) == ex && c.isDirect(ids[3]) && c.callsWaitingForCredit == 1)
        // The last waits; it goes when ex2 answers with credit.
        #expect(c.received(.credit(1), from: ex2, now: 3).sends.first?.1 == ex2)
        #expect(c.callsWaitingForCredit == 0 && c.counters.direct == 5 && c.counters.pushes == 5)
    }

    @Test("Waiting calls are pushed on the queue when no credit comes within creditWait, and later calls do not wait")
    func waitingCallsArePushedWhenCreditStops() {
        var c = CallerMachine(localPeer: me, configuration: CallerConfiguration(creditWait: 100))
        _ = c.received(.credit(1), from: ex, now: 0)
        _ = c.call(function: "f", arguments: [0], now: 10)
        let (held, actions) = c.call(function: "f", arguments: [1], now: 20)
        #expect(actions.pushes.isEmpty && c.isWaitingForCredit(held))
        #expect(actions.contains(.armTimer(at: 120)))
        #expect(c.tick(now: 119).pushes.isEmpty)
        let expired = c.tick(now: 120)
        #expect(expired.pushes.map(\.id) == [held])
        #expect(c.counters.creditWaitsExpired == 1 && !c.isWaitingForCredit(held))
        // The silent executor is no longer waited for, until it grants again.
        #expect(c.call(function: "f", arguments: [2], now: 130).1.pushes.count == 1)
        _ = c.received(.credit(1), from: ex, now: 140)
        #expect(c.call(function: "f", arguments: [3], now: 150).1.sends.first?.1 == ex)
    }

    @Test("Losing the last executor that granted credit pushes the waiting calls on the queue")
    func losingTheLastCreditSourcePushesWaitingCalls() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        let (direct, _) = c.call(function: "f", arguments: [0], now: 1)
        let (held, _) = c.call(function: "f", arguments: [1], now: 1)
        let lost = c.peerDisconnected(ex, now: 2)
        #expect(Set(lost.pushes.map(\.id)) == [direct, held])
        #expect(lost.pushes.first { $0.id == held }?.attempt == 1)
        #expect(c.callsWaitingForCredit == 0)
        // This node's own executor stopping: the same for its credit.
        var own = CallerMachine(localPeer: me)
        _ = own.received(.credit(1), from: me, now: 0)
        _ = own.call(function: "f", arguments: [0], now: 1)
        let (waiting, _) = own.call(function: "f", arguments: [1], now: 1)
        #expect(own.executorStopped(me, now: 2).pushes.map(\.id) == [waiting])
    }

    @Test("A waiting call keeps its deadline and can be cancelled; neither is sent later")
    func waitingCallsTimeOutAndCancel() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        _ = c.call(function: "f", arguments: [0], now: 1)
        let (late, _) = c.call(function: "f", arguments: [1], deadline: 50, now: 1)
        let (unwanted, _) = c.call(function: "f", arguments: [2], now: 1)
        let cancelled = c.cancel(unwanted, now: 2)
        #expect(cancelled.completions == [unwanted: .failure(.cancelled(function: "f"))])
        #expect(!cancelled.contains { if case .removeFromQueue = $0 { return true } else { return false } })
        #expect(cancelled.sends.isEmpty)
        #expect(c.tick(now: 50).completions == [late: .failure(.timedOut(function: "f"))])
        #expect(c.callsWaitingForCredit == 0)
        // Credit now sends nothing: both are gone.
        #expect(c.received(.credit(5), from: ex, now: 60).sends.isEmpty)
        #expect(c.outstandingCalls == 1)
    }

    @Test("A direct call retried after its executor died waits for credit of the others when they have none left")
    func retriedCallWaitsForCredit() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        _ = c.received(.credit(1), from: ex2, now: 0)
        let (a, first) = c.call(function: "f", arguments: [0], now: 1)
        let (b, _) = c.call(function: "f", arguments: [1], now: 1)
        #expect(first.sends.first?.1 == ex && c.executor(of: b) == ex2)
        #expect(c.peerDied(ex, now: 2).pushes.isEmpty)
        #expect(c.isWaitingForCredit(a) && c.attempt(of: a) == 2)
        let sent = c.received(.credit(1), from: ex2, now: 3)
        #expect(sent.sends.first?.1 == ex2 && c.executor(of: a) == ex2)
    }

    @Test func cancellingADirectCallTellsItsExecutor() {
        var c = CallerMachine(localPeer: me)
        _ = c.received(.credit(1), from: ex, now: 0)
        let (a, _) = c.call(function: "f", arguments: [], now: 1)
        let cancelled = c.cancel(a, now: 2)
        #expect(cancelled.completions == [a: .failure(.cancelled(function: "f"))])
        #expect(cancelled.sends.contains { $0.0 == .cancel([a.sequence]) && $0.1 == ex })
        #expect(!cancelled.contains { if case .removeFromQueue = $0 { return true } else { return false } })
    }
}

