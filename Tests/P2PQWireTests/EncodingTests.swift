import Testing
@testable import P2PQWire

@Suite("Encoding primitives and exact bytes")
struct EncodingTests {
    @Test("WireWriter writes big-endian integers, IEEE doubles, length-prefixed strings")
    func writerBytes() {
        var bytes: [UInt8] = [0xAA]  // existing content is kept
        bytes.withWireWriter { writer in
            writer.writeU8(0x01)
            writer.writeU16(0x0203)
            writer.writeU32(0x0405_0607)
            writer.writeU64(0x0809_0A0B_0C0D_0E0F)
            writer.writeFloat64(1.0)
            writer.writeByteString([0xBE, 0xEF])
            writer.writeString("é")
            writer.writeRaw([0x10, 0x11])
        }
        #expect(hexString(bytes) == "aa" + "01" + "0203" + "04050607" + "08090a0b0c0d0e0f" + "3ff0000000000000" + "00000002beef" + "00000002c3a9" + "1011")
    }

    @Test("WireReader reads back what WireWriter wrote, NaN payloads included")
    func readerRoundTrip() throws {
        let nan = Double(bitPattern: 0x7FF8_0000_DEAD_BEEF)
        var bytes: [UInt8] = []
        bytes.withWireWriter { writer in
            writer.writeU8(0xFE)
            writer.writeU16(0xFFFE)
            writer.writeU32(0xFFFF_FFFE)
            writer.writeU64(.max - 1)
            writer.writeFloat64(nan)
            writer.writeFloat64(-0.0)
            writer.writeByteString([])
            writer.writeString("日本😀")
        }
        try bytes.withUnsafeBytes { raw in
            var reader = WireReader(raw)
            #expect(try reader.readU8(field: "a") == 0xFE)
            #expect(try reader.readU16(field: "b") == 0xFFFE)
            #expect(try reader.readU32(field: "c") == 0xFFFF_FFFE)
            #expect(try reader.readU64(field: "d") == .max - 1)
            #expect(try reader.readFloat64(field: "e").bitPattern == nan.bitPattern)
            #expect(try reader.readFloat64(field: "f").bitPattern == (-0.0).bitPattern)
            #expect(try reader.readByteString(field: "g", maxLength: 0).count == 0)
            #expect(try reader.readString(field: "h", maxLength: 10) == "日本😀")
            #expect(reader.remaining == 0)
            try reader.finish(type: .ping)
        }
    }

    @Test("Every WireReader read names its field when short")
    func readerTruncation() throws {
        try [UInt8](repeating: 0, count: 3).withUnsafeBytes { raw in
            var reader = WireReader(raw)
            #expect(throws: WireError.truncated(field: "x", needed: 4, available: 3)) { try reader.readU32(field: "x") }
            #expect(throws: WireError.truncated(field: "y", needed: 8, available: 3)) { try reader.readU64(field: "y") }
            #expect(throws: WireError.truncated(field: "y", needed: 8, available: 3)) { try reader.readFloat64(field: "y") }
            #expect(throws: WireError.truncated(field: "z.length", needed: 4, available: 3)) { try reader.readByteString(field: "z", maxLength: 9) }
            #expect(throws: WireError.truncated(field: "id", needed: 32, available: 3)) { try reader.readPeerID(field: "id") }
            #expect(reader.remaining == 3)  // failed reads consume nothing
            _ = try reader.readU16(field: "w")
            #expect(throws: WireError.truncated(field: "v", needed: 2, available: 1)) { try reader.readU16(field: "v") }
            #expect(throws: WireError.trailingBytes(type: .hello, count: 1)) { try reader.finish(type: .hello) }
            _ = try reader.readU8(field: "u")
            #expect(throws: WireError.truncated(field: "t", needed: 1, available: 0)) { try reader.readU8(field: "t") }
        }
        (be32(5) + [1, 2]).withUnsafeBytes { raw in
            var reader = WireReader(raw)
            #expect(throws: WireError.truncated(field: "s", needed: 5, available: 2)) { try reader.readString(field: "s", maxLength: 10) }
        }
    }

    /// The two examples printed in docs/protocol-framing.md; if this fails, fix the doc too.
    static let docPing = LinkMessage.ping(nonce: 0x0102_0304_0506_0708, sentAt: 0x0000_0001_2A05_F200)
    static let docPingHex = "00000011" + "02" + "0102030405060708" + "000000012a05f200"
    static let docHello = LinkMessage.hello(Hello(
        protocolVersion: 1, peerID: samplePeerID, listenPort: 7946, listenHost: "10.0.0.7",
        incarnation: 1_700_000_000, features: 0
    ))
    static let docHelloHex = "00000041" + "01" + "0001"
        + "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        + "1f0a" + "00000008" + "31302e302e302e37" + "000000006553f100" + "0000000000000000"

    @Test("The hex examples in the protocol doc")
    func docExamples() throws {
        #expect(hexString(try Self.docPing.encoded()) == Self.docPingHex)
        #expect(hexString(try Self.docHello.encoded()) == Self.docHelloHex)
        #expect(try decodeLinkStream(Self.docPing.encoded() + Self.docHello.encoded()) == [Self.docPing, Self.docHello])
    }

    @Test("Every message type's body, byte by byte, from an independent hand encoding")
    func handEncodings() throws {
        let goodbye = LinkMessage.goodbye(reason: .duplicateLink, detail: "dup")
        #expect(try goodbye.encoded() == frame(0x04, [3] + lengthPrefixed("dup")))
        #expect(try LinkMessage.pong(nonce: 5, sentAt: 6).encoded() == frame(0x03, be64(5) + be64(6)))
        let peers = LinkMessage.peers([PeerAddress(peerID: otherPeerID, host: "::1", port: 443)])
        #expect(try peers.encoded() == frame(0x05, be16(1) + otherPeerID.bytes + lengthPrefixed("::1") + be16(443)))
        #expect(try LinkMessage.peers([]).encoded() == frame(0x05, be16(0)))
        let hello = LinkMessage.hello(Hello(peerID: samplePeerID, listenPort: 0, listenHost: "", incarnation: .max, features: 1 << 63))
        #expect(try hello.encoded() == frame(0x01, be16(2) + samplePeerID.bytes + be16(0) + lengthPrefixed("") + be64(.max) + be64(1 << 63)))
    }

    @Test("Encoding refuses what the receiver would reject")
    func encoderValidation() throws {
        let longHost = String(repeating: "a", count: 256)
        #expect(throws: WireError.malformed(field: "hello.listenHost", reason: "length 256 exceeds the limit of 255 bytes")) {
            try LinkMessage.hello(Hello(peerID: samplePeerID, listenPort: 1, listenHost: longHost, incarnation: 0)).encoded()
        }
        #expect(throws: WireError.malformed(field: "goodbye.detail", reason: "length 257 exceeds the limit of 256 bytes")) {
            try LinkMessage.goodbye(reason: .leaving, detail: String(repeating: "é", count: 128) + "x").encoded()
        }
        let entry = PeerAddress(peerID: samplePeerID, host: "h", port: 1)
        #expect(throws: WireError.malformed(field: "peers.count", reason: "1025 exceeds the limit of 1024")) {
            try LinkMessage.peers(Array(repeating: entry, count: 1025)).encoded()
        }
        #expect(throws: WireError.malformed(field: "peers[1].host", reason: "empty")) {
            try LinkMessage.peers([entry, PeerAddress(peerID: samplePeerID, host: "", port: 1)]).encoded()
        }
        #expect(throws: WireError.malformed(field: "peers[0].port", reason: "port 0")) {
            try LinkMessage.peers([PeerAddress(peerID: samplePeerID, host: "h", port: 0)]).encoded()
        }
        #expect(throws: WireError.malformed(field: "peers[0].host", reason: "length 256 exceeds the limit of 255 bytes")) {
            try LinkMessage.peers([PeerAddress(peerID: samplePeerID, host: longHost, port: 1)]).encoded()
        }
        // Largest peers message: 2 + 1024 × (32 + 4 + 255 + 2) = 300034 body bytes, L = 300035.
        let big = LinkMessage.peers(Array(repeating: PeerAddress(peerID: samplePeerID, host: String(repeating: "p", count: 255), port: 1), count: 1024))
        #expect(throws: WireError.frameTooLarge(length: 300_035, limit: 4096)) { try big.encoded(maxFrameSize: 4096) }
        #expect(try big.encoded().count == 300_039)

        // Nothing is written when encoding fails.
        var bytes: [UInt8] = [9]
        #expect(throws: WireError.self) { try LinkMessage.peers([PeerAddress(peerID: samplePeerID, host: "", port: 1)]).encode(into: &bytes) }
        #expect(bytes == [9])
        // Nor when the frame turns out too large (it is measured as it is written).
        #expect(throws: WireError.frameTooLarge(length: 300_035, limit: 4096)) { try big.encode(into: &bytes, maxFrameSize: 4096) }
        #expect(bytes == [9])
        try big.encode(into: &bytes)
        #expect(bytes.count == 1 + 300_039 && bytes[0] == 9)
        #expect(Array(bytes[1..<5]) == [0x00, 0x04, 0x94, 0x03])  // L = 300035, big-endian
    }

    @Test("Encoding into a raw buffer: exact size, and a too-small buffer is refused untouched")
    func rawBufferEncoding() throws {
        let message = LinkMessage.goodbye(reason: .shuttingDown, detail: "bye")
        let size = try MessageEncoder.encodedSize(of: message)
        #expect(size == 5 + 1 + 4 + 3)
        var buffer = [UInt8](repeating: 0xEE, count: size - 1)
        #expect(throws: WireError.bufferTooSmall(required: size, available: size - 1)) {
            _ = try buffer.withUnsafeMutableBytes { raw in try MessageEncoder.encode(message, into: raw) }
        }
        #expect(buffer.allSatisfy { $0 == 0xEE })

        // A plain WireWriter over an UnsafeWireBuffer, as a reactor write(reservingCapacity:) would use.
        var exact = [UInt8](repeating: 0, count: size)
        let written = exact.withUnsafeMutableBytes { raw in
            var writer = WireWriter(output: UnsafeWireBuffer(raw))
            MessageEncoder.write(message, into: &writer)
            return writer.output.count
        }
        #expect(written == size)
        #expect(exact == (try message.encoded()))
    }

    @Test("Bytes written in place land after what the output held, on every kind of output", arguments: [0, 1, 100, 16 * 1024, 40_000])
    func writeInPlace(count: Int) throws {
        let expected = [UInt8](repeating: 0xAB, count: 3) + (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        func fill(_ raw: UnsafeMutableRawBufferPointer) {
            #expect(raw.count == count)
            for index in 0..<raw.count { raw[index] = UInt8(truncatingIfNeeded: index &* 7) }
        }
        // [UInt8] (grows, fills from its block of zeros in 16 KiB chunks).
        var array: [UInt8] = [0xAB, 0xAB, 0xAB]
        array.withWireWriter { writer in writer.writeInPlace(count: count, fill) }
        #expect(array == expected)
        // A fixed buffer, written straight into.
        var fixed = [UInt8](repeating: 0xAB, count: 3 + count)
        let written = fixed.withUnsafeMutableBytes { raw in
            var writer = WireWriter(output: UnsafeWireBuffer(raw))
            writer.writeRaw([0xAB, 0xAB, 0xAB])
            writer.writeInPlace(count: count, fill)
            return writer.output.count
        }
        #expect(written == 3 + count)
        #expect(fixed == expected)
        // An output with only the required append: the protocol's default goes through a copy.
        struct Sink: WireOutput {
            var bytes: [UInt8] = []
            mutating func appendWireBytes(_ raw: UnsafeRawBufferPointer) { bytes.append(contentsOf: raw) }
        }
        var writer = WireWriter(output: Sink(bytes: [0xAB, 0xAB, 0xAB]))
        writer.writeInPlace(count: count, fill)
        #expect(writer.output.bytes == expected)
    }

    @Test("Raw message encoding and the frame size limit")
    func rawMessages() throws {
        var bytes: [UInt8] = []
        try [UInt8]().withUnsafeBytes { raw in try MessageEncoder.encode(type: .ping, body: raw, into: &bytes) }
        #expect(bytes == [0, 0, 0, 1, 2])
        #expect(try MessageDecoder.decodeAll(bytes) == [RawMessage(type: .ping, body: [])])
        #expect(try MessageEncoder.frameSize(bodySize: 511, maxFrameSize: 512) == 516)
        #expect(throws: WireError.frameTooLarge(length: 513, limit: 512)) { try MessageEncoder.frameSize(bodySize: 512, maxFrameSize: 512) }
    }

    @Test("RecordEncoder: 1...65535 byte bodies")
    func recordEncoder() throws {
        var bytes: [UInt8] = []
        try RecordEncoder.encode(body: [0x41], into: &bytes)
        #expect(bytes == [0, 1, 0x41])
        #expect(throws: WireError.emptyRecord) { try RecordEncoder.encode(body: [], into: &bytes) }
        #expect(throws: WireError.recordTooLarge(length: 65_536)) { try RecordEncoder.encode(body: [UInt8](repeating: 0, count: 65_536), into: &bytes) }
        try RecordEncoder.encode(body: [UInt8](repeating: 7, count: 65_535), into: &bytes)
        #expect(bytes.count == 3 + 2 + 65_535)
        #expect(Array(bytes[3..<5]) == [0xFF, 0xFF])
        let stream = [UInt8](1...10)
        var records: [UInt8] = []
        try stream.withUnsafeBytes { raw in try RecordEncoder.encodeRecords(carrying: raw, maxBodySize: 4, into: &records) }
        #expect(try RecordDecoder.decodeAll(records) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]])
        #expect(throws: WireError.emptyRecord) {
            try stream.withUnsafeBytes { raw in try RecordEncoder.encodeRecords(carrying: raw, maxBodySize: 0, into: &records) }
        }
    }

    @Test("Message type ranges")
    func typeRanges() {
        let expected: [(UInt8, MessageFamily)] = [
            (0x00, .unassigned), (0x01, .link), (0x0F, .link), (0x10, .membership), (0x1F, .membership),
            (0x20, .queue), (0x3F, .queue), (0x40, .remoteCall), (0x5F, .remoteCall), (0x60, .unassigned),
            (0xEF, .unassigned), (0xF0, .experimental), (0xFF, .experimental),
        ]
        for (raw, family) in expected { #expect(MessageType.family(of: raw) == family, "0x\(String(raw, radix: 16))") }
        for type in MessageType.allCases where type.rawValue < 0x10 {
            #expect(MessageType.family(of: type.rawValue) == .link)
        }
        #expect(MessageType.family(of: MessageType.benchmark.rawValue) == .experimental)
    }

    @Test("PeerID keeps its 32 bytes")
    func peerID() {
        let bytes = (0..<32).map { UInt8(255 - $0) }
        let id = PeerID(bytes: bytes)!
        #expect(id.bytes == bytes)
        #expect(id.description == hexString(bytes))
        #expect(PeerID(bytes: bytes.dropLast()) == nil)
        #expect(PeerID(bytes: bytes + [0]) == nil)
        #expect(samplePeerID < id)
        #expect(Set([id, PeerID(bytes: bytes)!, samplePeerID]).count == 2)
    }

    @Test("Error descriptions say what was wrong")
    func descriptions() {
        #expect(WireError.frameTooLarge(length: 1_048_577, limit: 1_048_576).description == "frame too large: declared 1048577 bytes, limit is 1048576")
        #expect(WireError.unknownMessageType(0x1F).description == "unknown message type 0x1f")
        #expect(WireError.truncated(field: "hello.peerID", needed: 32, available: 3).description == "truncated hello.peerID: needed 32 bytes, 3 available")
        #expect(WireError.trailingBytes(type: .goodbye, count: 2).description == "2 trailing bytes after a goodbye message")
        #expect(WireError.unsupportedVersion(received: 2, supported: 1...1).description == "unsupported protocol version 2: this side speaks 1...1")
        #expect(WireError.invalidMaxFrameSize(0).description == "invalid max frame size 0: must be in 512...67108864")
    }
}

@Suite("The operations address message (0x06, hello feature bit 2)")
struct OperationsMessageTests {
    @Test("Encoded as host string then port; decoded back; port 0, an overlong host and trailing bytes refused")
    func operationsMessage() throws {
        let message = LinkMessage.operations(host: "10.0.0.7", port: 9100)
        let bytes = try message.encoded()
        #expect(bytes == frame(0x06, lengthPrefixed("10.0.0.7") + be16(9100)))
        let decoded = try Array(bytes.dropFirst(5)).withUnsafeBytes { try LinkMessage.decode(type: .operations, body: $0) }
        #expect(decoded == message)
        let empty = try Array(LinkMessage.operations(host: "", port: 1).encoded().dropFirst(5))
            .withUnsafeBytes { try LinkMessage.decode(type: .operations, body: $0) }
        #expect(empty == .operations(host: "", port: 1))
        #expect(throws: WireError.self) {
            try (lengthPrefixed("h") + be16(0)).withUnsafeBytes { try LinkMessage.decode(type: .operations, body: $0) }
        }
        #expect(throws: WireError.self) {
            try (lengthPrefixed("h") + be16(1) + [0]).withUnsafeBytes { try LinkMessage.decode(type: .operations, body: $0) }
        }
        #expect(throws: WireError.self) { try LinkMessage.operations(host: String(repeating: "a", count: 256), port: 1).encoded() }
        #expect(throws: WireError.self) { try LinkMessage.operations(host: "h", port: 0).encoded() }
        #expect(WireProtocol.featureOperationsAddress == 4)
    }
}
