import P2PQQueue
import P2PQWire
import Testing

private let A = peer(1)
private let B = peer(2)
private let C = peer(3)

/// `from` hands its first `n` queued items to `to` (a steal answered and acknowledged), every
/// message through the wire codec.
private func move(_ n: Int, from giver: inout QueueMachine, to taker: inout QueueMachine, now: UInt64) throws {
    let transfer = giver.received(.stealRequest(queue: "q", requestID: now, maxItems: UInt32(n), thiefRate: 1000),
                                 from: taker.localPeer, now: now).transfers[0]
    let acks = taker.received(try wireRoundTrip(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: now,
                                                          items: transfer.items)), from: giver.localPeer, now: now + 1)
    for (message, _) in acks.sent { _ = giver.received(try wireRoundTrip(message), from: taker.localPeer, now: now + 2) }
}

/// Delivers every message in `actions` addressed to `target` (through the wire codec).
private func deliver(_ actions: [QueueAction], from sender: PeerID, to target: inout QueueMachine, now: UInt64) throws -> [QueueAction] {
    var replies: [QueueAction] = []
    for (message, to) in actions.sent where to == target.localPeer {
        replies += target.received(try wireRoundTrip(message), from: sender, now: now)
    }
    return replies
}

private func popAll(_ machine: inout QueueMachine, now: UInt64) -> [Int] {
    machine.pop(max: .max, waiter: nil, now: now).0.map(number)
}

private func linked(_ ids: PeerID...) -> [PeerID: QueueMachine] {
    var machines: [PeerID: QueueMachine] = [:]
    for id in ids { machines[id] = QueueMachine(name: "q", localPeer: id) }
    for a in ids { for b in ids where a != b { _ = machines[a]!.peerConnected(b, now: 0) } }
    return machines
}

@Suite struct HealTests {
    @Test("A queue that buried a peer takes it back when membership does: its messages count again, on the link that stayed up")
    func rejoinedPeerIsLinkedAgain() throws {
        let m = linked(A, B)
        var a = m[A]!, b = m[B]!
        _ = a.peerDied(B, now: 1)
        // While dead to A, B's transfers are ignored (no ack: B takes them back later).
        _ = b.push([payload(0)], now: 2)
        let transfer = b.received(.stealRequest(queue: "q", requestID: 1, maxItems: 1, thiefRate: 1000), from: A, now: 3).transfers[0]
        let message = QueueMessage.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items)
        #expect(a.received(message, from: B, now: 4).acks.isEmpty)
        // Membership takes B back (it refuted the verdict); the link never dropped.
        let back = a.peerRejoined(B, linked: true, now: 5)
        #expect(back.sent.contains { if case .stats = $0.0 { $0.1 == B } else { false } })
        #expect(a.received(message, from: B, now: 6).acks == [.accepted])
        #expect(popAll(&a, now: 7) == [0])
    }

    @Test("A holder that declared the owner dead keeps its pop confirmations and custody news, and delivers them when the owner is back: nothing lost when the next holder dies")
    func oneSidedVerdictLosesNothing() throws {
        let m = linked(A, B, C)
        var a = m[A]!, b = m[B]!, c = m[C]!
        _ = a.push((0..<10).map { payload($0) }, now: 1)
        try move(10, from: &a, to: &b, now: 10)
        // A is paused: B declares it dead (A never hears of it), pops two and passes eight on.
        _ = b.peerDied(A, now: 20)
        #expect(b.pop(max: 2, waiter: nil, now: 21).0.map(number) == [0, 1])
        try move(8, from: &b, to: &c, now: 30)
        _ = b.tick(now: 40 * ms)  // confirmations and custody news are due, but A is dead to B
        // C dies; A, back, learns it. A still believes B holds all ten.
        _ = a.peerDied(C, now: 50 * ms)
        _ = b.peerDied(C, now: 50 * ms)
        #expect(a.counters.requeuedAfterDeath == 0)
        // A refutes; membership takes it back at B, whose link to it is up.
        let news = b.peerRejoined(A, linked: true, now: 60 * ms)
        _ = try deliver(news, from: B, to: &a, now: 61 * ms)
        // The two pops are confirmed, the eight C held come back.
        #expect(a.counters.requeuedAfterDeath == 8)
        #expect(popAll(&a, now: 62 * ms) == Array(2..<10))
        #expect(a.ownedItems == 0)
    }

    @Test("Notices for an owner declared dead are dropped once its retention ends")
    func deadOwnerNoticesExpire() throws {
        var configuration = QueueConfiguration()
        configuration.deadOwnerRetention = 1 * second
        var a = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        var b = QueueMachine(name: "q", localPeer: B, configuration: configuration)
        _ = a.peerConnected(B, now: 0)
        _ = b.peerConnected(A, now: 0)
        _ = a.push((0..<4).map { payload($0) }, now: 1)
        try move(4, from: &a, to: &b, now: 10)
        _ = b.peerDied(A, now: 20)
        _ = b.pop(max: 4, waiter: nil, now: 21)
        #expect(b.pendingNoticeRuns == 1)
        var now: UInt64 = 0
        while now < 1200 * ms {
            now += 200 * ms
            _ = b.tick(now: now)
        }
        #expect(b.pendingNoticeRuns == 0)
    }

    @Test("A holder paused past its death verdict drops the copies its owner re-queued before any consumer gets them, and keeps the others")
    func pausedHolderDropsStaleCopies() throws {
        let m = linked(A, B, C)
        var a = m[A]!, b = m[B]!, c = m[C]!
        _ = a.push((0..<10).map { payload($0) }, now: 1)
        _ = c.push((100..<105).map { payload($0) }, now: 1)
        try move(10, from: &a, to: &b, now: 10)
        try move(5, from: &c, to: &b, now: 20)
        // B stops for 10 s. A declares it dead and re-queues its ten; its consumers pop three.
        _ = a.peerDied(B, now: 2 * second)
        #expect(a.counters.requeuedAfterDeath == 10)
        #expect(a.pop(max: 3, waiter: nil, now: 2 * second + 1).0.map(number) == [0, 1, 2])
        _ = a.tick(now: 2 * second + 100 * ms)
        // C never noticed (a one-sided verdict). B resumes: its first input comes 10 s after
        // its timer, so it holds other owners' items back and asks them; the consumer waits.
        let resumed = 12 * second
        let (first, actions) = b.pop(max: .max, waiter: WaiterID(1), now: resumed)
        #expect(first.count == 0)
        #expect(b.heldBackCount == 15)
        let checks = actions.sent.filter { if case .custodyCheck = $0.0 { true } else { false } }
        #expect(Set(checks.map(\.1)) == [A, C])
        let fromA = try deliver(actions, from: B, to: &a, now: resumed + 1)
        let fromC = try deliver(actions, from: B, to: &c, now: resumed + 1)
        _ = try deliver(fromA, from: A, to: &b, now: resumed + 2)
        let served = try deliver(fromC, from: C, to: &b, now: resumed + 2)
        // A's ten were stale (three popped at A, seven re-queued there); C's five were not,
        // and go to the waiting consumer.
        #expect(b.counters.staleCopiesDropped == 10)
        #expect(b.heldBackCount == 0)
        #expect(served.deliveries.map(\.1) == [Array(100..<105)])
        #expect(popAll(&a, now: resumed + 3) == Array(3..<10))
    }

    @Test("Told it was declared dead, a holder checks with the owners; with no verdict in time it releases the items (a duplicate at worst, never a loss)")
    func declaredDeadWithoutAnswerReleases() throws {
        let m = linked(A, B)
        var a = m[A]!, b = m[B]!
        _ = a.push((0..<6).map { payload($0) }, now: 1)
        try move(6, from: &a, to: &b, now: 10)
        let actions = b.declaredDead(now: 20)
        #expect(actions.sent.contains { if case .custodyCheck = $0.0 { $0.1 == A } else { false } })
        #expect(popAll(&b, now: 21).isEmpty)
        var now: UInt64 = 21
        var released: [Int] = []
        while now < 31 * second && released.isEmpty {
            now += 200 * ms
            _ = b.tick(now: now)
            released = popAll(&b, now: now)
        }
        #expect(released == Array(0..<6))
        #expect(now > 29 * second)  // after the custody check timeout (30 s), not before
    }

    @Test("A transfer in flight to a peer declared dead on a link that stays up is not taken back: the paused receiver acks it when it resumes and alone holds the items")
    func transferToPausedPeerIsKept() throws {
        let m = linked(A, B)
        var a = m[A]!, b = m[B]!
        _ = a.push((0..<5).map { payload($0) }, now: 1)
        let transfer = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 5, thiefRate: 1000), from: B, now: 10).transfers[0]
        let message = QueueMessage.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items)
        // B is paused with the transfer unread; A declares it dead. The items stay in flight.
        _ = a.peerDied(B, now: 2 * second)
        #expect(popAll(&a, now: 2 * second + 1).isEmpty)
        // B resumes, acks and pops the five; the ack reaches A before membership takes B back,
        // and is ignored.
        let ack = b.received(try wireRoundTrip(message), from: A, now: 3 * second)
        #expect(ack.acks == [.accepted])
        #expect(popAll(&b, now: 3 * second + 1) == Array(0..<5))
        _ = try deliver(ack, from: B, to: &a, now: 3 * second + 2)
        // B refutes the verdict: A sends the transfer again at once, B drops its copies and acks.
        let again = a.peerRejoined(B, linked: true, now: 3 * second + 3)
        let acks = try deliver(again, from: A, to: &b, now: 3 * second + 4)
        #expect(b.counters.duplicatesDropped == 5)
        _ = try deliver(acks, from: B, to: &a, now: 3 * second + 5)
        #expect(a.counters.transferredOut == 5 && a.counters.returnedFromTransfers == 0)
        #expect(popAll(&a, now: 3 * second + 6).isEmpty)
    }

    @Test("A transfer kept through a death verdict comes back when the link fails, or when the peer is still dead at its deadline")
    func transferToDeadPeerComesBack() throws {
        for linkFails in [true, false] {
            let m = linked(A, B)
            var a = m[A]!
            _ = a.push((0..<5).map { payload($0) }, now: 1)
            _ = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 5, thiefRate: 1000), from: B, now: 10)
            _ = a.peerDied(B, now: 2 * second)
            #expect(popAll(&a, now: 2 * second + 1).isEmpty)
            if linkFails {
                _ = a.peerDisconnected(B, now: 3 * second)
            } else {
                _ = a.tick(now: 4 * second)
                #expect(popAll(&a, now: 4 * second + 1).isEmpty, "back before the transfer's deadline")
                _ = a.tick(now: 5 * second + 10)
            }
            #expect(popAll(&a, now: 6 * second) == Array(0..<5), linkFails ? "link failed" : "deadline")
        }
    }

    @Test("The owner's re-queued copy reaching a holder during its check after a stall is delivered; only the held original is dropped as stale")
    func requeuedCopyDuringCheckIsKept() throws {
        let m = linked(A, B)
        var a = m[A]!, b = m[B]!
        _ = a.push((0..<5).map { payload($0) }, now: 1)
        try move(5, from: &a, to: &b, now: 10)
        // B pauses; A declares it dead and re-queues the five (attempt 1).
        _ = a.peerDied(B, now: 2 * second)
        #expect(a.counters.requeuedAfterDeath == 5)
        // B resumes: its consumer's pop finds the stall, holds the originals back and asks A.
        let resumed = 12 * second
        let (first, checks) = b.pop(max: .max, waiter: WaiterID(1), now: resumed)
        #expect(first.isEmpty && b.heldBackCount == 5)
        // A takes B back and hands it the re-queued copies before B's check arrives.
        _ = a.peerRejoined(B, linked: true, now: resumed + 1)
        let transfer = a.received(.stealRequest(queue: "q", requestID: 7, maxItems: 5, thiefRate: 1000), from: B, now: resumed + 2).transfers[0]
        let copies = b.received(try wireRoundTrip(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 7,
                                                            items: transfer.items)), from: A, now: resumed + 3)
        var delivered = copies.deliveries.flatMap(\.1)
        // A names the five held originals stale (it re-queued them); B drops those alone.
        let verdict = try deliver(checks, from: B, to: &a, now: resumed + 4)
        _ = try deliver(verdict, from: A, to: &b, now: resumed + 5)
        delivered += popAll(&b, now: resumed + 6)
        #expect(b.counters.staleCopiesDropped == 5 && b.heldBackCount == 0)
        #expect(delivered == Array(0..<5), "each item once: \(delivered)")
    }

    @Test("A check asked on a link that failed is asked again on the next link")
    func checkAskedAgainAfterLinkLoss() throws {
        let m = linked(A, B)
        var a = m[A]!, b = m[B]!
        _ = a.push((0..<3).map { payload($0) }, now: 1)
        try move(3, from: &a, to: &b, now: 10)
        _ = b.declaredDead(now: 20)
        _ = b.peerDisconnected(A, now: 21)
        let again = b.peerConnected(A, now: 22)
        #expect(again.sent.contains { if case .custodyCheck = $0.0 { $0.1 == A } else { false } })
        let verdict = try deliver(again, from: B, to: &a, now: 23)
        _ = try deliver(verdict, from: A, to: &b, now: 24)
        #expect(popAll(&b, now: 25) == [0, 1, 2])  // nothing re-queued: all released
    }

    @Test("A verdict names at most one frame's worth of stale runs")
    func verdictFitsAFrame() throws {
        let configuration = QueueConfiguration(maxFrameSize: 1000)
        var a = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        _ = a.push((0..<400).map { payload($0) }, now: 1)
        // Every other item at an attempt A never made: 200 stale runs that cannot merge.
        let runs = stride(from: UInt64(1), through: 400, by: 2).map { CheckedRun(first: $0, count: 1, attempt: 1) }
        let answer = a.received(.custodyCheck(queue: "q", checkID: 3, runs: runs), from: B, now: 2).sent
        guard case .custodyVerdict(_, 3, let stale) = answer.first?.0 else { Issue.record("no verdict"); return }
        #expect(stale.count == (1000 - 1 - 4 - 1 - 8 - 4) / 12)
        #expect(throws: Never.self) { try wireRoundTrip(answer[0].0, maxFrameSize: 1000) }
    }

    @Test("Custody check and verdict round-trip through the wire codec; empty runs are refused")
    func checkWire() throws {
        let check = QueueMessage.custodyCheck(queue: "q", checkID: 7, runs: [CheckedRun(first: 5, count: 3, attempt: 2)])
        #expect(try wireRoundTrip(check) == check)
        let verdict = QueueMessage.custodyVerdict(queue: "q", checkID: 7, stale: [SequenceRun(first: 5, count: 2)])
        #expect(try wireRoundTrip(verdict) == verdict)
        #expect(throws: WireError.self) {
            try wireRoundTrip(.custodyCheck(queue: "q", checkID: 1, runs: [CheckedRun(first: 5, count: 0, attempt: 0)]))
        }
    }
}
