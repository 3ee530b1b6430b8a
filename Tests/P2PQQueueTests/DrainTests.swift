import P2PQQueue
import P2PQWire
import Testing

private let A = peer(1)
private let B = peer(2)
private let C = peer(3)

/// Delivers every message `from` sends to `to` (through the real codec), returning the
/// receiver's actions.
private func deliver(_ actions: [QueueAction], from: PeerID, to: PeerID, into machine: inout QueueMachine, now: UInt64) throws -> [QueueAction] {
    var out: [QueueAction] = []
    for case .send(let message, let target) in actions where target == to {
        out += machine.received(try wireRoundTrip(message), from: from, now: now)
    }
    return out
}

private func transferKinds(_ actions: [QueueAction]) -> [TransferKind] {
    actions.compactMap { if case .send(.transfer(_, _, let kind, _, _), _) = $0 { kind } else { nil } }
}

private func ownerUpdates(_ actions: [QueueAction], to owner: PeerID) -> Int {
    actions.filter { if case .send(.ownerUpdate, let target) = $0 { target == owner } else { false } }.count
}

private func connected(_ x: PeerID, _ y: PeerID, configuration: QueueConfiguration = QueueConfiguration()) -> (QueueMachine, QueueMachine) {
    var a = QueueMachine(name: "q", localPeer: x, configuration: configuration)
    var b = QueueMachine(name: "q", localPeer: y, configuration: configuration)
    _ = a.peerConnected(y, now: 0)
    _ = b.peerConnected(x, now: 0)
    return (a, b)
}

@Suite struct DrainTests {
    @Test("drain: queued items leave as drain transfers; the receiver owns them, the sender drops its records on the ack")
    func handsOverOwnership() throws {
        var (a, b) = connected(A, B)
        #expect(a.push((0..<100).map { payload($0) }, now: 0).0 == .accepted)
        #expect(a.ownedItems == 100)
        let sent = a.drain(now: 1)
        #expect(transferKinds(sent) == [.drain])
        #expect(a.drainProgress.inFlight == 100 && !a.drainProgress.isComplete)
        let acks = try deliver(sent, from: A, to: B, into: &b, now: 2)
        #expect(b.ownedItems == 100 && b.counters.ownershipAdopted == 100)
        _ = try deliver(acks, from: B, to: A, into: &a, now: 3)
        #expect(a.ownedItems == 0 && a.counters.ownershipHandedOver == 100)
        #expect(a.drainProgress.isComplete)
        // B pops them in order; they are its own now: no confirmation goes to A.
        let popped = b.pop(max: 1000, waiter: nil, now: 4)
        #expect(popped.0.map(number) == Array(0..<100))
        #expect(b.ownedItems == 0)
        #expect(ownerUpdates(popped.1 + b.tick(now: 10 * second), to: A) == 0)
    }

    @Test("After a hand-over, the new owner re-queues the items when their next holder dies")
    func newOwnerRequeues() throws {
        var (a, b) = connected(A, B)
        var c = QueueMachine(name: "q", localPeer: C)
        _ = b.peerConnected(C, now: 0)
        _ = c.peerConnected(B, now: 0)
        _ = a.push((0..<50).map { payload($0) }, now: 0)
        let acks = try deliver(a.drain(now: 1), from: A, to: B, into: &b, now: 2)
        _ = try deliver(acks, from: B, to: A, into: &a, now: 3)
        _ = b.peerDied(A, now: 4)  // A left
        // C steals everything from B, and B hears the ack: C holds B's items.
        let stolen = b.received(.stealRequest(queue: "q", requestID: 1, maxItems: 50, thiefRate: 100), from: C, now: 5)
        let stealAcks = try deliver(stolen, from: B, to: C, into: &c, now: 6)
        _ = try deliver(stealAcks, from: C, to: B, into: &b, now: 7)
        #expect(b.count == 0 && c.count == 50 && b.ownedItems == 50)
        // C dies before popping: B, the owner now, puts all 50 back.
        _ = b.peerDied(C, now: 8)
        #expect(b.counters.requeuedAfterDeath == 50)
        #expect(b.pop(max: 100, waiter: nil, now: 9).0.map(number) == Array(0..<50))
    }

    @Test("A peer whose hello lacks the feature gets a handoff transfer; the ownership stays")
    func oldPeerGetsHandoff() throws {
        var a = QueueMachine(name: "q", localPeer: A)
        var b = QueueMachine(name: "q", localPeer: B)
        _ = a.peerConnected(B, adoptsOwnership: false, now: 0)
        _ = b.peerConnected(A, now: 0)
        _ = a.push((0..<10).map { payload($0) }, now: 0)
        let sent = a.drain(now: 1)
        #expect(transferKinds(sent) == [.handoff])
        let acks = try deliver(sent, from: A, to: B, into: &b, now: 2)
        #expect(b.ownedItems == 0 && b.count == 10)
        _ = try deliver(acks, from: B, to: A, into: &a, now: 3)
        #expect(a.ownedItems == 10 && a.ownedHeldElsewhere == 10)
    }

    @Test("A retransmitted drain transfer is dropped, not adopted twice")
    func retransmissionNotAdoptedTwice() throws {
        var (a, b) = connected(A, B)
        _ = a.push((0..<20).map { payload($0) }, now: 0)
        let sent = a.drain(now: 1)
        _ = try deliver(sent, from: A, to: B, into: &b, now: 2)
        _ = try deliver(sent, from: A, to: B, into: &b, now: 3)  // the ack was lost: sent again
        #expect(b.count == 20 && b.ownedItems == 20 && b.counters.duplicatesDropped == 20)
    }

    @Test("A draining consumer sends its pending confirmations at once; the drain waits for their acks; the owner re-queues nothing")
    func confirmationsFlushed() throws {
        var slow = QueueConfiguration()
        slow.confirmDelay = 3600 * second
        slow.confirmBatch = 1 << 30
        var (o, c) = connected(A, C, configuration: slow)
        _ = o.push((0..<30).map { payload($0) }, now: 0)
        let stolen = o.received(.stealRequest(queue: "q", requestID: 1, maxItems: 30, thiefRate: 100), from: C, now: 1)
        let acks = try deliver(stolen, from: A, to: C, into: &c, now: 2)
        _ = try deliver(acks, from: C, to: A, into: &o, now: 3)
        #expect(c.pop(max: 100, waiter: nil, now: 4).0.count == 30)
        #expect(ownerUpdates(c.tick(now: 5), to: A) == 0)  // held back (batching)
        #expect(c.drainProgress.pendingNotices == 30)
        let drained = c.drain(now: 6)
        #expect(ownerUpdates(drained, to: A) == 1)
        #expect(!c.drainProgress.isComplete)  // until the owner's ack
        let updateAcks = try deliver(drained, from: C, to: A, into: &o, now: 7)
        #expect(o.ownedItems == 0)
        _ = try deliver(updateAcks, from: A, to: C, into: &c, now: 8)
        #expect(c.drainProgress.isComplete && c.counters.noticesAcknowledged == 30)
        _ = o.peerDied(C, now: 9)  // C leaves
        #expect(o.counters.requeuedAfterDeath == 0 && o.count == 0)
    }

    @Test("Without a live peer the drain is stuck: it says how many items stay")
    func noLivePeer() {
        var a = QueueMachine(name: "q", localPeer: A)
        _ = a.push((0..<7).map { payload($0) }, now: 0)
        _ = a.drain(now: 1)
        let progress = a.drainProgress
        #expect(progress.queued == 7 && !progress.hasLivePeer && progress.isStuck)
    }

    @Test("A draining owner gives its records of items a peer holds to that peer, which then re-queues them when their next holder dies")
    func ownerChange() throws {
        var (a, b) = connected(A, B)
        var c = QueueMachine(name: "q", localPeer: C)
        _ = b.peerConnected(C, now: 0)
        _ = c.peerConnected(B, now: 0)
        _ = a.push((0..<40).map { payload($0) }, now: 0)
        let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 40, thiefRate: 100), from: B, now: 1)
        _ = try deliver(try deliver(stolen, from: A, to: B, into: &b, now: 2), from: B, to: A, into: &a, now: 3)
        #expect(b.count == 40 && a.ownedHeldElsewhere == 40)
        let drained = a.drain(now: 4)
        let changes = drained.filter { if case .send(.ownerChange, B) = $0 { true } else { false } }
        #expect(changes.count == 1)
        #expect(!a.drainProgress.isComplete)  // until B's ack
        let acks = try deliver(drained, from: A, to: B, into: &b, now: 5)
        #expect(b.ownedItems == 40 && b.counters.ownershipAdopted == 40)
        _ = try deliver(acks, from: B, to: A, into: &a, now: 6)
        #expect(a.ownedItems == 0 && a.counters.ownershipHandedOver == 40 && a.drainProgress.isComplete)
        _ = b.peerDied(A, now: 7)
        // B passes them to C, which dies before popping: B, their owner now, re-queues them.
        let next = b.received(.stealRequest(queue: "q", requestID: 2, maxItems: 40, thiefRate: 100), from: C, now: 8)
        _ = try deliver(try deliver(next, from: B, to: C, into: &c, now: 9), from: C, to: B, into: &b, now: 10)
        #expect(c.count == 40 && b.count == 0)
        _ = b.peerDied(C, now: 11)
        #expect(b.counters.requeuedAfterDeath == 40)
        #expect(b.pop(max: 100, waiter: nil, now: 12).0.map(number) == Array(0..<40))
    }

    @Test("An owner change lost with its link leaves the records with the owner: the holder's death re-queues them there")
    func ownerChangeLost() throws {
        var (a, b) = connected(A, B)
        _ = a.push((0..<10).map { payload($0) }, now: 0)
        let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 10, thiefRate: 100), from: B, now: 1)
        _ = try deliver(try deliver(stolen, from: A, to: B, into: &b, now: 2), from: B, to: A, into: &a, now: 3)
        #expect(a.ownedHeldElsewhere == 10)
        _ = a.drain(now: 4)
        _ = a.peerDied(B, now: 5)
        #expect(a.counters.requeuedAfterDeath == 10 && a.count == 10)
    }

    @Test("A full peer still counts as live for the drain (it makes room); a closed one does not")
    func fullPeerIsLive() throws {
        var (a, _) = connected(A, B)
        _ = a.push((0..<10).map { payload($0) }, now: 0)
        let sent = a.drain(now: 1)
        guard case .send(.transfer(_, let id, _, _, _), _)? = sent.first(where: { if case .send(.transfer, _) = $0 { true } else { false } }) else {
            Issue.record("no transfer")
            return
        }
        _ = a.received(.transferAck(queue: "q", transferID: id, status: .full), from: B, now: 2)
        #expect(a.drainProgress.queued == 10 && a.drainProgress.hasLivePeer && !a.drainProgress.isStuck)
        // Its next report says it takes items again: they go out.
        _ = a.received(.stats(queue: "q", LoadStats(sequence: 1, length: 0, waiting: 1, serviceRate: 10, finishTime: 0,
                                                  hasConsumers: true)), from: B, now: 3)
        _ = a.tick(now: 4)
        #expect(a.drainProgress.inFlight == 10)
        let c = QueueMachine(name: "q", localPeer: C)
        var d = QueueMachine(name: "q", localPeer: A)
        _ = d.peerConnected(C, now: 0)
        _ = d.push((0..<3).map { payload($0) }, now: 0)
        let handed = d.drain(now: 1)
        for case .send(.transfer(_, let id, _, _, _), _) in handed {
            _ = d.received(.transferAck(queue: "q", transferID: id, status: .closed), from: c.localPeer, now: 2)
        }
        #expect(!d.drainProgress.hasLivePeer && d.drainProgress.isStuck)
    }

    @Test("itemsHeldOnlyHere: items pushed before the mark count until a peer acks them or they are popped")
    func heldOnlyHere() throws {
        var (a, b) = connected(A, B)
        _ = a.push((0..<10).map { payload($0) }, now: 0)
        let mark = a.nextItemSequence
        _ = a.push((10..<15).map { payload($0) }, now: 0)
        #expect(a.itemsHeldOnlyHere(before: mark) == 10)
        let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 6, thiefRate: 100), from: B, now: 1)
        #expect(a.itemsHeldOnlyHere(before: mark) == 10)  // in flight: not acknowledged yet
        let acks = try deliver(stolen, from: A, to: B, into: &b, now: 2)
        _ = try deliver(acks, from: B, to: A, into: &a, now: 3)
        let taken = 10 - a.itemsHeldOnlyHere(before: mark)
        #expect(taken > 0)
        _ = a.pop(max: 10 - taken, waiter: nil, now: 4)
        #expect(a.itemsHeldOnlyHere(before: mark) == 0)
        #expect(a.itemsHeldOnlyHere(before: a.nextItemSequence) == 5)
    }
}
