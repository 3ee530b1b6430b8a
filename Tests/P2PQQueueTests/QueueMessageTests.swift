import P2PQQueue
import P2PQWire
import Testing

private func stats(rate: Double = 10, finish: Double = 1, sequence: UInt64 = 1) -> LoadStats {
    LoadStats(sequence: sequence, length: 10, waiting: 2, serviceRate: rate, finishTime: finish, hasConsumers: true)
}

/// Bytes of a stats body with `rate` as the service rate.
private func statsBody(rate: Double) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.withWireWriter { writer in
        writer.writeString("q")
        writer.writeU64(1)
        writer.writeU64(10)
        writer.writeU32(0)
        writer.writeU8(3)
        writer.writeFloat64(rate)
        writer.writeFloat64(1)
    }
    return bytes
}

@Suite struct QueueMessageTests {
    @Test("Every queue message survives the wire")
    func roundTrips() throws {
        let items = [
            QueueItem(id: ItemID(origin: peer(1), sequence: 7), attempt: 0, hops: 1, payload: payload(7)),
            QueueItem(id: ItemID(origin: peer(2), sequence: 9), attempt: 2, hops: 3, payload: []),
            QueueItem(id: ItemID(origin: peer(1), sequence: 8), attempt: 0, hops: 1, payload: payload(8, size: 300)),
        ]
        let messages: [QueueMessage] = [
            .stats(queue: "jobs", stats()),
            .stats(queue: "é", LoadStats(sequence: .max, length: 0, waiting: 0, serviceRate: 0, finishTime: 0, hasConsumers: false, accepting: false)),
            .stealRequest(queue: "jobs", requestID: 42, maxItems: 17, thiefRate: 3.5),
            .stealEmpty(queue: "jobs", requestID: 42),
            .transfer(queue: "jobs", transferID: 5, kind: .steal, requestID: 42, items: TransferItems(items)),
            .transferAck(queue: "jobs", transferID: 5, status: .full),
            .ownerUpdate(queue: "jobs", updateID: 3, popped: [SequenceRun(first: 1, count: 100), SequenceRun(first: 200, count: 1)],
                         custody: [CustodyChange(holder: peer(3), attempt: 1, hops: 2, runs: [SequenceRun(first: 5, count: 3)])]),
            .ownerUpdate(queue: "jobs", updateID: 3, popped: [], custody: []),
            .ownerUpdateAck(queue: "jobs", updateID: 3),
            .transfer(queue: "jobs", transferID: 6, kind: .drain, requestID: 0, items: TransferItems(items)),
            .ownerChange(queue: "jobs", changeID: 4, groups: [CustodyChange(holder: peer(3), attempt: 1, hops: 0,
                                                                             runs: [SequenceRun(first: 5, count: 3), SequenceRun(first: 9, count: 1)])]),
        ]
        for message in messages {
            #expect(try wireRoundTrip(message) == message)
            var bytes: [UInt8] = []
            try message.encode(into: &bytes)
            #expect(bytes.count == 5 + message.bodySize, "\(message.messageType)")
            #expect(QueueMessage.handles(message.messageType))
            #expect(MessageType.family(of: message.messageType.rawValue) == .queue)
        }
    }

    @Test("Transfer items travel as runs: one header per run of consecutive sequences, a length per item")
    func transferRuns() throws {
        func item(_ origin: Int, _ sequence: UInt64, attempt: UInt32 = 0, hops: UInt32 = 1, size: Int = 8) -> QueueItem {
            QueueItem(id: ItemID(origin: peer(origin), sequence: sequence), attempt: attempt, hops: hops, payload: payload(Int(sequence % 1000), size: size))
        }
        let head = QueueWire.transferOverhead(queueNameLength: 4)
        let cases: [(items: [QueueItem], origins: Int, runs: Int)] = [
            ([item(1, 7), item(1, 8), item(1, 9)], 1, 1),
            ([item(1, 7), item(1, 9)], 1, 2),                       // a gap
            ([item(1, 7), item(1, 8, hops: 2)], 1, 2),              // another hop count
            ([item(1, 7), item(1, 8, attempt: 1)], 1, 2),           // another attempt
            ([item(1, 7), item(2, 8), item(1, 8)], 2, 3),           // origins interleaved
            ([item(1, .max - 1), item(1, .max)], 1, 1),             // up to the last sequence
        ]
        for (items, origins, runs) in cases {
            let message = QueueMessage.transfer(queue: "jobs", transferID: 5, kind: .balance, requestID: 0, items: TransferItems(items))
            let expected = head + origins * QueueWire.originSize + runs * QueueWire.runOverhead
                + items.count * QueueWire.itemOverhead + items.reduce(0) { $0 + $1.payload.count }
            #expect(message.bodySize == expected)
            var bytes: [UInt8] = []
            try message.encode(into: &bytes)
            #expect(bytes.count == 5 + expected)
            #expect(try wireRoundTrip(message) == message)
            // Large items take the other decoding path (an array each): the same items.
            let large = QueueMessage.transfer(queue: "jobs", transferID: 5, kind: .balance, requestID: 0,
                                              items: TransferItems(items.map { item in var item = item; item.payload = ItemPayload(payload(number(item.payload), size: 600)); return item }))
            #expect(try wireRoundTrip(large) == large)
        }
    }

    @Test("A stats message with NaN, infinity, a negative or absurd value is rejected by the decoder")
    func badStatsDecode() {
        #expect(throws: WireError.malformed(field: "stats.serviceRate", reason: "NaN")) {
            try QueueMessage.decode(type: .queueStats, body: statsBody(rate: .nan))
        }
        #expect(throws: WireError.malformed(field: "stats.serviceRate", reason: "infinite")) {
            try QueueMessage.decode(type: .queueStats, body: statsBody(rate: .infinity))
        }
        #expect(throws: WireError.malformed(field: "stats.serviceRate", reason: "negative (-1.0)")) {
            try QueueMessage.decode(type: .queueStats, body: statsBody(rate: -1))
        }
        #expect(throws: WireError.malformed(field: "stats.serviceRate", reason: "1e+300 exceeds 1000000000.0")) {
            try QueueMessage.decode(type: .queueStats, body: statsBody(rate: 1e300))
        }
        // And a sender cannot encode one.
        #expect(throws: WireError.malformed(field: "stats.finishTime", reason: "NaN")) {
            try wireRoundTrip(.stats(queue: "q", stats(finish: .nan)))
        }
    }

    @Test("Malformed queue messages fail with precise errors")
    func malformed() throws {
        func body(_ write: (inout WireWriter<[UInt8]>) -> Void) -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.withWireWriter { write(&$0) }
            return bytes
        }
        // Empty queue name.
        #expect(throws: WireError.malformed(field: "queue", reason: "empty name")) {
            try QueueMessage.decode(type: .queueStealEmpty, body: body { $0.writeString(""); $0.writeU64(1) })
        }
        // Truncated.
        #expect(throws: WireError.truncated(field: "stealEmpty.requestID", needed: 8, available: 3)) {
            try QueueMessage.decode(type: .queueStealEmpty, body: body { $0.writeString("q"); $0.writeRaw([1, 2, 3]) })
        }
        // Trailing bytes.
        #expect(throws: WireError.trailingBytes(type: .queueStealEmpty, count: 1)) {
            try QueueMessage.decode(type: .queueStealEmpty, body: body { $0.writeString("q"); $0.writeU64(1); $0.writeU8(0) })
        }
        // Unknown flag bits.
        var flags = statsBody(rate: 1)
        flags[4 + 1 + 8 + 8 + 4] = 0x84
        #expect(throws: WireError.malformed(field: "stats.flags", reason: "unknown bits 0x84")) {
            try QueueMessage.decode(type: .queueStats, body: flags)
        }
        // Unknown ack status and transfer kind.
        #expect(throws: WireError.malformed(field: "transferAck.status", reason: "unknown status 9")) {
            try QueueMessage.decode(type: .queueTransferAck, body: body { $0.writeString("q"); $0.writeU64(1); $0.writeU8(9) })
        }
        let transferHead = { (kind: UInt8, origins: UInt16) in
            body { w in
                w.writeString("q"); w.writeU64(1); w.writeU8(kind); w.writeU64(0); w.writeU16(origins)
                for index in 0..<Int(origins) { peer(index).write(into: &w) }
            }
        }
        #expect(throws: WireError.malformed(field: "transfer.kind", reason: "unknown kind 7")) {
            try QueueMessage.decode(type: .queueTransfer, body: transferHead(7, 1))
        }
        #expect(throws: WireError.malformed(field: "transfer.origins.count", reason: "0")) {
            try QueueMessage.decode(type: .queueTransfer, body: transferHead(0, 0))
        }
        #expect(throws: WireError.malformed(field: "transfer.count", reason: "no items")) {
            try QueueMessage.decode(type: .queueTransfer, body: transferHead(0, 1) + [0, 0, 0, 0])
        }
        // A count the bytes cannot hold: refused before allocating for it.
        #expect(throws: WireError.malformed(field: "transfer.count", reason: "1000 items cannot fit in 0 bytes")) {
            try QueueMessage.decode(type: .queueTransfer, body: transferHead(0, 1) + [0, 0, 0x03, 0xE8])
        }
        let badIndex = transferHead(0, 1) + body { w in
            w.writeU32(1); w.writeU16(1); w.writeU64(1); w.writeU32(1); w.writeU32(0); w.writeU32(0); w.writeByteString([1])
        }
        #expect(throws: WireError.malformed(field: "transfer.items[0].origin", reason: "index 1 of 1 origins")) {
            try QueueMessage.decode(type: .queueTransfer, body: badIndex)
        }
        // Runs: empty, longer than the items left, or running past the last sequence number.
        let run = { (count: UInt32, runCount: UInt32, first: UInt64, payloads: Int) in
            transferHead(0, 1) + body { w in
                w.writeU32(count); w.writeU16(0); w.writeU64(first); w.writeU32(runCount); w.writeU32(0); w.writeU32(0)
                for _ in 0..<payloads { w.writeByteString([UInt8](repeating: 1, count: 20)) }
            }
        }
        #expect(throws: WireError.malformed(field: "transfer.items[0].runCount", reason: "0 with 1 items left")) {
            try QueueMessage.decode(type: .queueTransfer, body: run(1, 0, 1, 1))
        }
        #expect(throws: WireError.malformed(field: "transfer.items[0].runCount", reason: "3 with 2 items left")) {
            try QueueMessage.decode(type: .queueTransfer, body: run(2, 3, 1, 3))
        }
        #expect(throws: WireError.malformed(field: "transfer.items[0].sequence", reason: "a run of 2 from \(UInt64.max) overflows")) {
            try QueueMessage.decode(type: .queueTransfer, body: run(2, 2, .max, 2))
        }
        #expect(throws: Never.self) { try QueueMessage.decode(type: .queueTransfer, body: run(2, 2, .max - 1, 2)) }
        // A run that ends before the item count: the next run's header is cut short.
        #expect(throws: WireError.truncated(field: "transfer.items[1].runCount", needed: 4, available: 0)) {
            try QueueMessage.decode(type: .queueTransfer, body: run(2, 1, 1, 1) + [UInt8](repeating: 0, count: 10))
        }
        // Empty run in an owner update.
        #expect(throws: WireError.malformed(field: "ownerUpdate.popped[0].count", reason: "0")) {
            try QueueMessage.decode(type: .queueOwnerUpdate, body: body { w in
                w.writeString("q"); w.writeU64(9); w.writeU32(1); w.writeU64(5); w.writeU32(0); w.writeU16(0)
            })
        }
        // Steal request for nothing.
        #expect(throws: WireError.malformed(field: "stealRequest.maxItems", reason: "0")) {
            try QueueMessage.decode(type: .queueStealRequest, body: body { w in
                w.writeString("q"); w.writeU64(1); w.writeU32(0); w.writeFloat64(1)
            })
        }
        // Not a queue type.
        #expect(throws: WireError.unknownMessageType(0x02)) {
            try QueueMessage.decode(type: .ping, body: body { $0.writeString("q") })
        }
        // Link messages do not decode queue types.
        #expect(throws: WireError.unknownMessageType(0x23)) {
            try LinkMessage.decode(type: .queueTransfer, body: [])
        }
    }

    @Test("A transfer larger than the frame limit is refused by the encoder")
    func frameLimit() {
        let items = [QueueItem(id: ItemID(origin: peer(1), sequence: 1), payload: [UInt8](repeating: 1, count: 600))]
        #expect(throws: WireError.frameTooLarge(length: 687, limit: 512)) {
            try wireRoundTrip(.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: TransferItems(items)), maxFrameSize: 512)
        }
    }

    @Test("Owner change: strict validation (no run, an empty run, hops not 0 are malformed)")
    func ownerChangeValidation() throws {
        let bad: [QueueMessage] = [
            .ownerChange(queue: "q", changeID: 1, groups: []),
            .ownerChange(queue: "q", changeID: 1, groups: [CustodyChange(holder: peer(1), attempt: 0, hops: 0, runs: [])]),
            .ownerChange(queue: "q", changeID: 1, groups: [CustodyChange(holder: peer(1), attempt: 0, hops: 0,
                                                                        runs: [SequenceRun(first: 1, count: 0)])]),
            .ownerChange(queue: "q", changeID: 1, groups: [CustodyChange(holder: peer(1), attempt: 0, hops: 2,
                                                                        runs: [SequenceRun(first: 1, count: 1)])]),
        ]
        for message in bad {
            #expect(throws: WireError.self) { try message.validate() }
            // The same bytes, written without validation, are refused by the decoder.
            var writer = WireWriter<[UInt8]>(output: [])
            message.writeBody(into: &writer)
            let body = writer.output
            let decoded = body.withUnsafeBytes { raw -> Bool in
                do throws(WireError) {
                    _ = try QueueMessage.decode(type: .queueOwnerChange, body: raw)
                    return true
                } catch {
                    return false
                }
            }
            #expect(!decoded, "decoded \(message)")
        }
    }
}
