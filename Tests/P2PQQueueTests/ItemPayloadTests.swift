import P2PQQueue
import P2PQWire
import Testing

/// The start address of each payload's bytes.
private func addresses(_ payloads: [ItemPayload]) -> [UInt] {
    payloads.map { payload in payload.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }
}

@Suite("Item payloads and batches")
struct ItemPayloadTests {
    @Test("A payload is its range of the array: count, bytes, slice, equality by content")
    func ranges() {
        let base: [UInt8] = [1, 2, 3, 4, 5, 6]
        let middle = ItemPayload(base: base, start: 2, count: 3)
        #expect(middle.count == 3)
        #expect(Array(middle) == [3, 4, 5])
        #expect(middle.bytes == [3, 4, 5])
        #expect(middle.slice == base[2..<5])
        #expect(middle == ItemPayload([3, 4, 5]))
        #expect(middle != ItemPayload(base: base, start: 1, count: 3))
        #expect(middle.withUnsafeBytes { Array($0) } == [3, 4, 5])
        #expect(ItemPayload(base: base, start: 6, count: 0).isEmpty)
        // A whole array comes back as itself (same storage, no copy).
        let whole = ItemPayload(base)
        #expect(whole.bytes.withUnsafeBufferPointer { $0.baseAddress } == base.withUnsafeBufferPointer { $0.baseAddress })
        #expect(middle.bytes.withUnsafeBufferPointer { $0.baseAddress } != base.withUnsafeBufferPointer { $0.baseAddress })
    }

    @Test("A batch keeps its items back to back in one buffer")
    func batch() {
        var batch = ItemBatch(capacity: 3, bytes: 10)
        batch.append([1, 2, 3])
        batch.append(count: 4) { $0.storeBytes(of: 0x0A0B_0C0D, as: UInt32.self) }
        batch.append([UInt8]())
        batch.append([9])
        #expect(batch.count == 4 && batch.byteCount == 8)
        let payloads = batch.payloads
        #expect(payloads.map(\.bytes) == [[1, 2, 3], [0x0D, 0x0C, 0x0B, 0x0A], [], [9]])
        #expect(Array(batch) == payloads)
        let starts = addresses(payloads)
        #expect(starts[1] == starts[0] + 3 && starts[3] == starts[1] + 4)
    }

    @Test("A filled item starts zeroed, also when it is larger than the zero block it is copied from")
    func zeroedFill() {
        var batch = ItemBatch()
        batch.append([0xFF])
        batch.append(count: 10_000) { $0.storeBytes(of: 0xAB, toByteOffset: 9_999, as: UInt8.self) }
        #expect(batch.count == 2 && batch.byteCount == 10_001)
        let item = batch.payloads[1].bytes
        #expect(item.count == 10_000 && item.last == 0xAB && item.dropLast().allSatisfy { $0 == 0 })
    }

    @Test("A throwing fill adds no item")
    func throwingFill() {
        struct Refused: Error {}
        var batch = ItemBatch([[UInt8](arrayLiteral: 7)])
        #expect(throws: Refused.self) { try batch.append(count: 5) { _ throws(Refused) in throw Refused() } }
        #expect(batch.count == 1 && batch.byteCount == 1 && batch.payloads == [[7]])
    }

    @Test("A writer appends an item to the batch's buffer; one that throws half-way adds nothing")
    func writtenItems() {
        struct Refused: Error {}
        var batch = ItemBatch([[UInt8](arrayLiteral: 7)])
        batch.append { (bytes: inout [UInt8]) in bytes += [1, 2, 3] }
        #expect(throws: Refused.self) {
            try batch.append { (bytes: inout [UInt8]) throws(Refused) in
                bytes += [9, 9]
                throw Refused()
            }
        }
        batch.append { (_: inout [UInt8]) in }
        #expect(batch.payloads.map(\.bytes) == [[7], [1, 2, 3], []])
        #expect(batch.byteCount == 4 && batch.itemEnds == [1, 4, 4])
    }

    @Test("A pushed batch pops as the same items, in order")
    func machineRoundTrip() {
        var machine = QueueMachine(name: "q", localPeer: peer(1), configuration: QueueConfiguration())
        let batch = ItemBatch((0..<100).map { payload($0, size: 24) })
        #expect(machine.push(batch.payloads, now: 0).0 == .accepted)
        let popped = machine.pop(max: 1000, waiter: nil, now: 1).0
        #expect(popped.map(number) == Array(0..<100))
        #expect(popped.allSatisfy { $0.count == 24 })
    }

    @Test("A decoded transfer's small payloads share one buffer, large ones get an array each; a payload longer than the frame is refused")
    func transferSharesOneBuffer() throws {
        /// The items of a transfer of `items` after the wire.
        func decoded(_ items: [QueueItem]) throws -> [QueueItem] {
            let message = try wireRoundTrip(.transfer(queue: "q", transferID: 7, kind: .dispatch, requestID: 0, items: TransferItems(items)))
            guard case .transfer(_, _, _, _, let decoded) = message else {
                Issue.record("not a transfer: \(message)")
                return []
            }
            #expect(decoded == TransferItems(items))
            return Array(decoded)
        }
        let items = (0..<50).map { n in
            QueueItem(id: ItemID(origin: peer(n % 2), sequence: UInt64(n)), payload: payload(n, size: 8 + n % 5))
        }
        let payloads = try decoded(items).map(\.payload)
        let starts = addresses(payloads)
        for index in 1..<payloads.count {
            #expect(starts[index] == starts[index - 1] + UInt(payloads[index - 1].count))
        }

        // Items of a few KiB share one buffer too (an array each would cost a malloc per item).
        let medium = (0..<4).map { n in QueueItem(id: ItemID(origin: peer(1), sequence: UInt64(n)), payload: payload(n, size: 2000)) }
        #expect(Set(try decoded(medium).map { $0.payload.storageAddress }).count == 1)

        // Items over 16 KiB get an array each, which `bytes` hands out as it is.
        let large = (0..<4).map { n in QueueItem(id: ItemID(origin: peer(1), sequence: UInt64(n)), payload: payload(n, size: 20_000)) }
        for item in try decoded(large) {
            let inPlace = item.payload.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
            #expect(item.payload.bytes.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } == inPlace)
        }

        // One item whose length field claims more bytes than the frame holds.
        var frame: [UInt8] = []
        try QueueMessage.transfer(queue: "q", transferID: 1, kind: .dispatch, requestID: 0, items: [items[0]]).encode(into: &frame)
        let lengthOffset = frame.count - items[0].payload.count - 4
        frame.replaceSubrange(lengthOffset..<lengthOffset + 4, with: [0, 0, 1, 0])
        #expect(throws: WireError.self) {
            let raw = try MessageDecoder.decodeAll(frame, maxFrameSize: WireProtocol.defaultMaxFrameSize)
            _ = try QueueMessage.decode(raw[0])
        }
    }

    @Test("A popped batch holds each array once: items read in place or as elements, equal by content")
    func payloadBatches() {
        let batch = ItemBatch([[1, 2], [3, 4, 5], []])
        let single: [UInt8] = [9, 9]
        let items = ItemPayloads(batch.payloads + [ItemPayload(single)])
        #expect(items.count == 4 && items.arrayCount == 2)
        #expect(items.map(\.bytes) == [[1, 2], [3, 4, 5], [], [9, 9]])
        #expect(items.indices.map { i in items.withUnsafeBytes(at: i) { Array($0) } } == [[1, 2], [3, 4, 5], [], [9, 9]])
        #expect(items.indices.map(items.byteCount(at:)) == [2, 3, 0, 2])
        // In place: the batch's buffer itself, no copy.
        let address = batch.bytes.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(items.withUnsafeBytes(at: 1) { UInt(bitPattern: $0.baseAddress) } == address + 2)
        // A whole array comes out as itself.
        #expect(items.arrays[3].withUnsafeBytes { $0.baseAddress } == single.withUnsafeBytes { $0.baseAddress })
        // Equality is by content, wherever the bytes are.
        #expect(items == [ItemPayload([1, 2]), ItemPayload([3, 4, 5]), ItemPayload([]), ItemPayload([9, 9])])
        #expect(items != [ItemPayload([1, 2]), ItemPayload([3, 4, 5]), ItemPayload([]), ItemPayload([9, 8])])
        #expect(items != [ItemPayload([1, 2])])
    }

    @Test("Transfer items share their payloads' arrays and read back as the same items")
    func transferItems() {
        let batch = ItemBatch((0..<6).map { payload($0, size: 5) })
        let items = (0..<6).map { QueueItem(id: ItemID(origin: peer(1), sequence: UInt64($0)), attempt: 1, hops: 2, payload: batch[$0]) }
            + [QueueItem(id: ItemID(origin: peer(2), sequence: 9), payload: [7])]
        let transfer = TransferItems(items)
        #expect(Array(transfer) == items)
        #expect(transfer.payloadBytes == items.reduce(0) { $0 + $1.payload.count })
        // The batch's six items point into its one buffer: two arrays in all.
        #expect(Set(transfer.map { $0.payload.storageAddress }).count == 2)
        var changed = items
        changed[3].hops = 3
        #expect(TransferItems(changed) != transfer)
        changed = items
        changed[6].payload = [8]
        #expect(TransferItems(changed) != transfer)
        #expect(TransferItems(items.map { item in var item = item; item.payload = ItemPayload(item.payload.bytes); return item }) == transfer)
    }

    @Test("A receiver keeps a transfer's one buffer while any of its items is queued, and lets it go with the last pop")
    func receivedBufferLifetime() throws {
        var b = QueueMachine(name: "q", localPeer: peer(2), configuration: QueueConfiguration())
        _ = b.peerConnected(peer(1), now: 0)
        let items = (0..<10).map { QueueItem(id: ItemID(origin: peer(1), sequence: UInt64($0 + 1)), hops: 1, payload: payload($0, size: 16)) }
        let message = try wireRoundTrip(.transfer(queue: "q", transferID: 1, kind: .steal, requestID: 0, items: TransferItems(items)))
        _ = b.received(message, from: peer(1), now: 1)
        #expect(b.count == 10 && b.heldBufferCount == 1)
        let first = b.pop(max: 4, waiter: nil, now: 2).0
        #expect(first.arrayCount == 1 && first.map(number) == [0, 1, 2, 3])
        #expect(b.heldBufferCount == 1)
        let rest = b.pop(max: 10, waiter: nil, now: 3).0
        #expect(rest.arrayCount == 1 && rest.map(number) == Array(4..<10))
        #expect(b.heldBufferCount == 0 && b.heldBytes == 0)
        // The popped batches keep the bytes they point into.
        #expect(first.map(\.bytes) == (0..<4).map { payload($0, size: 16) })
    }
}
