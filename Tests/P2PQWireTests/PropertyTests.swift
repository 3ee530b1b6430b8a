import Testing
@testable import P2PQWire

/// Encode random traffic, cut the byte stream anywhere, decode: the result must be exactly
/// what was encoded, whatever the cut.
@Suite("Round-trip properties")
struct PropertyTests {
    /// A random mix of valid link messages and raw messages with arbitrary bodies (the stream
    /// decoder does not look inside bodies), some of them large enough to span many chunks.
    static func traffic(_ rng: inout SplitMix64) -> (raw: [RawMessage], link: [LinkMessage?]) {
        var raw: [RawMessage] = []
        var link: [LinkMessage?] = []
        for _ in 0..<rng.int(1...40) {
            if rng.chance(60) {
                let message = rng.linkMessage()
                let encoded = try! message.encoded()
                raw.append(RawMessage(type: message.messageType, body: Array(encoded.dropFirst(5))))
                link.append(message)
            } else {
                let size = rng.chance(5) ? rng.int(60_000...140_000) : rng.int(0...300)
                let type = MessageType.allCases[rng.int(0...MessageType.allCases.count - 1)]
                raw.append(RawMessage(type: type, body: rng.bytes(size)))
                link.append(nil)
            }
        }
        return (raw, link)
    }

    static func encode(_ messages: [RawMessage]) -> [UInt8] {
        var stream: [UInt8] = []
        for message in messages {
            message.body.withUnsafeBytes { try! MessageEncoder.encode(type: message.type, body: $0, into: &stream) }
        }
        return stream
    }

    @Test("Message stream: random messages, random split points, 1-byte chunks", arguments: Seeds.all)
    func messageStream(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let (raw, link) = Self.traffic(&rng)
        let stream = Self.encode(raw)
        for style in ChunkStyle.allCases {
            // Byte-by-byte over a multi-megabyte stream would only slow the suite down.
            if style == .bytewise && stream.count > 200_000 { continue }
            var decoder = try MessageDecoder()
            var decoded: [RawMessage] = []
            var decodedLink: [LinkMessage?] = []
            try feedInChunks(stream, sizes: rng.chunkSizes(total: stream.count, style: style)) { (chunk) throws(WireError) in
                try decoder.feed(chunk) { (type, body) throws(WireError) in
                    decoded.append(RawMessage(type: type, body: Array(body)))
                    // Link messages must decode to exactly what was encoded; raw ones may not decode.
                    if let expected = link[decoded.count - 1] {
                        decodedLink.append(try LinkMessage.decode(type: type, body: body))
                        #expect(decodedLink.last! == expected, "seed \(seed) style \(style) message \(decoded.count - 1)")
                    }
                }
            }
            #expect(decoded == raw, "seed \(seed) style \(style): decoded \(decoded.count) of \(raw.count) messages")
            #expect(decoder.isAtMessageBoundary, "seed \(seed)")
            try decoder.finish()
        }
    }

    @Test("Link messages: encodedSize is exact, the raw-buffer encoder matches the array one", arguments: Seeds.all)
    func encoderAgreement(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<20 {
            let message = rng.linkMessage()
            let size = try MessageEncoder.encodedSize(of: message)
            let array = try message.encoded()
            #expect(array.count == size, "seed \(seed): \(message)")
            var buffer = [UInt8](repeating: 0xEE, count: size + 3)
            let written = try buffer.withUnsafeMutableBytes { raw in
                try MessageEncoder.encode(message, into: raw)
            }
            #expect(written == size, "seed \(seed)")
            #expect(Array(buffer[0..<size]) == array, "seed \(seed): \(message)")
            #expect(buffer[size...].allSatisfy { $0 == 0xEE }, "seed \(seed): wrote past the message")
            #expect(try LinkMessage.decode(type: message.messageType, body: Array(array.dropFirst(5))) == message)
        }
    }

    @Test("Record stream: random bodies (1...65535 bytes), random split points, 1-byte chunks", arguments: Seeds.all)
    func recordStream(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let bodies: [[UInt8]] = (0..<rng.int(1...30)).map { _ in
            switch rng.int(0...9) {
            case 0: return rng.bytes(WireProtocol.maxRecordBodySize)
            case 1: return rng.bytes(1)
            case 2: return rng.bytes(rng.int(1_000...65_535))
            default: return rng.bytes(rng.int(1...200))
            }
        }
        var stream: [UInt8] = []
        for body in bodies { try RecordEncoder.encode(body: body, into: &stream) }
        for style in ChunkStyle.allCases {
            if style == .bytewise && stream.count > 300_000 { continue }
            var decoder = RecordDecoder()
            var decoded: [[UInt8]] = []
            try feedInChunks(stream, sizes: rng.chunkSizes(total: stream.count, style: style)) { (chunk) throws(WireError) in
                try decoder.feed(chunk) { decoded.append(Array($0)) }
            }
            #expect(decoded == bodies, "seed \(seed) style \(style): \(decoded.count) of \(bodies.count) records")
            #expect(decoder.isAtRecordBoundary, "seed \(seed)")
            #expect(decoder.bufferedCapacity <= 65_535 + 64, "seed \(seed): record buffer over its bound")
        }
    }

    @Test("Messages spanning records: cut the message stream into records of random sizes", arguments: Seeds.all)
    func messagesAcrossRecords(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let (raw, _) = Self.traffic(&rng)
        let plaintext = Self.encode(raw)

        // Records of random sizes up to 65535: tiny ones split headers, big ones hold many messages.
        var records: [UInt8] = []
        var offset = 0
        while offset < plaintext.count {
            let size = Swift.min(plaintext.count - offset, rng.chance(40) ? rng.int(1...9) : rng.int(1...WireProtocol.maxRecordBodySize))
            try RecordEncoder.encode(body: Array(plaintext[offset..<offset + size]), into: &records)
            offset += size
        }

        for style in [ChunkStyle.random, .whole] {
            var recordDecoder = RecordDecoder()
            var messageDecoder = try MessageDecoder()
            var decoded: [RawMessage] = []
            try feedInChunks(records, sizes: rng.chunkSizes(total: records.count, style: style)) { (chunk) throws(WireError) in
                try recordDecoder.feed(chunk) { (body) throws(WireError) in
                    try messageDecoder.feed(body) { type, body in decoded.append(RawMessage(type: type, body: Array(body))) }
                }
            }
            #expect(decoded == raw, "seed \(seed) style \(style): decoded \(decoded.count) of \(raw.count)")
            try recordDecoder.finish()
            try messageDecoder.finish()
        }

        // The insecure-mode helper makes the same stream of plaintext.
        var helperRecords: [UInt8] = []
        try plaintext.withUnsafeBytes { raw in
            try RecordEncoder.encodeRecords(carrying: raw, maxBodySize: rng.int(1...WireProtocol.maxRecordBodySize), into: &helperRecords)
        }
        let bodies = try RecordDecoder.decodeAll(helperRecords)
        #expect(Array(bodies.joined()) == plaintext, "seed \(seed)")
    }

    @Test("Zero copy: a message or record wholly inside a chunk is passed in place")
    func zeroCopy() throws {
        let ping = try LinkMessage.ping(nonce: 1, sentAt: 2).encoded()
        let stream = ping + ping
        var decoder = try MessageDecoder()
        var inPlace: [Bool] = []
        try stream.withUnsafeBytes { chunk in
            let range = UInt(bitPattern: chunk.baseAddress!)..<UInt(bitPattern: chunk.baseAddress! + chunk.count)
            try decoder.feed(chunk) { _, body in inPlace.append(range.contains(UInt(bitPattern: body.baseAddress!))) }
        }
        #expect(inPlace == [true, true])

        // Split inside the body: the second half arrives with the rest, reassembled (a copy).
        var copied: [Bool] = []
        try feedInChunks(stream, sizes: [10, stream.count - 10]) { (chunk) throws(WireError) in
            let range = UInt(bitPattern: chunk.baseAddress!)..<UInt(bitPattern: chunk.baseAddress! + chunk.count)
            try decoder.feed(chunk) { _, body in copied.append(range.contains(UInt(bitPattern: body.baseAddress!))) }
        }
        #expect(copied == [false, true])

        // Split inside the header only: the body is all in the next chunk and still passed in place.
        var headerSplit: [Bool] = []
        try feedInChunks(ping, sizes: [3, ping.count - 3]) { (chunk) throws(WireError) in
            let range = UInt(bitPattern: chunk.baseAddress!)..<UInt(bitPattern: chunk.baseAddress! + chunk.count)
            try decoder.feed(chunk) { _, body in headerSplit.append(range.contains(UInt(bitPattern: body.baseAddress!))) }
        }
        #expect(headerSplit == [true])

        var records: [UInt8] = []
        try RecordEncoder.encode(body: [1, 2, 3], into: &records)
        try RecordEncoder.encode(body: [4, 5], into: &records)
        var recordDecoder = RecordDecoder()
        var recordsInPlace: [Bool] = []
        try records.withUnsafeBytes { chunk in
            let range = UInt(bitPattern: chunk.baseAddress!)..<UInt(bitPattern: chunk.baseAddress! + chunk.count)
            try recordDecoder.feed(chunk) { body in recordsInPlace.append(range.contains(UInt(bitPattern: body.baseAddress!))) }
        }
        #expect(recordsInPlace == [true, true])
    }
}
