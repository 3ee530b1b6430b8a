import P2PQQueue
import P2PQWire
import Testing

// Owner O drains while holder H had passed its items on (or had them in flight) to T.
private let O = peer(11)
private let H = peer(12)
private let T = peer(13)
private let U = peer(14)

/// Delivers, in order, every message of `actions` addressed to `to` (through the real codec).
private func deliver(_ actions: [QueueAction], from: PeerID, to: PeerID, into machine: inout QueueMachine, now: UInt64) throws -> [QueueAction] {
    var out: [QueueAction] = []
    for case .send(let message, let target) in actions where target == to {
        out += machine.received(try wireRoundTrip(message), from: from, now: now)
    }
    return out
}

/// The kinds of messages sent to `target`, in order.
private func sent(_ actions: [QueueAction], to target: PeerID) -> [String] {
    actions.compactMap { action -> String? in
        guard case .send(let message, let to) = action, to == target else { return nil }
        switch message {
        case .ownerUpdate: return "update"
        case .ownerUpdateAck: return "ack"
        case .ownerChange: return "change"
        case .transfer: return "transfer"
        case .transferAck: return "transferAck"
        default: return nil
        }
    }
}

/// `taker` steals `count` items from `giver`; returns the giver's transfer actions and the
/// taker's acks (not delivered back).
private func steal(_ count: Int, from giver: inout QueueMachine, by taker: inout QueueMachine, id: UInt64, now: UInt64) throws -> (transfer: [QueueAction], acks: [QueueAction]) {
    let transfer = giver.received(.stealRequest(queue: "q", requestID: id, maxItems: UInt32(count), thiefRate: 100), from: taker.localPeer, now: now)
    let acks = try deliver(transfer, from: giver.localPeer, to: taker.localPeer, into: &taker, now: now + 1)
    return (transfer, acks)
}

/// O, H and T linked pairwise; H batches its notices for an hour, so its custody news is still
/// pending when O drains. O pushed 40 items, H stole them (acknowledged).
private func cluster() throws -> (o: QueueMachine, h: QueueMachine, t: QueueMachine) {
    var slow = QueueConfiguration()
    slow.confirmDelay = 3600 * second
    slow.confirmBatch = 1 << 30
    var o = QueueMachine(name: "q", localPeer: O)
    var h = QueueMachine(name: "q", localPeer: H, configuration: slow)
    var t = QueueMachine(name: "q", localPeer: T)
    _ = o.peerConnected(H, now: 0)
    _ = o.peerConnected(T, now: 0)
    _ = h.peerConnected(O, now: 0)
    _ = h.peerConnected(T, now: 0)
    _ = t.peerConnected(O, now: 0)
    _ = t.peerConnected(H, now: 0)
    _ = o.push((0..<40).map { payload($0) }, now: 0)
    let (_, acks) = try steal(40, from: &o, by: &h, id: 1, now: 1)
    _ = try deliver(acks, from: H, to: O, into: &o, now: 2)
    #expect(h.count == 40 && o.ownedHeldElsewhere == 40)
    return (o, h, t)
}

/// After O left: T (now their owner) passes the items to U, U dies: T re-queues all 40.
private func newOwnerRequeues(_ t: inout QueueMachine, now: UInt64) throws {
    _ = t.peerDied(O, now: now)  // O left
    var u = QueueMachine(name: "q", localPeer: U)
    _ = t.peerConnected(U, now: now)
    _ = u.peerConnected(T, now: now)
    let (_, acks) = try steal(40, from: &t, by: &u, id: 9, now: now + 1)
    _ = try deliver(acks, from: U, to: T, into: &t, now: now + 2)
    #expect(u.count == 40 && t.count == 0)
    _ = t.peerDied(U, now: now + 3)
    #expect(t.counters.requeuedAfterDeath == 40)
    #expect(t.pop(max: 100, waiter: nil, now: now + 4).0.map(number) == Array(0..<40))
}

@Suite struct DrainHandOnTests {
    @Test("An owner change for items the holder already passed on: the holder's custody news goes first, the owner offers the records to the node holding them, which re-queues them when their next holder dies")
    func passedOn() throws {
        var (o, h, t) = try cluster()
        let (_, acks) = try steal(40, from: &h, by: &t, id: 2, now: 3)
        _ = try deliver(acks, from: T, to: H, into: &h, now: 4)
        #expect(t.count == 40 && h.count == 0)  // H's custody news for O waits (batching)
        let drained = o.drain(now: 5)
        #expect(sent(drained, to: H) == ["change"])
        let answer = try deliver(drained, from: O, to: H, into: &h, now: 6)
        #expect(sent(answer, to: O) == ["update", "ack"])  // custody news before the ack
        let regrant = try deliver(answer, from: H, to: O, into: &o, now: 7)
        #expect(sent(regrant, to: T) == ["change"])
        // H's ack did not drop the records now offered to T.
        #expect(o.ownedItems == 40 && !o.drainProgress.isComplete)
        let adopted = try deliver(regrant, from: O, to: T, into: &t, now: 8)
        #expect(t.ownedItems == 40 && t.counters.ownershipAdopted == 40)
        _ = try deliver(adopted, from: T, to: O, into: &o, now: 9)
        #expect(o.ownedItems == 0 && o.ownedHeldElsewhere == 0 && o.drainProgress.isComplete)
        try newOwnerRequeues(&t, now: 10)
    }

    @Test("An offer to the next holder that is lost with its link leaves the records with the draining owner")
    func regrantLost() throws {
        var (o, h, t) = try cluster()
        let (_, acks) = try steal(40, from: &h, by: &t, id: 2, now: 3)
        _ = try deliver(acks, from: T, to: H, into: &h, now: 4)
        let answer = try deliver(o.drain(now: 5), from: O, to: H, into: &h, now: 6)
        _ = try deliver(answer, from: H, to: O, into: &o, now: 7)
        _ = o.peerDied(T, now: 8)  // the change to T never arrived
        #expect(o.counters.requeuedAfterDeath == 40 && o.count == 40)
    }

    @Test("An owner change while the holder's transfer to a third node is in flight: the ack waits for the transfer's ack and follows its custody news")
    func inFlight() throws {
        var (o, h, t) = try cluster()
        let (transfer, acks) = try steal(40, from: &h, by: &t, id: 2, now: 3)
        #expect(sent(transfer, to: T) == ["transfer"])
        let answer = try deliver(o.drain(now: 5), from: O, to: H, into: &h, now: 6)
        #expect(sent(answer, to: O).isEmpty)  // waits for T's ack
        #expect(!o.drainProgress.isComplete)
        let settled = try deliver(acks, from: T, to: H, into: &h, now: 7)
        #expect(sent(settled, to: O) == ["update", "ack"])
        let regrant = try deliver(settled, from: H, to: O, into: &o, now: 8)
        #expect(sent(regrant, to: T) == ["change"])
        _ = try deliver(try deliver(regrant, from: O, to: T, into: &t, now: 9), from: T, to: O, into: &o, now: 10)
        #expect(t.ownedItems == 40 && o.ownedItems == 0 && o.drainProgress.isComplete)
        try newOwnerRequeues(&t, now: 11)
    }

    @Test("An owner change while the holder's transfer is in flight and then refused: the returned items are adopted before the ack")
    func inFlightReturned() throws {
        var (o, h, _) = try cluster()
        let transfer = h.received(.stealRequest(queue: "q", requestID: 2, maxItems: 40, thiefRate: 100), from: T, now: 3)
        let answer = try deliver(o.drain(now: 5), from: O, to: H, into: &h, now: 6)
        #expect(sent(answer, to: O).isEmpty)
        guard case .send(.transfer(_, let id, _, _, _), _)? = transfer.first(where: { sent([$0], to: T) == ["transfer"] }) else {
            Issue.record("no transfer")
            return
        }
        let settled = h.received(.transferAck(queue: "q", transferID: id, status: .full), from: T, now: 7)
        #expect(sent(settled, to: O).last == "ack")
        #expect(h.ownedItems == 40 && h.count == 40)
        _ = try deliver(settled, from: H, to: O, into: &o, now: 8)
        #expect(o.ownedItems == 0 && o.drainProgress.isComplete)
    }

    @Test("The custody news goes before the ack even when the holder already has 8 owner updates unacknowledged")
    func pastUpdateCap() throws {
        var eager = QueueConfiguration()
        eager.confirmDelay = 0
        eager.confirmBatch = 1
        var o = QueueMachine(name: "q", localPeer: O)
        var h = QueueMachine(name: "q", localPeer: H, configuration: eager)
        var t = QueueMachine(name: "q", localPeer: T)
        _ = o.peerConnected(H, now: 0)
        _ = o.peerConnected(T, now: 0)
        _ = h.peerConnected(O, now: 0)
        _ = h.peerConnected(T, now: 0)
        _ = t.peerConnected(O, now: 0)
        _ = t.peerConnected(H, now: 0)
        _ = o.push((0..<40).map { payload($0) }, now: 0)
        let (_, acks) = try steal(40, from: &o, by: &h, id: 1, now: 1)
        _ = try deliver(acks, from: H, to: O, into: &o, now: 2)
        // Eight confirmations of one pop each, their acks not back yet.
        for i in 0..<8 {
            #expect(h.pop(max: 1, waiter: nil, now: 3).0.count == 1)
            let flushed = h.tick(now: 4 + UInt64(i))
            #expect(sent(flushed, to: O) == ["update"])
            _ = try deliver(flushed, from: H, to: O, into: &o, now: 4 + UInt64(i))  // O's acks are not delivered
        }
        let (_, stealAcks) = try steal(32, from: &h, by: &t, id: 2, now: 20)
        #expect(sent(try deliver(stealAcks, from: T, to: H, into: &h, now: 21) + h.tick(now: 22), to: O).isEmpty)  // capped
        let answer = try deliver(o.drain(now: 23), from: O, to: H, into: &h, now: 24)
        #expect(sent(answer, to: O) == ["update", "ack"])
        let regrant = try deliver(answer, from: H, to: O, into: &o, now: 25)
        #expect(sent(regrant, to: T) == ["change"] && o.ownedItems == 32)
        _ = try deliver(try deliver(regrant, from: O, to: T, into: &t, now: 26), from: T, to: O, into: &o, now: 27)
        #expect(t.ownedItems == 32 && o.ownedItems == 0 && o.drainProgress.isComplete)
    }
}
