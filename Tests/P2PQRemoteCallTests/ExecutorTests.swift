import Testing
import P2PQWire
@testable import P2PQRemoteCall

let caller = peer(1)
let caller2 = peer(4)

func item(_ sequence: UInt64, _ function: String = "f", args: [UInt8] = [], memoize: Bool = false, attempt: UInt8 = 1, deadline: UInt64 = 0, from: PeerID = caller) -> [UInt8] {
    try! CallItem(id: CallID(caller: from, sequence: sequence), attempt: attempt, function: function, memoize: memoize, deadline: deadline, arguments: args).encoded()
}

extension Array where Element == ExecutorAction {
    var runs: [CallTask] { flatMap { if case .run(let t) = $0 { return t } else { return [] } } }
    var resumed: [TaskID] { flatMap { if case .resume(let t) = $0 { return t } else { return [] } } }
    var demand: Int? { compactMap { if case .setDemand(let n) = $0 { return n } else { return nil } }.last }
    var cancelled: [TaskID] { compactMap { if case .cancelTask(let t) = $0 { return t } else { return nil } } }
    var messages: [(RemoteCallMessage, PeerID)] { compactMap { if case .send(let m, let p) = $0 { return (m, p) } else { return nil } } }
}

/// An executor on node `local`; without `credit` it grants none, so the queue path's messages
/// are seen alone.
func executor(slots: Int = 1, functions: [String] = ["f", "m"], credit: Bool = false, local: PeerID = peer(9)) -> ExecutorMachine {
    var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: slots, grantsCredit: credit), localPeer: local)
    for f in functions { e.register(f) }
    return e
}

@Suite struct ExecutorTests {
    @Test func runsAndAnswersInOneBatch() {
        var e = executor(slots: 4)
        #expect(e.start().demand == 4)
        let a = e.popped([item(1, args: [5]), item(2)], wallClock: 0)
        #expect(a.runs.map(\.call.sequence) == [1, 2])
        #expect(a.runs.first?.arguments == [5])
        #expect(a.demand == 2)
        let t1 = a.runs[0].id, t2 = a.runs[1].id
        _ = e.finished(t1, outcome: .success([10]))
        // Both get a started notice, call 1's too although it is answered in this batch: a
        // caller accepts a result only from a peer that announced the call, and the notices go
        // ahead of the results.
        let flushed = e.flush()
        #expect(flushed.messages.count == 2)
        #expect(flushed.messages[0].0 == .started([CallStartedEntry(sequence: 1, attempt: 1), CallStartedEntry(sequence: 2, attempt: 1)])
                && flushed.messages[0].1 == caller)
        #expect(flushed.messages[1].0 == results((1, .success([10]))))
        _ = e.finished(t2, outcome: .thrown(typeName: "E", description: "d"))
        #expect(e.flush().messages.map(\.0) == [results((2, .thrown(typeName: "E", description: "d")))])
        #expect(e.flush().isEmpty)
        #expect(e.freeSlots == 4)
    }

    @Test func unknownFunctionMalformedAndGarbage() {
        var e = executor()
        _ = e.start()
        var bad = item(3)
        bad[41] = 0  // attempt 0
        let a = e.popped([item(1, "nope"), bad, [9, 9, 9]], wallClock: 0)
        #expect(a.runs.isEmpty)
        #expect(a.contains(.discard(.truncated(field: "call.version", needed: 1, available: 0))) == false)
        #expect(a.contains(.discard(.malformed(field: "call.version", reason: "unknown version 9"))))
        #expect(e.flush().messages.map(\.0) == [
            .started([CallStartedEntry(sequence: 1, attempt: 1), CallStartedEntry(sequence: 3, attempt: 1)]),
            results((1, .unknownFunction), (3, .malformedCall("malformed call.attempt: attempt 0"))),
        ])
        #expect(e.freeSlots == 1)
    }

    @Test func slotsAreNeverExceededAndBacklogRunsInOrder() {
        var e = executor(slots: 2)
        _ = e.start()
        let a = e.popped((1...5).map { item($0) }, wallClock: 0)
        #expect(a.runs.count == 2 && e.slotsInUse == 2 && e.backlogCount == 3 && e.freeSlots == 0)
        let b = e.finished(a.runs[0].id, outcome: .success([]))
        #expect(b.runs.map(\.call.sequence) == [3])
        #expect(e.slotsInUse == 2)
    }

    @Test func nestedCallGivesUpItsSlotAndResumesFirst() {
        var e = executor(slots: 1)
        _ = e.start()
        let parent = e.popped([item(1)], wallClock: 0).runs[0].id
        #expect(e.freeSlots == 0)
        let s = e.suspend(parent)
        #expect(s.demand == 1 && e.slotsInUse == 0)
        let child = e.popped([item(2)], wallClock: 0).runs[0].id
        // The parent's awaited call is done, but the child holds the only slot.
        #expect(e.requestResume(parent).resumed.isEmpty)
        #expect(e.waitingResumers == 1)
        // An item arriving now waits behind the resumer.
        #expect(e.popped([item(3)], wallClock: 0).runs.isEmpty)
        let f = e.finished(child, outcome: .success([]))
        #expect(f.resumed == [parent] && f.runs.isEmpty)
        #expect(e.slotsInUse == 1 && e.backlogCount == 1)
        #expect(e.finished(parent, outcome: .success([])).runs.map(\.call.sequence) == [3])
        #expect(e.counters.peakSlotsInUse == 1)
    }

    @Test func resumeIsImmediateWhenASlotIsFree() {
        var e = executor(slots: 2)
        _ = e.start()
        let t = e.popped([item(1)], wallClock: 0).runs[0].id
        _ = e.suspend(t)
        #expect(e.freeSlots == 2)
        let r = e.requestResume(t)
        #expect(r.resumed == [t] && r.demand == 1)
    }

    @Test func cancelRunningQueuedAndUnseen() {
        var e = executor(slots: 1)
        _ = e.start()
        let t = e.popped([item(1), item(2)], wallClock: 0).runs[0].id
        _ = e.flush()
        let c = e.received(.cancel([1, 2, 3]), from: caller)
        #expect(c.cancelled == [t])
        #expect(e.slotsInUse == 1)  // held until the task stops
        let f = e.finished(t, outcome: .thrown(typeName: "CancellationError", description: ""))
        #expect(f.runs.isEmpty)  // item 2 was cancelled in the backlog
        #expect(e.flush().messages.isEmpty)  // nobody to answer
        #expect(e.popped([item(3)], wallClock: 0).runs.isEmpty)  // cancel arrived before the item
        #expect(e.counters.droppedCancelled == 2)
        #expect(e.freeSlots == 1)
    }

    @Test func deadCallersCallsAreDropped() {
        var e = executor(slots: 2)
        _ = e.start()
        let t = e.popped([item(1), item(2, from: caller2)], wallClock: 0).runs
        let d = e.peerDied(caller)
        #expect(d.cancelled == [t[0].id])
        #expect(e.popped([item(3)], wallClock: 0).runs.isEmpty)
        #expect(e.counters.droppedDeadCaller == 1)
        _ = e.finished(t[0].id, outcome: .success([1]))
        _ = e.finished(t[1].id, outcome: .success([2]))
        let sent = e.flush().messages
        #expect(sent.map(\.0) == [.started([CallStartedEntry(sequence: 2, attempt: 1)]), results((2, .success([2])))])
        #expect(sent.allSatisfy { $0.1 == caller2 })
        _ = e.peerJoined(caller)
        #expect(e.popped([item(4)], wallClock: 0).runs.count == 1)
    }

    @Test func expiredItemsAreSkippedAfterTheGrace() {
        var e = executor(slots: 2)
        _ = e.start()
        #expect(e.popped([item(1, deadline: 10 * second)], wallClock: 10 * second + second).runs.count == 1)
        #expect(e.popped([item(2, deadline: 10 * second)], wallClock: 10 * second + second + 1).runs.isEmpty)
        #expect(e.counters.droppedExpired == 1)
    }

    @Test func memoCoalescingHundredItemsOneExecution() {
        var e = executor(slots: 1)
        _ = e.start()
        let first = e.popped([item(0, "m", args: [7], memoize: true)], wallClock: 0).runs
        #expect(first.count == 1)
        let others = e.popped((1..<100).map { item($0, "m", args: [7], memoize: true, from: $0 % 2 == 0 ? caller : caller2) }, wallClock: 0)
        #expect(others.runs.isEmpty && e.backlogCount == 0)
        _ = e.finished(first[0].id, outcome: .success([42]))
        let sent = e.flush().messages
        let answered = sent.reduce(0) { count, pair in
            if case .results(let entries) = pair.0 { return count + entries.filter { $0.outcome == .success([42]) }.count }
            return count
        }
        #expect(answered == 100)
        #expect(e.counters.executed == 1 && e.counters.coalesced == 99)
        // Now cached: answered without running.
        #expect(e.popped([item(200, "m", args: [7], memoize: true)], wallClock: 0).runs.isEmpty)
        #expect(e.counters.memoHits == 1)
    }

    @Test func executorFailuresAreNotCachedAndCacheIsBounded() {
        var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: 1, memoCacheEntries: 2, grantsCredit: false))
        e.register("m")
        _ = e.start()
        let t = e.popped([item(1, "m", args: [1], memoize: true)], wallClock: 0).runs[0].id
        _ = e.finished(t, outcome: .thrown(typeName: "E", description: ""))
        #expect(e.memoCacheCount == 0)
        for n: UInt8 in 2...4 {
            let task = e.popped([item(UInt64(n), "m", args: [n], memoize: true)], wallClock: 0).runs[0].id
            _ = e.finished(task, outcome: .success([n]))
        }
        #expect(e.memoCacheCount == 2)
    }

    @Test func duplicateDeliveryIsNotRunTwice() {
        var e = executor(slots: 2)
        _ = e.start()
        #expect(e.popped([item(1)], wallClock: 0).runs.count == 1)
        _ = e.flush()
        #expect(e.popped([item(1, attempt: 2)], wallClock: 0).runs.isEmpty)
        #expect(e.flush().messages.map(\.0) == [started(1, attempt: 2)])
        #expect(e.counters.duplicates == 1)
    }

    @Test("Calls are found by sequence whatever their order, and leave no books behind")
    func booksHoldCallsInAnyOrderAndEmptyBehindThem() {
        let n: UInt64 = 3000
        var e = executor(slots: Int(n) + 1)
        _ = e.start()
        // The even calls first, then the odd ones below them (calls overtaken on the way).
        let order = Array(stride(from: 2, through: n, by: 2)) + Array(stride(from: 1, through: n, by: 2))
        var tasks: [UInt64: TaskID] = [:]
        for first in stride(from: 0, to: order.count, by: 64) {
            let chunk = order[first..<min(first + 64, order.count)]
            for task in e.popped(chunk.map { item($0) }, wallClock: 0).runs { tasks[task.call.sequence] = task.id }
        }
        #expect(tasks.count == order.count && e.trackedCalls == order.count)
        // Every call is found: delivered again, none runs twice; a cancel finds late and early ones.
        #expect(e.popped(order.map { item($0, attempt: 2) }, wallClock: 0).runs.isEmpty)
        #expect(e.counters.duplicates == order.count)
        #expect(Set(e.received(.cancel([1001, 1000]), from: caller).cancelled) == [tasks[1001]!, tasks[1000]!])
        // A sequence far past the others (a restarted window) is found too.
        let far = e.popped([item(n + 100_000)], wallClock: 0).runs
        #expect(far.count == 1)
        #expect(e.popped([item(n + 100_000, attempt: 2), item(999, attempt: 3)], wallClock: 0).runs.isEmpty)
        #expect(e.counters.duplicates == order.count + 2)
        tasks[n + 100_000] = far[0].id
        // Finished in a scrambled order (3001 is prime: i * 7 mod 3001 visits every index).
        let all = order + [n + 100_000]
        let scrambled = (0..<all.count).map { all[$0 * 7 % all.count] }
        _ = e.finished(scrambled.map { (tasks[$0]!, CallOutcome.success([])) })
        #expect(e.trackedCalls == 0)
        #expect(e.trackedCallers <= 1)
        // Another caller's call drops the first one's empty books.
        #expect(e.popped([item(1, from: caller2)], wallClock: 0).runs.count == 1)
        #expect(e.trackedCallers == 1 && e.trackedCalls == 1)
    }

    @Test func callerGoneLeavesOtherCallersCallsSubscribed() {
        var e = executor(slots: 8)
        _ = e.start()
        // Two callers' calls interleaved; caller2's memoized call 7 joins caller's task for call 5.
        let runs = e.popped([
            item(3), item(1, from: caller2), item(1), item(2, from: caller2),
            item(5, "m", args: [1], memoize: true), item(7, "m", args: [1], memoize: true, from: caller2),
        ], wallClock: 0).runs
        #expect(runs.map(\.call) == [
            CallID(caller: caller, sequence: 3), CallID(caller: caller2, sequence: 1), CallID(caller: caller, sequence: 1),
            CallID(caller: caller2, sequence: 2), CallID(caller: caller, sequence: 5),
        ])
        _ = e.flush()
        // Caller's own tasks are cancelled by ascending sequence; the one caller2 also waits for runs on.
        #expect(e.peerDied(caller).cancelled == [runs[2].id, runs[0].id])
        #expect(e.trackedCalls == 3)
        // Caller2's calls are still in the books: a cancel finds one.
        #expect(e.received(.cancel([2]), from: caller2).cancelled == [runs[3].id])
        _ = e.finished(runs.map { ($0.id, CallOutcome.success([UInt8($0.call.sequence)])) })
        let sent = e.flush().messages
        #expect(sent.allSatisfy { $0.1 == caller2 })
        #expect(sent.map(\.0).contains(results((1, .success([1])), (7, .success([5])))))
        #expect(e.trackedCalls == 0)
    }

    @Test func bigResultsAreSplitAndOversizedOnesReplaced() {
        var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: 8, maxMessageBodySize: 100, grantsCredit: false))
        e.register("f")
        _ = e.start()
        let tasks = e.popped((1...3).map { item($0) }, wallClock: 0).runs
        var sent: [(RemoteCallMessage, PeerID)] = []
        sent += e.finished(tasks[0].id, outcome: .success([UInt8](repeating: 1, count: 40))).messages
        sent += e.finished(tasks[1].id, outcome: .success([UInt8](repeating: 2, count: 40))).messages
        sent += e.finished(tasks[2].id, outcome: .success([UInt8](repeating: 3, count: 400))).messages
        sent += e.flush().messages
        let entries = sent.flatMap { pair -> [CallResultEntry] in
            if case .results(let list) = pair.0 { return list } else { return [] }
        }
        #expect(entries.map(\.sequence) == [1, 2, 3])
        #expect(sent.allSatisfy { $0.0.bodySize <= 100 })
        if case .thrown(let typeName, _) = entries[2].outcome { #expect(typeName == "RemoteCallError.resultTooLarge") } else { Issue.record("not replaced") }
    }

    @Test func batchOfOutcomesUpdatesDemandOnce() {
        var e = executor(slots: 4)
        _ = e.start()
        let tasks = e.popped((1...4).map { item($0) }, wallClock: 0).runs
        let actions = e.finished(tasks.map { ($0.id, CallOutcome.success([1])) })
        #expect(actions.compactMap { if case .setDemand(let n) = $0 { return n } else { return nil } } == [4])
        #expect(e.flush().messages.map(\.0) == [.started((1...4).map { CallStartedEntry(sequence: $0, attempt: 1) }),
                                                 .results((1...4).map { CallResultEntry(sequence: $0, outcome: .success([1])) })])
    }

    @Test func stopWithdrawsDemand() {
        var e = executor(slots: 3)
        #expect(e.freeSlots == 0)
        _ = e.start()
        #expect(e.stop().demand == 0)
    }

    // MARK: Credit for direct calls

    @Test func grantsFreeSlotsToRemoteCallersAndRunsTheirDirectCalls() {
        var e = executor(slots: 4, credit: true)
        _ = e.start()
        // A call of `caller` came through the queue: the caller is credited with the free slots.
        let a = e.popped([item(1)], wallClock: 0)
        #expect(a.runs.count == 1)
        let flushed = e.flush().messages
        #expect(flushed.contains { $0.0 == .credit(3) && $0.1 == caller })
        #expect(e.counters.creditGranted == 3 + 3)  // and as much to its own node (peer(9))
        // Direct calls run at once, without a started notice; the credit they used is topped up.
        let d = e.direct([item(2), item(3)], from: caller, wallClock: 0)
        #expect(d.runs.map(\.call.sequence) == [2, 3])
        #expect(e.counters.direct == 2)
        _ = e.finished(a.runs[0].id, outcome: .success([]))
        let next = e.flush().messages
        #expect(!next.contains { if case .started = $0.0 { return true } else { return false } })
        #expect(next.contains { $0.0 == results((1, .success([]))) })
        // 2 slots free, the caller holds 1 (3 granted - 2 used): topped up by 1.
        #expect(next.contains { $0.0 == .credit(1) && $0.1 == caller })
        // Nothing more to grant while nothing changes.
        #expect(e.flush().messages.isEmpty)
    }

    @Test("The credit that finished calls free goes ahead of their results, so calls made as the results arrive are sent at once")
    func creditGoesAheadOfResults() {
        var e = executor(slots: 4, credit: true)
        _ = e.start()
        _ = e.flush()
        let d = e.direct([item(2), item(3)], from: caller, wallClock: 0)
        _ = e.flush()
        for task in d.runs { _ = e.finished(task.id, outcome: .success([])) }
        let toCaller = e.flush().messages.filter { $0.1 == caller }.map(\.0)
        let credit = toCaller.firstIndex { if case .credit = $0 { return true } else { return false } }
        let answers = toCaller.firstIndex { if case .results = $0 { return true } else { return false } }
        #expect(credit != nil && answers != nil && credit! < answers!, "\(toCaller)")
    }

    @Test func directCallsBeyondTheFreeSlotsWaitInOrder() {
        var e = executor(slots: 1, credit: true)
        _ = e.start()
        let a = e.direct([item(1), item(2), item(3)], from: caller, wallClock: 0)
        #expect(a.runs.map(\.call.sequence) == [1])
        #expect(e.backlogCount == 2)
        #expect(e.slotsInUse == 1)
        let b = e.finished(a.runs[0].id, outcome: .success([]))
        #expect(b.runs.map(\.call.sequence) == [2])
        #expect(e.slotsInUse == 1)
        let c = e.finished(b.runs[0].id, outcome: .success([]))
        #expect(c.runs.map(\.call.sequence) == [3])
        #expect(e.counters.peakSlotsInUse == 1)
        // No started notices for direct calls, even those that waited.
        #expect(!e.flush().messages.contains { if case .started = $0.0 { return true } else { return false } })
    }

    @Test func directCallNamingAnotherCallerIsDiscarded() {
        var e = executor(slots: 2, credit: true)
        _ = e.start()
        let a = e.direct([item(1, from: caller2), item(2)], from: caller, wallClock: 0)
        #expect(a.runs.map(\.call.sequence) == [2])
        #expect(e.counters.malformed == 1)
        #expect(a.contains { if case .discard = $0 { return true } else { return false } })
    }

    @Test("A processing executor credits its own node and every linked node before any call ran here")
    func creditsItselfAndLinkedNodesUpFront() {
        let local = peer(9)
        var e = executor(slots: 3, credit: true, local: local)
        e.peerConnected(caller)
        #expect(e.flush().messages.isEmpty)  // not processing yet
        _ = e.start()
        e.peerConnected(caller2)
        let granted = e.flush().messages
        #expect(Set(granted.map(\.1)) == [local, caller, caller2])
        #expect(granted.allSatisfy { $0.0 == .credit(3) })
        // Its own node's direct calls run here like any caller's.
        #expect(e.direct([item(1, from: local)], from: local, wallClock: 0).runs.count == 1)
        // Stopped: its own node's credit is forgotten (its caller forgets it too).
        _ = e.stop()
        _ = e.start()
        #expect(e.flush().messages.contains { $0.0 == .credit(2) && $0.1 == local })
    }

    @Test func noCreditWhenOffOrWhenDisconnected() {

        var off = executor(slots: 2, credit: false)
        _ = off.start()
        _ = off.popped([item(1)], wallClock: 0)
        #expect(!off.flush().messages.contains { if case .credit = $0.0 { return true } else { return false } })

        var e = executor(slots: 2, credit: true)
        _ = e.start()
        _ = e.popped([item(1)], wallClock: 0)
        #expect(e.flush().messages.contains { $0.0 == .credit(1) })
        e.peerDisconnected(caller)
        let t = e.popped([item(2, from: caller2)], wallClock: 0).runs
        #expect(t.count == 1)
        // Only the caller still linked is credited; the other is again after its next call.
        #expect(e.flush().messages.allSatisfy { if case .credit = $0.0 { return $0.1 == caller2 } else { return true } })
    }
}

