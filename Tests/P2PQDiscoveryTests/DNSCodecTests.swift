import Testing
import P2PQDiscovery

/// A message with every record type and repeated names, so compression has work to do.
func sampleMessage() -> DNSMessage {
    let service = DNSName("_p2pqueue._tcp.local")
    let instance = service.prepending("node-1")
    let host = DNSName("node-1.local")
    return DNSMessage(
        id: 0x1234, flags: DNSMessage.responseFlag | DNSMessage.authoritativeFlag,
        questions: [DNSQuestion(name: service, type: .ptr, unicastResponse: true)],
        answers: [
            DNSResourceRecord(name: service, data: .ptr(instance), ttl: 4500),
            DNSResourceRecord(name: instance, data: .srv(priority: 1, weight: 2, port: 7000, target: host), ttl: 120, cacheFlush: true),
            DNSResourceRecord(name: instance, data: .txt([Array("id=ab".utf8), Array("cluster=cd".utf8), []]), ttl: 4500),
        ],
        authorities: [DNSResourceRecord(name: host, data: .opaque(type: .nsec, bytes: [1, 2, 3]), ttl: 9)],
        additionals: [
            DNSResourceRecord(name: host, data: .a([127, 0, 0, 1]), ttl: 120, cacheFlush: true),
            DNSResourceRecord(name: host, data: .aaaa(Array(repeating: 0, count: 15) + [1]), ttl: 120),
        ]
    )
}

/// Builds packets by hand for the malformed cases.
func header(qd: UInt16 = 0, an: UInt16 = 0, ns: UInt16 = 0, ar: UInt16 = 0) -> [UInt8] {
    [0, 0, 0x84, 0] + [qd, an, ns, ar].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
}

func decodeError(_ packet: [UInt8]) -> DNSError? {
    switch Result(catching: { () throws(DNSError) in try DNSMessage.decode(packet) }) {
    case .success: return nil
    case .failure(let error): return error
    }
}

@Suite struct DNSCodecTests {
    @Test func roundTripWithAndWithoutCompression() throws {
        let message = sampleMessage()
        let compressed = try message.encoded()
        let plain = try message.encoded(compress: false)
        #expect(compressed.count < plain.count)
        #expect(try DNSMessage.decode(compressed) == message)
        #expect(try DNSMessage.decode(plain) == message)
        let decoded = try DNSMessage.decode(compressed)
        #expect(decoded.questions[0].unicastResponse)
        #expect(decoded.answers[1].cacheFlush && !decoded.answers[0].cacheFlush)
        #expect(decoded.isResponse && !decoded.isTruncated && decoded.opcode == 0)
    }

    /// The second occurrence of a name is a two-byte pointer to the first.
    @Test func compressionPointsBack() throws {
        let name = DNSName("a.example.local")
        let message = DNSMessage(questions: [DNSQuestion(name: name, type: .a), DNSQuestion(name: name.prepending("b"), type: .a)])
        let bytes = try message.encoded()
        // header 12, "a.example.local" 17 + 4, then "b" label (2) and a pointer to offset 12.
        #expect(bytes.count == 12 + 17 + 4 + 2 + 2 + 4)
        #expect(Array(bytes[35...36]) == [0xC0, 12])
        #expect(try DNSMessage.decode(bytes) == message)
    }

    @Test func namesCompareWithoutCase() throws {
        #expect(DNSName("Node.LOCAL") == DNSName("node.local"))
        #expect(Set([DNSName("Node.LOCAL"), DNSName("node.local")]).count == 1)
        #expect(DNSName("a.b").description == "a.b.")
        #expect(DNSName(labels: [Array("x.y".utf8)]).description == "x\\.y.")
    }

    @Test func encoderRejectsWhatCannotBeSent() {
        let long = DNSName(labels: [Array(repeating: 0x61, count: 64)])
        let tooLong = DNSName(labels: Array(repeating: Array(repeating: 0x61, count: 60), count: 5))
        let cases: [(DNSMessage, DNSError)] = [
            (DNSMessage(questions: [DNSQuestion(name: long, type: .a)]), .labelTooLong(offset: 12, length: 64)),
            (DNSMessage(questions: [DNSQuestion(name: tooLong, type: .a)]), .nameTooLong(offset: 12)),
        ]
        for (message, expected) in cases {
            let result = Result { () throws(DNSError) in try message.encoded() }
            #expect(result.failure == expected)
        }
        let badTXT = DNSMessage(answers: [DNSResourceRecord(name: DNSName("a"), data: .txt([Array(repeating: 0, count: 256)]), ttl: 1)])
        #expect(Result { () throws(DNSError) in try badTXT.encoded() }.failure != nil)
        let badA = DNSMessage(answers: [DNSResourceRecord(name: DNSName("a"), data: .a([1, 2, 3]), ttl: 1)])
        #expect(Result { () throws(DNSError) in try badA.encoded() }.failure != nil)
    }

    /// Every way a packet can be malformed, with the precise error.
    @Test func malformedPacketsAreRejected() {
        let name = [UInt8(1), 0x61, 0]                       // "a."
        let q = name + [0, 1, 0, 1]                          // a. A IN
        let rrFixed = name + [0, 1, 0, 1, 0, 0, 0, 9]        // a. A IN ttl 9
        let cases: [(String, [UInt8], DNSError)] = [
            ("empty", [], .truncatedHeader(length: 0)),
            ("short header", [0, 0, 0, 0, 0], .truncatedHeader(length: 5)),
            ("counts beyond the packet", header(an: 0xFFFF), .tooManyRecords(declared: 0xFFFF, packetSize: 12)),
            ("one question, no bytes", header(qd: 1) + [0, 0, 1, 0], .tooManyRecords(declared: 1, packetSize: 16)),
            ("name runs off the end", header(qd: 1) + [5, 0x61, 0x62, 0, 0, 0], .truncatedName(offset: 12)),
            ("label of 64", header(qd: 1) + [0x40] + Array(repeating: 0x61, count: 70), .labelTooLong(offset: 12, length: 64)),
            ("label type 0x80", header(qd: 1) + [0x80, 0, 0, 0, 0, 0], .labelTooLong(offset: 12, length: 0x80)),
            ("name over 255 bytes", header(qd: 1) + Array(repeating: [63] + Array(repeating: UInt8(0x61), count: 63), count: 5).flatMap { $0 } + [0, 0, 1, 0, 1],
             .nameTooLong(offset: 12)),
            ("self pointer", header(qd: 1) + [0xC0, 12, 0, 1, 0, 1], .forwardPointer(offset: 12, target: 12)),
            ("forward pointer", header(qd: 1) + [0xC0, 14, 0, 1, 0, 1, 0], .forwardPointer(offset: 12, target: 14)),
            ("pointer loop", header(qd: 2) + q + [1, 0x62, 0xC0, 19, 0, 1, 0, 1], .pointerLoop(offset: 21, target: 19)),
            ("two-name loop", header(qd: 1) + [1, 0x61, 0xC0, 15, 1, 0x62, 0xC0, 12, 0, 1, 0, 1], .forwardPointer(offset: 14, target: 15)),
            ("pointer cut in half", header(qd: 1) + q + [0, 0xC0], .trailingBytes(offset: 19)),
            ("question without type", header(qd: 1) + name + [0, 1, 0], .truncatedQuestion(offset: 12)),
            ("record without fixed part", header(an: 1) + name + [0, 1, 0, 1, 0, 0, 0, 9], .truncatedRecord(offset: 12)),
            ("rdata past the end", header(an: 1) + rrFixed + [0, 4, 127, 0], .truncatedRecordData(offset: 25, length: 4)),
            ("A of 3 bytes", header(an: 1) + rrFixed + [0, 3, 127, 0, 1], .malformedRecordData(type: .a, offset: 25)),
            ("AAAA of 4 bytes", header(an: 1) + name + [0, 28, 0, 1, 0, 0, 0, 9, 0, 4, 0, 0, 0, 1],
             .malformedRecordData(type: .aaaa, offset: 25)),
            ("PTR name past rdata", header(an: 1) + name + [0, 12, 0, 1, 0, 0, 0, 9, 0, 2, 1, 0x62, 0],
             .malformedRecordData(type: .ptr, offset: 25)),
            ("PTR empty", header(an: 1) + name + [0, 12, 0, 1, 0, 0, 0, 9, 0, 0], .malformedRecordData(type: .ptr, offset: 25)),
            ("SRV too short", header(an: 1) + name + [0, 33, 0, 1, 0, 0, 0, 9, 0, 6, 0, 0, 0, 0, 0, 1],
             .malformedRecordData(type: .srv, offset: 25)),
            ("TXT string overruns", header(an: 1) + name + [0, 16, 0, 1, 0, 0, 0, 9, 0, 2, 5, 0x61],
             .malformedRecordData(type: .txt, offset: 25)),
            ("trailing bytes", header(qd: 1) + q + [0], .trailingBytes(offset: 19)),
        ]
        for (what, packet, expected) in cases {
            #expect(decodeError(packet) == expected, "\(what)")
        }
    }

    /// A pointer chain that goes strictly back is fine, however long.
    @Test func backwardChainsDecode() throws {
        var message = DNSMessage()
        var name = DNSName("local")
        for i in 0..<20 {
            name = name.prepending("l\(i)")
            message.questions.append(DNSQuestion(name: name, type: .a))
        }
        #expect(try DNSMessage.decode(try message.encoded()) == message)
    }

    /// Truncating a valid packet anywhere gives an error, not a crash.
    @Test func everyTruncationFails() throws {
        let bytes = try sampleMessage().encoded()
        for length in 0..<bytes.count {
            #expect(decodeError(Array(bytes[0..<length])) != nil, "length \(length)")
        }
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
