import Testing
@testable import P2PQWire

/// Every malformed input fails with exactly the error that names what is wrong.
@Suite("Malformed input")
struct MalformedTests {
    // MARK: Stream level (MessageDecoder)

    struct StreamCase: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var maxFrameSize = WireProtocol.defaultMaxFrameSize
        var expected: WireError
        /// Bytes the decoder needs to see before it must throw (the header field at fault).
        var failsAfter: Int
        var testDescription: String { name }
    }

    static let streamCases: [StreamCase] = {
        let limit = WireProtocol.defaultMaxFrameSize
        var cases = [
            StreamCase(name: "length = limit + 1", bytes: be32(UInt32(limit + 1)) + [0x02], expected: .frameTooLarge(length: limit + 1, limit: limit), failsAfter: 4),
            StreamCase(name: "length = limit + 1, limit 512", bytes: be32(513) + [0x02] + [UInt8](repeating: 0, count: 600), maxFrameSize: 512, expected: .frameTooLarge(length: 513, limit: 512), failsAfter: 4),
            StreamCase(name: "length 0xFFFFFFFF", bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0x02], expected: .frameTooLarge(length: 0xFFFF_FFFF, limit: limit), failsAfter: 4),
            StreamCase(name: "length 64 MiB + 1 at the ceiling", bytes: be32(UInt32(64 << 20) + 1), maxFrameSize: 64 << 20, expected: .frameTooLarge(length: (64 << 20) + 1, limit: 64 << 20), failsAfter: 4),
            StreamCase(name: "zero length", bytes: [0, 0, 0, 0, 0x02], expected: .emptyFrame, failsAfter: 4),
            StreamCase(name: "oversized after a valid ping", bytes: frame(0x02, [UInt8](repeating: 7, count: 16)) + [0xFF, 0xFF, 0xFF, 0xFF], expected: .frameTooLarge(length: 0xFFFF_FFFF, limit: limit), failsAfter: 25),
        ]
        // Unassigned bytes and every reserved range's edges: none decode yet.
        for type: UInt8 in [0x00, 0x07, 0x0F, 0x15, 0x1F, 0x30, 0x3F, 0x50, 0x5F, 0x60, 0xEF, 0xF1, 0xFF] {
            cases.append(StreamCase(name: "unknown type 0x\(String(type, radix: 16))", bytes: be32(17) + [type] + [UInt8](repeating: 0, count: 16), expected: .unknownMessageType(type), failsAfter: 5))
        }
        return cases
    }()

    @Test("Stream errors, whole and byte by byte, raised as soon as the bad field is complete", arguments: streamCases)
    func streamErrors(testCase: StreamCase) throws {
        for sizes in [[testCase.bytes.count], Array(repeating: 1, count: testCase.bytes.count)] {
            var decoder = try MessageDecoder(maxFrameSize: testCase.maxFrameSize)
            #expect(throws: testCase.expected) {
                try feedInChunks(testCase.bytes, sizes: sizes) { (chunk) throws(WireError) in try decoder.feed(chunk) { _, _ in } }
            }
        }
        // Exactly the bytes up to the bad field are enough: nothing waits for (or buffers) the body.
        var decoder = try MessageDecoder(maxFrameSize: testCase.maxFrameSize)
        #expect(throws: testCase.expected) {
            try feedInChunks(Array(testCase.bytes.prefix(testCase.failsAfter)), sizes: [testCase.failsAfter]) { (chunk) throws(WireError) in
                try decoder.feed(chunk) { _, _ in }
            }
        }
        #expect(decoder.bufferedCapacity == 0)
    }

    @Test("A length of exactly maxFrameSize is accepted", arguments: [512, 4096, WireProtocol.defaultMaxFrameSize])
    func exactLimit(maxFrameSize: Int) throws {
        let body = [UInt8](repeating: 0x5A, count: maxFrameSize - 1)
        let messages = try MessageDecoder.decodeAll(frame(0x04, body), maxFrameSize: maxFrameSize)
        #expect(messages == [RawMessage(type: .goodbye, body: body)])
    }

    @Test("Record errors: an empty record, alone, after a valid one, byte by byte")
    func emptyRecord() throws {
        for stream: [UInt8] in [[0, 0], [0, 1, 0x41, 0, 0], [0, 3, 1, 2, 3, 0, 0, 0, 1, 9]] {
            for sizes in [[stream.count], Array(repeating: 1, count: stream.count)] {
                var decoder = RecordDecoder()
                var delivered = 0
                #expect(throws: WireError.emptyRecord) {
                    try feedInChunks(stream, sizes: sizes) { (chunk) throws(WireError) in try decoder.feed(chunk) { _ in delivered += 1 } }
                }
                #expect(delivered == (stream.count > 2 ? 1 : 0))
            }
        }
        #expect(throws: WireError.emptyRecord) { try RecordDecoder.decodeAll([0, 0]) }
    }

    // MARK: Body level (LinkMessage.decode)

    /// A message's body and its fields in wire order, with their sizes.
    struct Layout: Sendable {
        var type: MessageType
        var body: [UInt8]
        var fields: [(name: String, size: Int)]
    }

    static let layouts: [Layout] = {
        let host = "peer-1.example"
        let hello = be16(1) + samplePeerID.bytes + be16(7946) + lengthPrefixed(host) + be64(42) + be64(0b101)
        let ping = be64(0x0102_0304_0506_0708) + be64(99)
        let goodbye = [2] + lengthPrefixed("bad frame")
        let peers = be16(2)
            + samplePeerID.bytes + lengthPrefixed("10.0.0.1") + be16(9000)
            + otherPeerID.bytes + lengthPrefixed("日本.example") + be16(9001)
        func peerFields(_ index: Int, hostLength: Int) -> [(String, Int)] {
            [("peers[\(index)].peerID", 32), ("peers[\(index)].host.length", 4), ("peers[\(index)].host", hostLength), ("peers[\(index)].port", 2)]
        }
        return [
            Layout(type: .hello, body: hello, fields: [
                ("hello.protocolVersion", 2), ("hello.peerID", 32), ("hello.listenPort", 2), ("hello.listenHost.length", 4),
                ("hello.listenHost", host.utf8.count), ("hello.incarnation", 8), ("hello.features", 8),
            ]),
            Layout(type: .ping, body: ping, fields: [("ping.nonce", 8), ("ping.sentAt", 8)]),
            Layout(type: .pong, body: ping, fields: [("pong.nonce", 8), ("pong.sentAt", 8)]),
            Layout(type: .goodbye, body: goodbye, fields: [("goodbye.reason", 1), ("goodbye.detail.length", 4), ("goodbye.detail", 9)]),
            Layout(type: .peers, body: peers, fields: [("peers.count", 2)] + peerFields(0, hostLength: 8) + peerFields(1, hostLength: "日本.example".utf8.count)),
        ]
    }()

    @Test("Every layout decodes whole (sanity check of the tables below)", arguments: layouts.map(\.type))
    func layoutsAreValid(type: MessageType) throws {
        let layout = Self.layouts.first { $0.type == type }!
        #expect(layout.fields.reduce(0) { $0 + $1.size } == layout.body.count)
        _ = try LinkMessage.decode(type: type, body: layout.body)
    }

    @Test("Truncated inside every field of every message type names that field", arguments: layouts.map(\.type))
    func truncatedFields(type: MessageType) throws {
        let layout = Self.layouts.first { $0.type == type }!
        var offset = 0
        var checked = 0
        for field in layout.fields {
            // Cut anywhere from the field's first byte to one byte before its end.
            for available in 0..<field.size {
                let body = Array(layout.body.prefix(offset + available))
                let expected = WireError.truncated(field: field.name, needed: field.size, available: available)
                #expect(throws: expected) { try LinkMessage.decode(type: type, body: body) }
                // The same through the stream decoder (the frame itself is complete).
                #expect(throws: expected) { try decodeLinkStream(frame(type.rawValue, body)) }
                checked += 1
            }
            offset += field.size
        }
        #expect(checked == layout.body.count)
    }

    @Test("Trailing bytes after a complete body", arguments: layouts.map(\.type))
    func trailingBytes(type: MessageType) throws {
        let layout = Self.layouts.first { $0.type == type }!
        for extra in [1, 3, 300] {
            let body = layout.body + [UInt8](repeating: 0, count: extra)
            #expect(throws: WireError.trailingBytes(type: type, count: extra)) { try LinkMessage.decode(type: type, body: body) }
            #expect(throws: WireError.trailingBytes(type: type, count: extra)) { try decodeLinkStream(frame(type.rawValue, body)) }
        }
        // An empty body is a truncated first field, for every type.
        #expect(throws: WireError.truncated(field: layout.fields[0].name, needed: layout.fields[0].size, available: 0)) {
            try LinkMessage.decode(type: type, body: [])
        }
    }

    struct BodyCase: CustomTestStringConvertible, Sendable {
        var name: String
        var type: MessageType
        var body: [UInt8]
        var expected: WireError
        var testDescription: String { name }
    }

    static func helloBody(version: UInt16 = 1, host: [UInt8]) -> [UInt8] {
        be16(version) + samplePeerID.bytes + be16(7946) + lengthPrefixed(host) + be64(1) + be64(0)
    }

    static func peersBody(count: UInt16, entries: [(host: [UInt8], port: UInt16)]) -> [UInt8] {
        be16(count) + entries.flatMap { samplePeerID.bytes + lengthPrefixed($0.host) + be16($0.port) }
    }

    static let invalidUTF8: [(String, [UInt8])] = [
        ("0xFF", [0x61, 0xFF]),
        ("lone continuation", [0x80]),
        ("bad continuation", [0xC3, 0x28]),
        ("overlong '/'", [0xC0, 0xAF]),
        ("UTF-16 surrogate", [0xED, 0xA0, 0x80]),
        ("above U+10FFFF", [0xF4, 0x90, 0x80, 0x80]),
        ("cut-off sequence", [0x61, 0xE2, 0x82]),
    ]

    static let bodyCases: [BodyCase] = {
        var cases: [BodyCase] = []
        for (name, bytes) in invalidUTF8 {
            cases.append(BodyCase(name: "hello.listenHost invalid UTF-8: \(name)", type: .hello, body: helloBody(host: bytes), expected: .malformed(field: "hello.listenHost", reason: "invalid UTF-8")))
            cases.append(BodyCase(name: "goodbye.detail invalid UTF-8: \(name)", type: .goodbye, body: [0] + lengthPrefixed(bytes), expected: .malformed(field: "goodbye.detail", reason: "invalid UTF-8")))
            cases.append(BodyCase(name: "peers[1].host invalid UTF-8: \(name)", type: .peers, body: peersBody(count: 2, entries: [(Array("a".utf8), 1), (bytes, 2)]), expected: .malformed(field: "peers[1].host", reason: "invalid UTF-8")))
        }
        let host256 = [UInt8](repeating: 0x61, count: 256)
        cases += [
            BodyCase(name: "hello.listenHost 256 bytes", type: .hello, body: helloBody(host: host256), expected: .malformed(field: "hello.listenHost", reason: "length 256 exceeds the limit of 255 bytes")),
            // The limit is checked on the length field, before waiting for (or trusting) the bytes.
            BodyCase(name: "hello.listenHost declares 4 GiB", type: .hello, body: be16(1) + samplePeerID.bytes + be16(1) + [0xFF, 0xFF, 0xFF, 0xFF], expected: .malformed(field: "hello.listenHost", reason: "length 4294967295 exceeds the limit of 255 bytes")),
            BodyCase(name: "goodbye.detail 257 bytes", type: .goodbye, body: [1] + lengthPrefixed([UInt8](repeating: 0x62, count: 257)), expected: .malformed(field: "goodbye.detail", reason: "length 257 exceeds the limit of 256 bytes")),
            BodyCase(name: "peers[0].host 256 bytes", type: .peers, body: peersBody(count: 1, entries: [(host256, 1)]), expected: .malformed(field: "peers[0].host", reason: "length 256 exceeds the limit of 255 bytes")),
            BodyCase(name: "peers.count 1025", type: .peers, body: be16(1025), expected: .malformed(field: "peers.count", reason: "1025 exceeds the limit of 1024")),
            BodyCase(name: "peers.count 65535", type: .peers, body: be16(65535) + [UInt8](repeating: 0, count: 100), expected: .malformed(field: "peers.count", reason: "65535 exceeds the limit of 1024")),
            BodyCase(name: "peers.count 1024 with no entries", type: .peers, body: be16(1024), expected: .truncated(field: "peers[0].peerID", needed: 32, available: 0)),
            BodyCase(name: "peers.count 1 with 2 entries", type: .peers, body: peersBody(count: 1, entries: [(Array("a".utf8), 1), (Array("b".utf8), 2)]), expected: .trailingBytes(type: .peers, count: 32 + 4 + 1 + 2)),
            BodyCase(name: "peers[0].host empty", type: .peers, body: peersBody(count: 1, entries: [([], 80)]), expected: .malformed(field: "peers[0].host", reason: "empty")),
            BodyCase(name: "peers[1].port 0", type: .peers, body: peersBody(count: 2, entries: [(Array("a".utf8), 1), (Array("b".utf8), 0)]), expected: .malformed(field: "peers[1].port", reason: "port 0")),
            BodyCase(name: "goodbye.reason 4", type: .goodbye, body: [4] + lengthPrefixed([]), expected: .malformed(field: "goodbye.reason", reason: "unknown reason 4")),
            BodyCase(name: "goodbye.reason 255", type: .goodbye, body: [255] + lengthPrefixed([]), expected: .malformed(field: "goodbye.reason", reason: "unknown reason 255")),
            BodyCase(name: "hello version 0", type: .hello, body: helloBody(version: 0, host: []), expected: .unsupportedVersion(received: 0, supported: 1...2)),
            BodyCase(name: "hello version 3", type: .hello, body: helloBody(version: 3, host: []), expected: .unsupportedVersion(received: 3, supported: 1...2)),
            BodyCase(name: "hello version 0xFFFF, rest missing", type: .hello, body: be16(0xFFFF), expected: .unsupportedVersion(received: 0xFFFF, supported: 1...2)),
        ]
        return cases
    }()

    @Test("Body errors: bad UTF-8, limits, counts, reasons, versions", arguments: bodyCases)
    func bodyErrors(testCase: BodyCase) throws {
        #expect(throws: testCase.expected) { try LinkMessage.decode(type: testCase.type, body: testCase.body) }
        #expect(throws: testCase.expected) { try decodeLinkStream(frame(testCase.type.rawValue, testCase.body)) }
    }

    @Test("Values at their limits decode")
    func atLimits() throws {
        let host255 = String(repeating: "h", count: 255)
        let hello = try LinkMessage.decode(type: .hello, body: Self.helloBody(host: Array(host255.utf8)))
        guard case .hello(let decoded) = hello else { Issue.record("not a hello"); return }
        #expect(decoded.listenHost == host255)
        // Limits count UTF-8 bytes, not characters: 63 four-byte scalars + 4 ASCII = 256 bytes.
        let mixed = String(repeating: "😀", count: 63) + "abc"
        #expect(try LinkMessage.decode(type: .goodbye, body: [3] + lengthPrefixed(mixed + "d")) == .goodbye(reason: .duplicateLink, detail: mixed + "d"))
        let detail256 = String(repeating: "d", count: 256)
        #expect(try LinkMessage.decode(type: .goodbye, body: [0] + lengthPrefixed(detail256)) == .goodbye(reason: .leaving, detail: detail256))
        let entries = (0..<WireProtocol.maxPeersPerMessage).map { PeerAddress(peerID: samplePeerID, host: "h\($0)", port: UInt16($0 + 1)) }
        let peers = LinkMessage.peers(entries)
        #expect(try decodeLinkStream(peers.encoded()) == [peers])
    }

    // MARK: Configuration

    @Test("maxFrameSize is validated", arguments: [0, -1, 1, 511, (64 << 20) + 1, Int.max, Int.min])
    func invalidMaxFrameSize(size: Int) {
        #expect(throws: WireError.invalidMaxFrameSize(size)) { _ = try MessageDecoder(maxFrameSize: size) }
        #expect(throws: WireError.invalidMaxFrameSize(size)) { _ = try LinkMessage.ping(nonce: 0, sentAt: 0).encoded(maxFrameSize: size) }
    }

    @Test("Valid maxFrameSize values", arguments: [512, 1 << 20, 64 << 20])
    func validMaxFrameSize(size: Int) throws {
        #expect(try MessageDecoder(maxFrameSize: size).maxFrameSize == size)
        #expect(try MessageDecoder().maxFrameSize == 1_048_576)
    }

    // MARK: Failure is sticky

    @Test("After an error the message decoder stays failed")
    func messageDecoderStaysFailed() throws {
        let ping = try LinkMessage.ping(nonce: 1, sentAt: 2).encoded()
        var decoder = try MessageDecoder()
        var delivered = 0
        let feed = { (decoder: inout MessageDecoder, bytes: [UInt8]) throws(WireError) in
            try feedInChunks(bytes, sizes: [bytes.count]) { (chunk) throws(WireError) in try decoder.feed(chunk) { _, _ in delivered += 1 } }
        }
        #expect(throws: WireError.emptyFrame) { try feed(&decoder, ping + [0, 0, 0, 0]) }
        #expect(delivered == 1)
        #expect(throws: WireError.emptyFrame) { try feed(&decoder, ping) }
        #expect(throws: WireError.emptyFrame) { try feed(&decoder, []) }
        #expect(throws: WireError.emptyFrame) { try decoder.finish() }
        #expect(decoder.failure == .emptyFrame)
        #expect(delivered == 1)

        // An error thrown by the callback sticks too, and the rest of the chunk is not delivered.
        var strict = try MessageDecoder()
        let refusal = WireError.malformed(field: "test", reason: "refused")
        #expect(throws: refusal) {
            try feedInChunks(ping + ping, sizes: [ping.count * 2]) { (chunk) throws(WireError) in
                try strict.feed(chunk) { (_, _) throws(WireError) in delivered += 1; throw refusal }
            }
        }
        #expect(delivered == 2)
        #expect(throws: refusal) {
            try feedInChunks(ping, sizes: [ping.count]) { (chunk) throws(WireError) in try strict.feed(chunk) { _, _ in delivered += 1 } }
        }
        #expect(delivered == 2)
    }

    @Test("After an error the record decoder stays failed")
    func recordDecoderStaysFailed() throws {
        var decoder = RecordDecoder()
        #expect(throws: WireError.emptyRecord) { try decoder.decodeAll([0, 1, 7, 0, 0]) }
        #expect(throws: WireError.emptyRecord) { try decoder.decodeAll([0, 1, 7]) }
        #expect(throws: WireError.emptyRecord) { try decoder.finish() }
        #expect(decoder.failure == .emptyRecord)
    }

    // MARK: End of stream

    @Test("finish() reports a message or record cut off by the end of the stream")
    func finishReportsTruncation() throws {
        let ping = try LinkMessage.ping(nonce: 1, sentAt: 2).encoded()
        let expectations: [(Int, WireError)] = [
            (1, .truncated(field: "message.length", needed: 4, available: 1)),
            (3, .truncated(field: "message.length", needed: 4, available: 3)),
            (4, .truncated(field: "message.type", needed: 1, available: 0)),
            (5, .truncated(field: "ping.body", needed: 16, available: 0)),
            (20, .truncated(field: "ping.body", needed: 16, available: 15)),
        ]
        for (cut, expected) in expectations {
            var decoder = try MessageDecoder()
            _ = try decoder.decodeAll(Array(ping.prefix(cut)))
            #expect(!decoder.isAtMessageBoundary)
            #expect(throws: expected) { try decoder.finish() }
            #expect(throws: expected) { try MessageDecoder.decodeAll(Array(ping.prefix(cut))) }
        }
        #expect(throws: WireError.truncated(field: "record.length", needed: 2, available: 1)) { try RecordDecoder.decodeAll([0]) }
        #expect(throws: WireError.truncated(field: "record.body", needed: 3, available: 1)) { try RecordDecoder.decodeAll([0, 3, 9]) }
    }

    // MARK: Memory bounds

    @Test("A 5-byte header declaring 1 MiB does not allocate 1 MiB")
    func headerDoesNotAllocate() throws {
        var decoder = try MessageDecoder()
        let header = be32(UInt32(WireProtocol.defaultMaxFrameSize)) + [MessageType.ping.rawValue]
        _ = try decoder.decodeAll(header)
        #expect(decoder.bufferedCapacity == 0)
        _ = try decoder.decodeAll([1, 2, 3])
        #expect(decoder.bufferedCapacity > 0 && decoder.bufferedCapacity <= 4096)

        // Growth follows what arrives: at most about four times the bytes received.
        var received = 3
        var rng = SplitMix64(seed: 7)
        while received < 300_000 {
            let chunk = rng.bytes(rng.int(1...4096))
            _ = try decoder.decodeAll(chunk)
            received += chunk.count
            #expect(decoder.bufferedCapacity <= 4 * received + 4096, "capacity \(decoder.bufferedCapacity) after \(received) bytes")
        }
        // …and never past the declared body, even when the rest arrives in one piece.
        let rest = WireProtocol.defaultMaxFrameSize - 1 - received
        let messages = try decoder.decodeAll([UInt8](repeating: 1, count: rest))
        #expect(messages.count == 1 && messages[0].body.count == WireProtocol.defaultMaxFrameSize - 1)
        // A body above the retained size keeps its buffer for the next large one, and frees it
        // once 16 messages in a row did without it.
        let kept = decoder.bufferedCapacity
        #expect(kept >= WireProtocol.defaultMaxFrameSize - 1)
        let ping = be32(1) + [MessageType.ping.rawValue]
        for _ in 0..<15 { _ = try decoder.decodeAll(ping) }
        #expect(decoder.bufferedCapacity == kept)
        _ = try decoder.decodeAll(ping)
        #expect(decoder.bufferedCapacity == 0)
        // A split body within the retained size keeps its buffer as before.
        _ = try decoder.decodeAll(be32(1001) + [MessageType.ping.rawValue] + [UInt8](repeating: 0, count: 500))
        _ = try decoder.decodeAll([UInt8](repeating: 0, count: 500))
        #expect(decoder.bufferedCapacity > 0 && decoder.bufferedCapacity <= 64 << 10)

        // Byte by byte, the header alone allocates nothing either.
        var slow = try MessageDecoder()
        for byte in header { _ = try slow.decodeAll([byte]) }
        #expect(slow.bufferedCapacity == 0)
        #expect(!slow.isAtMessageBoundary)

        // Records: a header declaring 65535 bytes plus one byte of body.
        var records = RecordDecoder()
        _ = try records.decodeAll([0xFF, 0xFF, 0x01])
        #expect(records.bufferedCapacity > 0 && records.bufferedCapacity <= 4096)
    }

    @Test("A split message's buffer stays within maxFrameSize")
    func bufferBoundedByLimit() throws {
        for limit in [512, 4096, 100_000] {
            var decoder = try MessageDecoder(maxFrameSize: limit)
            let stream = frame(0x04, [UInt8](repeating: 3, count: limit - 1))
            var delivered = 0
            var peak = 0
            try feedInChunks(stream, sizes: [6] + Array(repeating: 1, count: stream.count - 6)) { (chunk) throws(WireError) in
                try decoder.feed(chunk) { _, _ in delivered += 1 }
                peak = Swift.max(peak, decoder.bufferedCapacity)
            }
            #expect(delivered == 1)
            // malloc may round up a little; never to the next doubling.
            #expect(peak >= limit - 1 && peak <= limit + 64, "limit \(limit): peak capacity \(peak)")
        }
    }
}
