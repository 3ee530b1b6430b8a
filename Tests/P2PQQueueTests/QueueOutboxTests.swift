import P2PQWire
import Testing
@testable import P2PQQueue

/// ``QueueOutbox``: transfers are held for later in the turn, and what follows them to the
/// same peer waits behind them.
@Suite struct QueueOutboxTests {
    let a = PeerID(bytes: [UInt8](repeating: 1, count: 32))!
    let b = PeerID(bytes: [UInt8](repeating: 2, count: 32))!
    let transfer = QueueMessage.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: [])
    let ack = QueueMessage.transferAck(queue: "q", transferID: 7, status: .accepted)
    let empty = QueueMessage.stealEmpty(queue: "q", requestID: 3)

    @Test func aTransferIsHeldAndLaterMessagesToItsPeerWaitBehindIt() {
        var outbox = QueueOutbox()
        #expect(outbox.send(ack, to: a, queue: "q") == ack)  // nothing held: at once
        #expect(outbox.send(transfer, to: a, queue: "q") == nil)
        #expect(outbox.send(empty, to: a, queue: "q") == nil)  // behind the transfer
        #expect(outbox.send(empty, to: b, queue: "r") == empty)  // another peer: at once
        #expect(!outbox.isEmpty)
        let held = outbox.takeHeld()
        #expect(held.map(\.message) == [transfer, empty])
        #expect(held.map(\.flushAfter) == [true, false])
        #expect(held.allSatisfy { $0.peer == a && $0.queue == "q" })
        #expect(outbox.isEmpty)
        #expect(outbox.send(empty, to: a, queue: "q") == empty)
    }
}
