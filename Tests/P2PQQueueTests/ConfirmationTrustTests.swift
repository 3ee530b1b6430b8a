import P2PQQueue
import P2PQWire
import Testing

private let owner = peer(1)
private let holderB = peer(2)
private let holderC = peer(3)
private let intruder = peer(4)

/// Owner A pushes `n` items; B steals them all and A records B as their holder.
private func heldByB(_ n: Int) -> (QueueMachine, QueueMachine, (id: UInt64, items: TransferItems, to: PeerID)) {
    var a = QueueMachine(name: "q", localPeer: owner)
    var b = QueueMachine(name: "q", localPeer: holderB)
    _ = a.peerConnected(holderB, now: 0)
    _ = a.peerConnected(intruder, now: 0)
    _ = b.peerConnected(owner, now: 0)
    _ = a.push((0..<n).map { payload($0) }, now: 0)
    let transfer = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: UInt32(n), thiefRate: 1000), from: holderB, now: 1).transfers[0]
    _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: owner, now: 2)
    _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: holderB, now: 3)
    return (a, b, transfer)
}

private func confirm(_ first: UInt64, _ count: UInt32, id: UInt64) -> QueueMessage {
    .ownerUpdate(queue: "q", updateID: id, popped: [SequenceRun(first: first, count: count)], custody: [])
}

/// docs/operations.md, "Trust model": a member cannot make an owner forget items another node holds.
@Suite struct ConfirmationTrustTests {
    @Test("A pop confirmation from a node that does not hold the items is refused and counted; the items survive their holder's death")
    func forgedConfirmationIsRefused() {
        var (a, _, _) = heldByB(10)
        #expect(a.ownedItems == 10)
        _ = a.received(confirm(1, 10, id: 1), from: intruder, now: 4)
        #expect(a.ownedItems == 10)
        #expect(a.counters.confirmationsHeld == 10)
        #expect(a.counters.duplicatePops == 0)
        // Nothing names the intruder: the held confirmation is dropped in time.
        _ = a.tick(now: 4 + 31 * second)
        #expect(a.counters.confirmationsRefused == 10 && a.counters.confirmationsApplied == 0)
        // B dies: every item comes back, none was lost to the forgery.
        _ = a.peerDied(holderB, now: 32 * second)
        #expect(a.pop(max: .max, waiter: nil, now: 32 * second).0.map(number) == Array(0..<10))
    }

    @Test("The holder's own confirmation is applied at once; a run with mixed holders frees only the sender's")
    func holderConfirms() {
        var (a, _, _) = heldByB(6)
        _ = a.push([payload(6), payload(7)], now: 4)  // sequences 7, 8: here at A
        _ = a.received(confirm(1, 8, id: 1), from: holderB, now: 5)
        #expect(a.ownedItems == 2)
        #expect(a.counters.confirmationsHeld == 2 && a.counters.duplicatePops == 0)
        #expect(a.pop(max: .max, waiter: nil, now: 6).0.map(number) == [6, 7])
    }

    @Test("A confirmation that overtakes its custody news is held, then applied when the news arrives")
    func confirmationRacesCustody() {
        var (a, _, _) = heldByB(4)
        // C got the items from B and popped them; its confirmation reaches A before B's custody news.
        _ = a.received(confirm(1, 4, id: 1), from: holderC, now: 5)
        #expect(a.ownedItems == 4 && a.counters.confirmationsHeld == 4)
        _ = a.received(.ownerUpdate(queue: "q", updateID: 1, popped: [], custody: [
            CustodyChange(holder: holderC, attempt: 0, hops: 2, runs: [SequenceRun(first: 1, count: 4)]),
        ]), from: holderB, now: 6)
        #expect(a.ownedItems == 0)
        #expect(a.counters.confirmationsApplied == 4 && a.counters.confirmationsRefused == 0)
        // Later deaths re-queue nothing: the items were popped.
        _ = a.peerDied(holderC, now: 7)
        _ = a.peerDied(holderB, now: 7)
        #expect(a.pop(max: .max, waiter: nil, now: 8).0.isEmpty)
    }
}
