import P2PQQueue
import P2PQWire
import Testing

private let A = peer(1)
private let B = peer(2)
private let C = peer(3)

extension [QueueAction] {
    var sent: [(QueueMessage, PeerID)] {
        compactMap { if case .send(let message, let to) = $0 { (message, to) } else { nil } }
    }
    var transfers: [(id: UInt64, items: TransferItems, to: PeerID)] {
        sent.compactMap { message, to in
            if case .transfer(_, let id, _, _, let items) = message { (id, items, to) } else { nil }
        }
    }
    var acks: [TransferStatus] {
        sent.compactMap { if case .transferAck(_, _, let status) = $0.0 { status } else { nil } }
    }
    var deliveries: [(WaiterID, [Int])] {
        compactMap { if case .deliver(let waiter, let items) = $0 { (waiter, items.map(number)) } else { nil } }
    }
    var signalsSpace: Bool { contains(.spaceAvailable) }
}

private func pushNumbers(_ machine: inout QueueMachine, _ numbers: Range<Int>, size: Int = 8, now: UInt64 = 0) -> PushOutcome {
    machine.push(numbers.map { payload($0, size: size) }, now: now).0
}

private func popAll(_ machine: inout QueueMachine, now: UInt64 = 0) -> [Int] {
    machine.pop(max: .max, waiter: nil, now: now).0.map(number)
}

/// A stats report saying `peer` has idle consumers (or not).
private func report(_ machine: inout QueueMachine, from peer: PeerID, sequence: UInt64, length: UInt64 = 0, waiting: UInt32 = 0,
                    rate: Double = 10, consumers: Bool = true, now: UInt64 = 0) -> [QueueAction] {
    let finish = consumers ? Double(length) / max(rate, 1) : 0
    return machine.received(.stats(queue: machine.name, LoadStats(
        sequence: sequence, length: length, waiting: waiting, serviceRate: rate, finishTime: finish, hasConsumers: consumers
    )), from: peer, now: now)
}

@Suite struct LocalQueueTests {
    @Test("Items leave in the order they entered; waiting pops are served first-in first-out")
    func fifo() {
        var q = QueueMachine(name: "q", localPeer: A)
        for start in stride(from: 0, to: 1000, by: 100) { #expect(pushNumbers(&q, start..<start + 100) == .accepted) }
        var out: [Int] = []
        for _ in 0..<10 { out += q.pop(max: 77, waiter: nil, now: 0).0.map(number) }
        out += popAll(&q)
        #expect(out == Array(0..<1000))

        // Three consumers wait; items go to them in the order they came, batches intact.
        for waiter in 1...3 { #expect(q.pop(max: 2, waiter: WaiterID(UInt64(waiter)), now: 1).0.isEmpty) }
        #expect(q.waitingConsumers == 3)
        let actions = q.push((10..<15).map { payload($0) }, now: 2).1
        #expect(actions.deliveries.map(\.0) == [WaiterID(1), WaiterID(2), WaiterID(3)])
        #expect(actions.deliveries.map(\.1) == [[10, 11], [12, 13], [14]])
        // A cancelled waiter gets nothing.
        _ = q.pop(max: 1, waiter: WaiterID(4), now: 3)
        _ = q.pop(max: 1, waiter: WaiterID(5), now: 3)
        _ = q.cancelWait(WaiterID(4), now: 4)
        #expect(q.push([payload(99)], now: 5).1.deliveries.map(\.0) == [WaiterID(5)])
    }

    @Test("Limits: a full queue refuses pushes until a pop makes room, and says so")
    func backpressure() {
        var q = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration(maxItems: 10, maxBytes: 1000))
        #expect(pushNumbers(&q, 0..<10) == .accepted)
        #expect(pushNumbers(&q, 10..<11) == .full)
        #expect(!q.hasRoom(items: 1, bytes: 1))
        let (items, actions) = q.pop(max: 1, waiter: nil, now: 1)
        #expect(items.map(number) == [0])
        #expect(actions.signalsSpace)
        #expect(pushNumbers(&q, 10..<11) == .accepted)
        #expect(pushNumbers(&q, 11..<12) == .full)

        // Bytes count too.
        var bytes = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration(maxItems: 100, maxBytes: 1000))
        #expect(pushNumbers(&bytes, 0..<3, size: 300) == .accepted)
        #expect(pushNumbers(&bytes, 3..<4, size: 300) == .full)
        #expect(pushNumbers(&bytes, 3..<4, size: 100) == .accepted)
        #expect(pushNumbers(&bytes, 0..<11, size: 100) == .batchTooLarge)

        // An item must fit in one frame.
        var small = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration(maxFrameSize: 512))
        #expect(small.maxItemSize == 512 - 1 - 28 - 32 - 22 - 4)
        let biggest = QueueItem(id: ItemID(origin: A, sequence: 1), payload: payload(0, size: small.maxItemSize))
        #expect(throws: Never.self) { try wireRoundTrip(.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: [biggest]), maxFrameSize: 512) }
        #expect(pushNumbers(&small, 0..<1, size: small.maxItemSize) == .accepted)
        #expect(pushNumbers(&small, 0..<1, size: small.maxItemSize + 1) == .itemTooLarge(size: small.maxItemSize + 1, limit: small.maxItemSize))
    }

    @Test("close(): pushes refused, waiting pops failed, items handed to live peers")
    func close() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.pop(max: 1, waiter: WaiterID(1), now: 0)
        _ = q.peerConnected(B, now: 0)
        _ = q.peerConnected(C, now: 0)
        let actions = q.close(now: 1)
        #expect(actions.contains(.fail(WaiterID(1), .closed)))
        #expect(pushNumbers(&q, 0..<1) == .closed)
        #expect(q.pop(max: 1, waiter: WaiterID(2), now: 2).1.contains(.fail(WaiterID(2), .closed)))
        // Closed stats say "not accepting".
        let stats = actions.sent.compactMap { if case .stats(_, let s) = $0.0 { s } else { nil } }
        #expect(stats.count == 2 && stats.allSatisfy { !$0.accepting })

        // A closed queue refuses transfers.
        let item = QueueItem(id: ItemID(origin: B, sequence: 1), hops: 1, payload: payload(1))
        #expect(q.received(.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: [item]), from: B, now: 3).acks == [.closed])
    }
}

@Suite struct TransferTests {
    /// A has items 0..<n; B asks to steal them all.
    private func stolen(_ n: Int, configuration: QueueConfiguration = QueueConfiguration()) -> (QueueMachine, QueueMachine, (id: UInt64, items: TransferItems, to: PeerID)) {
        var a = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        var b = QueueMachine(name: "q", localPeer: B, configuration: configuration)
        _ = a.peerConnected(B, now: 0)
        _ = b.peerConnected(A, now: 0)
        _ = pushNumbers(&a, 0..<n)
        let actions = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: UInt32(n), thiefRate: 1000), from: B, now: 1)
        let transfer = actions.transfers[0]
        return (a, b, transfer)
    }

    @Test("A transfer fills the receiver's frame: the machine counts runs and origins as the wire does")
    func transferFillsFrame() throws {
        // 1000-byte frames: 1 type byte, 28 bytes of transfer header for queue "q", one origin
        // (32) and one run (22) leave 917 bytes: 76 items of 8 bytes (12 each with the length).
        let configuration = QueueConfiguration(maxFrameSize: 1000)
        var (_, _, transfer) = stolen(200, configuration: configuration)
        #expect(transfer.items.count == 76)
        var bytes: [UInt8] = []
        try QueueMessage.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items)
            .encode(into: &bytes, maxFrameSize: 1000)
        #expect(bytes.count == 4 + 1 + 28 + 32 + 22 + 76 * 12)
        // Items out of order (after a re-queue) are runs of their own: fewer fit, all within the frame.
        var a = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        _ = a.peerConnected(B, now: 0)
        let scattered = (0..<100).map { QueueItem(id: ItemID(origin: C, sequence: UInt64(2 * $0)), hops: 1, payload: payload($0)) }
        _ = a.received(.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: TransferItems(scattered)), from: C, now: 1)
        let actions = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 100, thiefRate: 1000), from: B, now: 2)
        transfer = actions.transfers[0]
        // 939 bytes after the origin, 34 per item (run header, length, payload): 27 items.
        #expect(transfer.items.count == 27)
        bytes = []
        try QueueMessage.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items)
            .encode(into: &bytes, maxFrameSize: 1000)
        #expect(bytes.count == 4 + 1 + 28 + 32 + 27 * 34)

        // Pushed batches are runs: one cut where the frame is full, the rest sent next, in
        // order; two batches with consecutive sequences share one header on the wire.
        for cut in [200, 50] {
            var source = QueueMachine(name: "q", localPeer: A, configuration: configuration)
            _ = source.peerConnected(B, now: 0)
            _ = source.push(ItemBatch((0..<cut).map { payload($0) }), now: 0)
            if cut < 200 { _ = source.push(ItemBatch((cut..<200).map { payload($0) }), now: 0) }
            var received: [Int] = []
            for round in 0..<3 {
                let sent = source.received(.stealRequest(queue: "q", requestID: UInt64(round + 1), maxItems: 200, thiefRate: 1000),
                                          from: B, now: UInt64(round + 1)).transfers
                guard let transfer = sent.first else { break }
                #expect(transfer.items.count == min(76, 200 - received.count), "cut \(cut), round \(round)")
                let message = try wireRoundTrip(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items),
                                                maxFrameSize: 1000)
                guard case .transfer(_, _, _, _, let items) = message else { continue }
                received += items.map { number($0.payload) }
                #expect(items.map(\.id.sequence) == items.indices.map { UInt64(received.count - items.count + $0 + 1) })
                _ = source.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: UInt64(round + 1))
            }
            #expect(received == Array(0..<200), "cut \(cut)")
        }
    }

    @Test("A transfer overlapping items already received keeps only the new ones, in order, as runs around the duplicates")
    func partialDuplicates() throws {
        var a = QueueMachine(name: "q", localPeer: A)
        var b = QueueMachine(name: "q", localPeer: B)
        _ = a.peerConnected(B, now: 0)
        _ = b.peerConnected(A, now: 0)
        _ = a.push(ItemBatch((0..<20).map { payload($0) }), now: 0)
        let first = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 10, thiefRate: 1000), from: B, now: 1).transfers[0]
        _ = b.received(try wireRoundTrip(.transfer(queue: "q", transferID: first.id, kind: .steal, requestID: 1, items: first.items)),
                      from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: first.id, status: .accepted), from: B, now: 2)
        let second = a.received(.stealRequest(queue: "q", requestID: 2, maxItems: 10, thiefRate: 1000), from: B, now: 3).transfers[0]
        // Item 15 first, alone; then 5...9 again (as after a lost ack) and 10...19, which holds
        // 15 again in the middle of its run.
        _ = b.received(try wireRoundTrip(.transfer(queue: "q", transferID: 98, kind: .steal, requestID: 0,
                                                  items: [Array(second.items)[5]])), from: A, now: 4)
        let overlap = Array(first.items)[5...] + Array(second.items)
        _ = b.received(try wireRoundTrip(.transfer(queue: "q", transferID: 99, kind: .steal, requestID: 0, items: TransferItems(overlap))),
                      from: A, now: 4)
        #expect(b.counters.duplicatesDropped == 6)
        #expect(b.count == 20 && b.byteCount == 20 * 8)
        #expect(popAll(&b, now: 5) == Array(0..<10) + [15] + Array(10..<15) + Array(16..<20))
        #expect(b.heldBufferCount == 0)
    }

    @Test("The sender keeps items until the ack; the receiver drops a retransmitted copy")
    func ackAndDuplicates() throws {
        var (a, b, transfer) = stolen(10)
        #expect(transfer.items.map { number($0.payload) } == Array(0..<10))
        #expect(transfer.items.allSatisfy { $0.hops == 1 })
        #expect(a.count == 0 && a.heldItems == 10 && a.transfersInFlight == 1)

        let message = try wireRoundTrip(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items))
        #expect(b.received(message, from: A, now: 2).acks == [.accepted])
        #expect(b.count == 10)
        // The same copy again (the ack was lost and the sender retried): dropped, still acked.
        #expect(b.received(message, from: A, now: 3).acks == [.accepted])
        #expect(b.count == 10)
        #expect(b.counters.duplicatesDropped == 10)

        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 4)
        #expect(a.heldItems == 0 && a.transfersInFlight == 0)
        #expect(a.counters.transferredOut == 10)
        #expect(a.ownedItems == 10)  // still owned until popped
        #expect(popAll(&b) == Array(0..<10))
    }

    @Test("A link failure before the ack returns the items to the front, in order")
    func returnOnLinkFailure() {
        var (a, _, _) = stolen(5)
        _ = pushNumbers(&a, 5..<8)
        _ = a.peerDisconnected(B, now: 2)
        #expect(a.transfersInFlight == 0 && a.counters.returnedFromTransfers == 5)
        #expect(popAll(&a) == Array(0..<8))

        // A send that fails outright and a refusal do the same.
        var (a2, _, t2) = stolen(4)
        _ = a2.sendFailed(.transfer(queue: "q", transferID: t2.id, kind: .steal, requestID: 1, items: t2.items), to: B, now: 2)
        #expect(popAll(&a2) == Array(0..<4))
        var (a3, _, t3) = stolen(4)
        _ = a3.received(.transferAck(queue: "q", transferID: t3.id, status: .full), from: B, now: 2)
        #expect(popAll(&a3) == Array(0..<4))
        // A timeout on a link still up sends the transfer again, as it was (the peer drops the
        // copies it has and acks): taking it back would let another consumer pop the items the
        // peer may be popping. The ack settles it; a link that then dies would take it back.
        var (a4, b4, t4) = stolen(4)
        let timeout = QueueConfiguration().transferTimeout
        let again = a4.tick(now: 1 + timeout).transfers
        #expect(again.count == 1 && again[0].id == t4.id && again[0].to == B && again[0].items.count == 4)
        #expect(a4.transfersInFlight == 1 && a4.count == 0 && a4.counters.returnedFromTransfers == 0)
        let first = b4.received(.transfer(queue: "q", transferID: t4.id, kind: .steal, requestID: 1, items: t4.items), from: A, now: 2 + timeout)
        let second = b4.received(.transfer(queue: "q", transferID: t4.id, kind: .steal, requestID: 1, items: again[0].items), from: A, now: 3 + timeout)
        #expect(b4.count == 4 && b4.counters.duplicatesDropped == 4, "the copy sent again is dropped")
        for case .send(.transferAck(_, let id, let status), _) in first + second {
            #expect(id == t4.id && status == .accepted)
            _ = a4.received(.transferAck(queue: "q", transferID: id, status: status), from: B, now: 4 + timeout)
        }
        #expect(a4.transfersInFlight == 0 && a4.count == 0)
        _ = a4.tick(now: 10 * timeout)
        #expect(a4.count == 0 && a4.counters.returnedFromTransfers == 0)
        // An ack from the wrong peer, or for an unknown transfer, changes nothing.
        var (a5, _, t5) = stolen(3)
        _ = a5.received(.transferAck(queue: "q", transferID: t5.id, status: .accepted), from: C, now: 2)
        _ = a5.received(.transferAck(queue: "q", transferID: 999, status: .accepted), from: B, now: 2)
        #expect(a5.transfersInFlight == 1)
    }

    @Test("A full receiver refuses a transfer; the sender takes it back")
    func receiverFull() {
        let (_, _, transfer) = stolen(5)
        var full = QueueMachine(name: "q", localPeer: B, configuration: QueueConfiguration(maxItems: 3))
        #expect(full.received(.transfer(queue: "q", transferID: transfer.id, kind: .balance, requestID: 0, items: transfer.items), from: A, now: 2).acks == [.full])
        #expect(full.count == 0)
    }

    @Test("Pop confirmations go back to the owner in batches and clear its records")
    func confirmations() throws {
        var (a, b, transfer) = stolen(100)
        _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 3)
        #expect(a.ownedItems == 100)
        var updates: [QueueMessage] = []
        for index in 0..<60 {
            let actions = b.pop(max: 1, waiter: nil, now: 4 + UInt64(index))
            updates += actions.1.sent.map(\.0)
        }
        #expect(updates.isEmpty)  // batched: nothing before the delay
        let actions = b.tick(now: 4 + QueueConfiguration().confirmDelay + 100)
        let sent = actions.sent.filter { if case .ownerUpdate = $0.0 { true } else { false } }
        #expect(sent.count == 1 && sent[0].1 == A)
        guard case .ownerUpdate(_, _, let popped, _) = sent[0].0 else { return }
        #expect(popped == [SequenceRun(first: 1, count: 60)])  // one run for 60 pops
        _ = a.received(try wireRoundTrip(sent[0].0), from: B, now: 5)
        #expect(a.ownedItems == 40)
        #expect(a.counters.duplicatePops == 0)
    }

    @Test("remove(where:) takes matching items out in place: own records forgotten, other owners told as for a pop")
    func removeWhere() throws {
        var (a, b, transfer) = stolen(10)
        _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 3)
        _ = pushNumbers(&b, 100..<104, now: 3)
        #expect(b.count == 14 && b.ownedItems == 4)
        let (removed, _) = b.remove(where: { [3, 5, 101].contains(number($0)) }, now: 4)
        #expect(removed == 3)
        #expect(b.count == 11 && b.ownedItems == 3 && b.counters.removed == 3)
        #expect(b.byteCount == 11 * 8)
        // A's items 3 and 5 count as consumed: A hears it with the next confirmations.
        let sent = b.tick(now: 4 + QueueConfiguration().confirmDelay + 1).sent
        guard let update = sent.first(where: { if case .ownerUpdate = $0.0 { true } else { false } }),
              case .ownerUpdate(_, _, let popped, _) = update.0 else {
            Issue.record("no owner update: \(sent)")
            return
        }
        #expect(popped == [SequenceRun(first: 4, count: 1), SequenceRun(first: 6, count: 1)])
        _ = a.received(try wireRoundTrip(update.0), from: B, now: 5)
        #expect(a.ownedItems == 8)
        // The rest leave in their order.
        #expect(popAll(&b, now: 6) == [0, 1, 2, 4, 6, 7, 8, 9, 100, 102, 103])
        #expect(b.remove(where: { _ in true }, now: 7).removed == 0)
    }

    @Test("A pure source feeds consumer peers on every ack, without waiting for a stats round, but a slow one only a window's worth")
    func pureSourceFeedsOnAcks() throws {
        var a = QueueMachine(name: "q", localPeer: A)
        _ = a.peerConnected(B, now: 0)
        _ = a.peerConnected(C, now: 0)
        // B consumes fast, C slowly (10 items/s); A has no consumers.
        _ = report(&a, from: B, sequence: 1, rate: 1_000_000, now: 1)
        _ = report(&a, from: C, sequence: 1, rate: 10, now: 1)
        let pushed = a.push((0..<100_000).map { payload($0) }, now: 2).1
        // Every transfer slot to both peers filled at once (4 each, full batches).
        let first = pushed.transfers
        #expect(first.filter { $0.to == B }.count == 4 && first.filter { $0.to == C }.count == 4)
        #expect(first.allSatisfy { $0.items.count == 4096 })
        // Acks free slots: B gets more straight away; C, holding 16,384 items (27 min of work), none.
        var more: [(id: UInt64, items: TransferItems, to: PeerID)] = []
        for transfer in first {
            more += a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: transfer.to, now: 3).transfers
        }
        #expect(more.count == 4 && more.allSatisfy { $0.to == B })
        #expect(a.counters.transfersByKind[.balance] == 8 * 4096)
    }

    @Test("When the holder dies, the owner re-queues the items it never heard were popped")
    func requeueOnDeath() throws {
        var (a, b, transfer) = stolen(10)
        _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 3)
        #expect(b.pop(max: 4, waiter: nil, now: 4).0.map(number) == [0, 1, 2, 3])
        for action in b.tick(now: 1 * second).sent { _ = a.received(action.0, from: B, now: 5) }
        #expect(a.ownedItems == 6)
        _ = a.peerDied(B, now: 6)
        #expect(a.counters.requeuedAfterDeath == 6)
        #expect(popAll(&a) == Array(4..<10))
        #expect(a.ownedItems == 0)
    }

    @Test("A pushed batch's copies share one buffer at the owner: kept while any is unconfirmed, re-queued with the right bytes, let go with the last")
    func batchCopiesShareABuffer() throws {
        var a = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration())
        var b = QueueMachine(name: "q", localPeer: B, configuration: QueueConfiguration())
        _ = a.peerConnected(B, now: 0)
        _ = b.peerConnected(A, now: 0)
        let batch = ItemBatch((0..<10).map { payload($0, size: 12) })
        #expect(a.push(batch, now: 0).0 == .accepted)
        #expect(a.push([payload(10), payload(11)], now: 0).0 == .accepted)
        #expect(a.ownedItems == 12 && a.heldBufferCount == 3)  // the batch's one, an array each
        // B takes the batch's items, pops four and confirms them.
        let transfer = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 10, thiefRate: 1000), from: B, now: 1).transfers[0]
        #expect(transfer.items.map { number($0.payload) } == Array(0..<10))
        _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 3)
        #expect(b.pop(max: 4, waiter: nil, now: 4).0.map(number) == [0, 1, 2, 3])
        for action in b.tick(now: 1 * second).sent { _ = a.received(action.0, from: B, now: 5) }
        #expect(a.ownedItems == 8 && a.heldBufferCount == 3)
        // B dies (its link first): A queues the six unconfirmed copies again, from the shared
        // buffer, ahead of what it still holds.
        _ = a.peerDisconnected(B, now: 6)
        _ = a.peerDied(B, now: 6)
        let popped = a.pop(max: .max, waiter: nil, now: 7).0
        #expect(popped.map(number) == Array(4..<12))
        #expect(popped.map(\.bytes) == (4..<12).map { $0 < 10 ? payload($0, size: 12) : payload($0) })
        #expect(a.ownedItems == 0 && a.heldBufferCount == 0)
        #expect(a.ownedByteCount == 0)
    }

    @Test("Custody follows the items: A → B → C, C dies, A re-queues what C held")
    func custodyChain() throws {
        var (a, b, t1) = stolen(6)
        var c = QueueMachine(name: "q", localPeer: C)
        _ = b.peerConnected(C, now: 0)
        _ = c.peerConnected(B, now: 0)
        _ = b.received(.transfer(queue: "q", transferID: t1.id, kind: .steal, requestID: 1, items: t1.items), from: A, now: 2)
        _ = a.received(.transferAck(queue: "q", transferID: t1.id, status: .accepted), from: B, now: 3)
        // C steals 4 from B.
        let t2 = b.received(.stealRequest(queue: "q", requestID: 7, maxItems: 4, thiefRate: 1000), from: C, now: 4).transfers[0]
        #expect(t2.items.count == 4 && t2.items.allSatisfy { $0.hops == 2 })
        _ = c.received(.transfer(queue: "q", transferID: t2.id, kind: .steal, requestID: 7, items: t2.items), from: B, now: 5)
        let ackActions = b.received(.transferAck(queue: "q", transferID: t2.id, status: .accepted), from: C, now: 6)
        #expect(ackActions.sent.isEmpty)  // custody news is batched like confirmations
        let news = b.tick(now: 1 * second).sent.filter { message, to in
            if case .ownerUpdate = message { to == A } else { false }
        }
        #expect(news.count == 1)
        guard case .ownerUpdate(_, _, _, let custody) = news[0].0 else { Issue.record("no owner update"); return }
        #expect(custody == [CustodyChange(holder: C, attempt: 0, hops: 2, runs: [SequenceRun(first: 1, count: 4)])])
        _ = a.received(try wireRoundTrip(news[0].0), from: B, now: 7)
        // C dies: only the 4 it held come back; B's 2 stay with B.
        _ = a.peerDied(C, now: 8)
        #expect(popAll(&a) == [0, 1, 2, 3])
        // Custody news that arrives after the death re-queues at once.
        var (a2, _, t3) = stolen(2)
        _ = a2.received(.transferAck(queue: "q", transferID: t3.id, status: .accepted), from: B, now: 3)
        _ = a2.peerDied(C, now: 4)
        _ = a2.received(.ownerUpdate(queue: "q", updateID: 1, popped: [], custody: [CustodyChange(holder: C, attempt: 0, hops: 2, runs: [SequenceRun(first: 1, count: 2)])]), from: B, now: 5)
        #expect(popAll(&a2) == [0, 1])
    }

    @Test("Stats: NaN, infinite, negative, absurd and stale reports are rejected")
    func statsValidation() {
        var q = QueueMachine(name: "q", localPeer: A)
        func make(_ sequence: UInt64, rate: Double = 1, finish: Double = 1, length: UInt64 = 1, waiting: UInt32 = 0) -> LoadStats {
            LoadStats(sequence: sequence, length: length, waiting: waiting, serviceRate: rate, finishTime: finish, hasConsumers: true)
        }
        #expect(q.acceptStats(make(1, rate: .nan), from: B, now: 0) == .rejected(.invalid(.malformed(field: "stats.serviceRate", reason: "NaN"))))
        #expect(q.acceptStats(make(1, finish: .nan), from: B, now: 0) == .rejected(.invalid(.malformed(field: "stats.finishTime", reason: "NaN"))))
        #expect(q.acceptStats(make(1, rate: -.infinity), from: B, now: 0) == .rejected(.invalid(.malformed(field: "stats.serviceRate", reason: "infinite"))))
        #expect(q.acceptStats(make(1, finish: -2), from: B, now: 0) == .rejected(.invalid(.malformed(field: "stats.finishTime", reason: "negative (-2.0)"))))
        #expect(q.acceptStats(make(1, length: 1 << 50), from: B, now: 0) != .accepted)
        #expect(q.acceptStats(make(1, waiting: .max), from: B, now: 0) != .accepted)
        #expect(q.acceptStats(make(5), from: B, now: 0) == .accepted)
        #expect(q.acceptStats(make(5), from: B, now: 1) == .rejected(.stale(sequence: 5, last: 5)))
        #expect(q.acceptStats(make(4), from: B, now: 1) == .rejected(.stale(sequence: 4, last: 5)))
        #expect(q.counters.statsRejected == 8)
        #expect(q.acceptStats(make(6), from: B, now: 2) == .accepted)
    }

    @Test("A restarted peer's reports, counting from the start again, are accepted on its new link")
    func restartedPeer() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.peerConnected(B, now: 0)
        _ = report(&q, from: B, sequence: 100, length: 5, now: 0)
        #expect(q.peerLength(B, now: 1) == 5)
        _ = q.peerDisconnected(B, now: 2)
        _ = q.peerConnected(B, now: 3)
        _ = report(&q, from: B, sequence: 1, length: 7, now: 4)
        #expect(q.peerLength(B, now: 5) == 7)
        // Its items carry sequence numbers above the old run's.
        var restarted = QueueMachine(name: "q", localPeer: B, configuration: QueueConfiguration(firstSequence: 1_000_000))
        _ = restarted.peerConnected(A, now: 0)
        _ = restarted.push([payload(1)], now: 0)
        let transfer = restarted.received(.stealRequest(queue: "q", requestID: 1, maxItems: 1, thiefRate: 1), from: A, now: 1).transfers
        #expect(transfer.first?.items.first?.id.sequence == 1_000_000)
    }

    /// Beyond the first node's links, work pushed at one node moved a hop per stats round (250 ms).
    @Test("Items that arrive in a transfer go on at once to a peer whose consumers wait, and the peers hear the growth")
    func transferPassedOn() throws {
        var a = QueueMachine(name: "q", localPeer: A)
        _ = a.peerConnected(B, now: 0)
        _ = report(&a, from: B, sequence: 1, waiting: 20, now: 0)
        let pushed = a.push((1...20).map { payload($0) }, now: 1).1.sent
        let transfer = try #require(pushed.first { if case .transfer = $0.0 { $0.1 == B } else { false } }).0
        var b = QueueMachine(name: "q", localPeer: B)
        _ = b.peerConnected(A, now: 0)
        _ = b.peerConnected(C, now: 0)
        _ = report(&b, from: C, sequence: 1, waiting: 3, now: 1)
        let actions = b.received(transfer, from: A, now: 2)
        let onward = actions.transfers.filter { $0.to == C }
        #expect(onward.count == 1 && onward.first?.items.count == 3, "\(actions)")
        #expect(actions.sent.contains { if case .stats = $0.0 { $0.1 == C } else { false } }, "\(actions)")
        #expect(b.count == 17)
    }

    @Test("A report too old is not used: no dispatch to a peer last heard idle long ago")
    func staleByTime() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.peerConnected(B, now: 0)
        _ = report(&q, from: B, sequence: 1, waiting: 3, now: 0)
        let later = QueueConfiguration().statsMaxAge + 1
        #expect(q.push([payload(1)], now: later).1.transfers.isEmpty)
        #expect(q.peerLength(B, now: later) == nil)
        // A fresh idle report: what is queued goes straight there.
        let transfers = report(&q, from: B, sequence: 2, waiting: 3, now: later).transfers
        #expect(transfers.count == 1 && transfers[0].to == B && transfers[0].items.map { number($0.payload) } == [1])
        // So does a new item, while B still has idle consumers by this node's count.
        let next = q.push([payload(2)], now: later).1.transfers
        #expect(next.count == 1 && next[0].to == B)
    }
}
