import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// Decisions the remote-call shell only performs: nested calls' slot hand-over, the waiting
/// pops on the call queue, the packing of direct calls into messages.
@Suite struct ShellDecisionTests {
    @Test func aTaskWithSeveralCallsGivesItsSlotUpOnceAndWaitsForASlotOnlyAfterTheLast() {
        var e = executor(slots: 1)
        _ = e.start()
        let task = e.popped([item(1)], wallClock: 0).runs[0].id
        // `async let` makes two calls: the first gives the slot up, the second changes nothing.
        #expect(e.nestedCallMade(by: task).demand == 1)
        #expect(e.slotsInUse == 0)
        #expect(e.nestedCallMade(by: task).isEmpty)
        // One answer while the other is outstanding: handed over at once.
        #expect(e.nestedCallCompleted(by: task) == .deliverNow)
        // The last one: held until the task is resumed with a slot (free here, so at once).
        guard case .deliverOnResume(let actions) = e.nestedCallCompleted(by: task) else {
            Issue.record("the last call's result must wait for a slot")
            return
        }
        #expect(actions.resumed == [task])
        #expect(e.slotsInUse == 1)
    }

    @Test func aParkedCallCountsAgainWhenMadeAgain() {
        var e = executor(slots: 1)
        _ = e.start()
        let task = e.popped([item(1)], wallClock: 0).runs[0].id
        _ = e.nestedCallMade(by: task)
        _ = e.nestedCallMade(by: task)
        e.nestedCallParked(by: task)  // refused for the outstanding limit
        #expect(e.nestedCallCompleted(by: task) != .deliverNow)  // the one left was the last
        // Made again: the task is already resumed, it holds its slot and gives it up again.
        #expect(e.nestedCallMade(by: task).demand == 1)
    }

    @Test func twoWaitingPopsForTwoSlotsOrMore() {
        var waiters = CallQueueWaiters()
        var next: UInt64 = 0
        let makeID = { () -> UInt64 in next += 1; return next }
        #expect(waiters.adjust(to: 1, makeID: makeID) == .init(first: (1, 1)))
        // Topped up with a second pop, not replaced.
        #expect(waiters.adjust(to: 4, makeID: makeID) == .init(first: (2, 3)))
        #expect(waiters.adjust(to: 4, makeID: makeID) == .init())
        // Demand fell: withdraw all, then two pops again (the first one item short).
        #expect(waiters.adjust(to: 3, makeID: makeID) == .init(withdraw: [1, 2], first: (3, 2), second: (4, 1)))
        waiters.answered(3)
        #expect(waiters.adjust(to: 1, makeID: makeID) == .init())
        #expect(waiters.adjust(to: 0, makeID: makeID) == .init(withdraw: [4]))
        #expect(waiters.sizes.isEmpty)
    }

    @Test func directCallsArePackedWithinAFrame() {
        let small = [[UInt8]](repeating: [1, 2, 3], count: 10)
        #expect(RemoteCallMessage.directMessageEnd(small, from: 0) == 10)
        #expect(RemoteCallMessage.directMessageEnd(small, from: 7) == 10)
        let big = [UInt8](repeating: 0, count: WireProtocol.defaultMaxFrameSize / 2)
        let items = [big, big, big]
        // Two halves of a frame do not fit with their overhead; one always goes.
        #expect(RemoteCallMessage.directMessageEnd(items, from: 0) == 1)
        let huge = [[UInt8](repeating: 0, count: WireProtocol.defaultMaxFrameSize)]
        #expect(RemoteCallMessage.directMessageEnd(huge, from: 0) == 1)
    }
}

/// ``EarlyCredit``: credit granted before the node can call, kept per link.
@Suite struct EarlyCreditTests {
    func feed(_ credit: inout EarlyCredit, _ type: MessageType, _ body: [UInt8], from sender: PeerID) {
        body.withUnsafeBytes { credit.received(type, $0, from: sender) }
    }

    @Test func onlyWellFormedCreditIsKeptAndALostLinkVoidsIt() {
        var credit = EarlyCredit()
        feed(&credit, .remoteCallCredit, [0, 0, 0, 3], from: peer(2))
        feed(&credit, .remoteCallCredit, [0, 0, 0, 2], from: peer(2))
        feed(&credit, .remoteCallCredit, [0, 0, 0, 5], from: peer(1))
        feed(&credit, .remoteCallCredit, [0, 0, 0, 0], from: peer(3))  // no credit: malformed
        feed(&credit, .remoteCallCredit, [0, 0, 5], from: peer(3))  // truncated
        feed(&credit, .remoteCallCancel, [0, 0, 0, 1], from: peer(3))  // not addressed to a non-caller
        feed(&credit, .remoteCallCredit, [0xFF, 0xFF, 0xFF, 0xFF], from: peer(4))
        credit.linkLost(peer(4))
        let taken = credit.take()
        #expect(taken.map(\.peer) == [peer(1), peer(2)] && taken.map(\.slots) == [5, 5])
        #expect(credit.slots.isEmpty)
        feed(&credit, .remoteCallCredit, [0xFF, 0xFF, 0xFF, 0xFF], from: peer(4))
        #expect(credit.slots[peer(4)] == EarlyCredit.maxPerPeer)
    }
}
