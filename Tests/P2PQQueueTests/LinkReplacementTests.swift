import P2PQQueue
import P2PQWire
import Testing

private let owner = peer(1)
private let holderB = peer(2)
private let thiefC = peer(3)

private func steal(_ n: Int, requestID: UInt64 = 1) -> QueueMessage {
    .stealRequest(queue: "q", requestID: requestID, maxItems: UInt32(n), thiefRate: 1000)
}

private func asSent(_ transfer: (id: UInt64, items: TransferItems, to: PeerID)) -> QueueMessage {
    .transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items)
}

/// Owner A has `n` items and B steals them all; the transfer is sent, not acknowledged yet.
private func stolenByB(_ n: Int) -> (QueueMachine, QueueMachine, (id: UInt64, items: TransferItems, to: PeerID)) {
    var a = QueueMachine(name: "q", localPeer: owner)
    var b = QueueMachine(name: "q", localPeer: holderB)
    _ = a.peerConnected(holderB, now: 0)
    _ = a.peerConnected(thiefC, now: 0)
    _ = b.peerConnected(owner, now: 0)
    _ = a.push((0..<n).map { payload($0) }, now: 0)
    let transfer = a.received(steal(n), from: holderB, now: 1).transfers[0]
    return (a, b, transfer)
}

/// Two nodes that dial each other at once keep one link (the connection manager's rule) and
/// hear `linkReplaced` if the other came up first: what went out on the dropped link may have
/// arrived, or not, and its answers may be lost. The fault run `kill-holder` once had 957
/// duplicates this way: a steal transfer to n3 lost its ack with the replaced link, its items
/// were taken back and stolen by n4, and both popped them.
@Suite struct LinkReplacementTests {
    @Test("A transfer not acknowledged when its link is replaced goes again to the same peer, which drops its copy; no other peer gets the items")
    func arrivedTransferIsNotGivenToAnother() {
        var (a, b, transfer) = stolenByB(10)
        // B got the transfer on the old link; its ack went on the old link and was lost.
        _ = b.received(asSent(transfer), from: owner, now: 2)
        #expect(b.pop(max: 10, waiter: nil, now: 3).0.map(number) == Array(0..<10))

        let replaced = a.peerLinkReplaced(holderB, now: 4)
        #expect(replaced.transfers.map(\.id) == [transfer.id])
        #expect(replaced.transfers.allSatisfy { $0.to == holderB })
        #expect(a.transfersInFlight == 1 && a.counters.returnedFromTransfers == 0)
        // Another thief finds nothing: the items are still out with B.
        #expect(a.received(steal(10), from: thiefC, now: 5).transfers.isEmpty)
        #expect(a.pop(max: .max, waiter: nil, now: 5).0.isEmpty)

        // B drops the copy it has and acknowledges it; A records B as the holder, so B's pop
        // confirmations are applied (not held as a stranger's).
        let again = b.received(asSent(replaced.transfers[0]), from: owner, now: 6)
        #expect(again.acks == [.accepted])
        #expect(b.counters.duplicatesDropped == 10)
        #expect(b.pop(max: 10, waiter: nil, now: 6).0.isEmpty)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: holderB, now: 7)
        #expect(a.transfersInFlight == 0)
        _ = a.received(.ownerUpdate(queue: "q", updateID: 1, popped: [SequenceRun(first: 1, count: 10)], custody: []),
                       from: holderB, now: 8)
        #expect(a.ownedItems == 0)
        #expect(a.counters.confirmationsHeld == 0 && a.counters.duplicatePops == 0)
    }

    @Test("A transfer lost with the replaced link reaches its peer on the new one, once")
    func lostTransferArrivesOnTheNewLink() {
        var (a, b, _) = stolenByB(5)
        let replaced = a.peerLinkReplaced(holderB, now: 4)
        #expect(replaced.transfers.count == 1)
        #expect(b.received(asSent(replaced.transfers[0]), from: owner, now: 5).acks == [.accepted])
        #expect(b.pop(max: .max, waiter: nil, now: 6).0.map(number) == Array(0..<5))
        _ = a.received(.transferAck(queue: "q", transferID: replaced.transfers[0].id, status: .accepted), from: holderB, now: 7)
        #expect(a.transfersInFlight == 0 && a.count == 0)
    }

    @Test("A link the peer closed as a duplicate before its kept link came up here: the transfer waits for that link and goes again on it; the peer drops its copy")
    func duplicateClosedFirstKeepsTheTransfer() {
        var (a, b, transfer) = stolenByB(6)
        // B read the transfer on the link it then closed as a duplicate; the ack died with it.
        _ = b.received(asSent(transfer), from: owner, now: 2)
        #expect(b.pop(max: 10, waiter: nil, now: 3).0.map(number) == Array(0..<6))
        _ = a.peerDisconnected(holderB, keepingTransfers: true, now: 4)
        #expect(a.transfersInFlight == 1 && a.counters.returnedFromTransfers == 0)
        #expect(a.pop(max: .max, waiter: nil, now: 5).0.isEmpty)
        // The link B keeps comes up here: the transfer goes again, B drops the copies and acks.
        let linked = a.peerConnected(holderB, now: 6)
        #expect(linked.transfers.map(\.id) == [transfer.id])
        let again = b.received(asSent(linked.transfers[0]), from: owner, now: 7)
        #expect(again.acks == [.accepted] && b.counters.duplicatesDropped == 6)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: holderB, now: 8)
        #expect(a.transfersInFlight == 0 && a.pop(max: .max, waiter: nil, now: 9).0.isEmpty)
    }

    @Test("A transfer kept for a duplicate's replacement comes back if no link comes by its deadline, or if the peer dies")
    func duplicateClosedWithoutNewLinkReturns() {
        for dies in [false, true] {
            var (a, _, _) = stolenByB(4)
            _ = a.peerDisconnected(holderB, keepingTransfers: true, now: 4)
            if dies {
                _ = a.peerDied(holderB, now: 1 * second)
            } else {
                _ = a.tick(now: 4 * second)
                #expect(a.transfersInFlight == 1, "back before its deadline")
                _ = a.tick(now: 6 * second)
            }
            #expect(a.transfersInFlight == 0 && a.counters.returnedFromTransfers == 4)
            #expect(a.pop(max: .max, waiter: nil, now: 7 * second).0.map(number) == Array(0..<4))
        }
    }

    @Test("If the new link goes too, the transfer's items come back as after any lost link")
    func newLinkLostReturnsTheItems() {
        var (a, _, _) = stolenByB(5)
        _ = a.peerLinkReplaced(holderB, now: 4)
        _ = a.peerDisconnected(holderB, now: 5)
        #expect(a.transfersInFlight == 0 && a.counters.returnedFromTransfers == 5)
        #expect(a.pop(max: .max, waiter: nil, now: 6).0.map(number) == Array(0..<5))
    }
}
