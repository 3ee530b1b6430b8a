import Foundation
import P2PQLink
import P2PQNoise
import P2PQWire
import Testing

/// Encodes one message as the wire does: u32 length (type + body), type, body.
func frame(_ type: MessageType, _ body: [UInt8]) -> [UInt8] {
    let length = UInt32(body.count + 1)
    return [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type.rawValue] + body
}

/// Two link ends wired back to back through byte arrays.
struct Pair {
    var initiator: LinkSession
    var responder: LinkSession
    var initiatorEvents: [String] = []
    var responderEvents: [String] = []
    var initiatorMessages: [[UInt8]] = []
    var responderMessages: [[UInt8]] = []

    init(initiatorSecurity: LinkSecurity, responderSecurity: LinkSecurity,
         initiatorIdentity: NodeIdentity = .generate(), responderIdentity: NodeIdentity = .generate(),
         rekeyInterval: UInt64 = LinkSession.defaultRekeyInterval, maxFrameSize: Int = 1 << 20,
         initiatorCipher: LinkCipherChoice = .automatic(aesInstructions: false),
         responderCipher: LinkCipherChoice = .automatic(aesInstructions: false),
         initiatorVersions: ClosedRange<UInt16> = WireProtocol.supportedVersions,
         responderVersions: ClosedRange<UInt16> = WireProtocol.supportedVersions) throws {
        initiator = try LinkSession(role: .initiator, security: initiatorSecurity, identity: initiatorIdentity,
                                    maxFrameSize: maxFrameSize, rekeyInterval: rekeyInterval, cipher: initiatorCipher,
                                    versions: initiatorVersions)
        responder = try LinkSession(role: .responder, security: responderSecurity, identity: responderIdentity,
                                    maxFrameSize: maxFrameSize, rekeyInterval: rekeyInterval, cipher: responderCipher,
                                    versions: responderVersions)
    }

    /// Delivers `bytes` to one side in random chunks; returns what that side wrote back.
    mutating func deliver(_ bytes: [UInt8], toResponder: Bool, rng: inout SplitMix64) throws -> [UInt8] {
        var output = ByteArrayOutput()
        var offset = 0
        var events: [(String?, [UInt8]?)] = []
        defer {
            for (text, message) in events {
                if let text { if toResponder { responderEvents.append(text) } else { initiatorEvents.append(text) } }
                if let message { if toResponder { responderMessages.append(message) } else { initiatorMessages.append(message) } }
            }
        }
        var session = toResponder ? responder : initiator
        defer { if toResponder { responder = session } else { initiator = session } }
        while offset < bytes.count {
            let n = min(bytes.count - offset, Int(rng.next() % 700) + 1)
            try bytes[offset..<(offset + n)].withUnsafeBytes { chunk in
                try session.receive(chunk, output: &output) { event in events.append(Self.describe(event)) }
            }
            offset += n
        }
        return output.bytes
    }

    static func describe(_ event: LinkEvent) -> (String?, [UInt8]?) {
        switch event {
        case .established(let remote, let version): return ("established \(remote) v\(version)", nil)
        case .message(let type, let body): return (nil, [type.rawValue] + Array(body))
        }
    }

    /// Runs the handshake to completion, passing each side's bytes through `rewrite` (a
    /// man in the middle: `toResponder`, bytes) on the way.
    mutating func handshake(rng: inout SplitMix64, rewrite: (Bool, [UInt8]) -> [UInt8] = { $1 }) throws {
        var first = ByteArrayOutput()
        try initiator.start(output: &first)
        var bytes = first.bytes
        var toResponder = true
        // Version 1: three messages; version 2: five records in four flights.
        for _ in 0..<6 where !bytes.isEmpty {
            bytes = try deliver(rewrite(toResponder, bytes), toResponder: toResponder, rng: &rng)
            toResponder.toggle()
        }
        precondition(bytes.isEmpty, "the handshake did not end")
        precondition(initiator.phase == .established && responder.phase == .established, "the handshake did not finish")
    }
}

@Suite("Link sessions")
struct LinkSessionTests {
    let key = ClusterKey.generate()

    @Test("XXpsk0 handshake authenticates both PeerIDs", arguments: [1, 2, 3])
    func handshake(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let a = NodeIdentity.generate(), b = NodeIdentity.generate()
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorIdentity: a, responderIdentity: b)
        try pair.handshake(rng: &rng)
        #expect(pair.initiator.phase == .established)
        #expect(pair.responder.phase == .established)
        #expect(pair.initiator.remotePeerID == b.peerID)
        #expect(pair.responder.remotePeerID == a.peerID)
        #expect(pair.initiatorEvents == ["established \(b.peerID) v2"])
        #expect(pair.responderEvents == ["established \(a.peerID) v2"])
    }

    @Test("Messages survive sealing, random chunking and rekeying", arguments: [false, true])
    func messagesRoundTrip(secure: Bool) throws {
        let security: LinkSecurity = secure ? .noise(key) : .insecure
        let index = secure ? 1 : 0
        var rng = SplitMix64(seed: 42 + UInt64(index))
        // A rekey every 3 records, so a long exchange crosses many rekeys.
        var pair = try Pair(initiatorSecurity: security, responderSecurity: security, rekeyInterval: 3)
        try pair.handshake(rng: &rng)
        var expected: [[UInt8]] = []
        var stream: [UInt8] = []
        for i in 0..<400 {
            let size = i % 50 == 0 ? Int(rng.next() % 200_000) : Int(rng.next() % 300)
            let body = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            stream += frame(.ping, body)
            expected.append([MessageType.ping.rawValue] + body)
        }
        var sealed = ByteArrayOutput()
        // Seal in uneven batches, as turns would.
        var offset = 0
        while offset < stream.count {
            let n = min(stream.count - offset, Int(rng.next() % 90_000) + 1)
            try stream[offset..<(offset + n)].withUnsafeBytes { batch in
                try pair.initiator.seal(batch, into: &sealed)
            }
            offset += n
        }
        _ = try pair.deliver(sealed.bytes, toResponder: true, rng: &rng)
        #expect(pair.responderMessages == expected)
        #expect(pair.initiator.recordsSent == pair.responder.recordsReceived)
        #expect(pair.initiator.recordsSent > 9, "the exchange should cross several rekeys")
    }

    @Test("A long batch is sealed into full records of exactly 64 KiB on the wire, then the rest")
    func fullRecords() throws {
        var rng = SplitMix64(seed: 7)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key))
        try pair.handshake(rng: &rng)
        let stream = frame(.ping, [UInt8](repeating: 1, count: 200_000))
        var sealed = ByteArrayOutput()
        try stream.withUnsafeBytes { try pair.initiator.seal($0, into: &sealed) }
        var lengths: [Int] = []
        var offset = 0
        while offset < sealed.bytes.count {
            let length = Int(sealed.bytes[offset]) << 8 | Int(sealed.bytes[offset + 1])
            lengths.append(2 + length)
            offset += 2 + length
        }
        let full = LinkSession.defaultRecordPlaintextSize
        #expect(full + CipherState.tagLength + 2 == 64 * 1024)
        #expect(lengths.dropLast().allSatisfy { $0 == 64 * 1024 }, "\(lengths)")
        #expect(lengths.count == (stream.count + full - 1) / full)
        _ = try pair.deliver(sealed.bytes, toResponder: true, rng: &rng)
        #expect(pair.responderMessages == [[MessageType.ping.rawValue] + [UInt8](repeating: 1, count: 200_000)])
    }

    /// The responder refuses the initiator's first message as `.wrongClusterKey` and reports
    /// nothing above the link.
    func expectRefusedAtFirstMessage(_ pair: inout Pair, seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var first = ByteArrayOutput()
        try pair.initiator.start(output: &first)
        #expect(throws: LinkError.wrongClusterKey) {
            _ = try pair.deliver(first.bytes, toResponder: true, rng: &rng)
        }
        #expect(pair.responder.phase == .failed)
        #expect(pair.responderEvents.isEmpty)
    }

    @Test("A peer without the cluster key is refused at the first message")
    func wrongKey() throws {
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(.generate()))
        try expectRefusedAtFirstMessage(&pair, seed: 7)
    }

    @Test("Either cipher: handshake, then messages both ways across rekeys", arguments: LinkCipher.allCases)
    func cipherRoundTrip(cipher: LinkCipher) throws {
        var rng = SplitMix64(seed: 11)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key), rekeyInterval: 2,
                            initiatorCipher: .forced(cipher), responderCipher: .forced(cipher))
        try pair.handshake(rng: &rng)
        #expect(pair.initiator.phase == .established && pair.responder.phase == .established)
        #expect(pair.initiator.cipher == cipher && pair.responder.cipher == cipher)
        let bodies = (0..<20).map { i in [UInt8](repeating: UInt8(i), count: 1 + i * 3_000) }
        var toResponder = ByteArrayOutput()
        var toInitiator = ByteArrayOutput()
        for body in bodies {
            try frame(.ping, body).withUnsafeBytes { try pair.initiator.seal($0, into: &toResponder) }
            try frame(.pong, body).withUnsafeBytes { try pair.responder.seal($0, into: &toInitiator) }
        }
        _ = try pair.deliver(toResponder.bytes, toResponder: true, rng: &rng)
        _ = try pair.deliver(toInitiator.bytes, toResponder: false, rng: &rng)
        #expect(pair.responderMessages == bodies.map { [MessageType.ping.rawValue] + $0 })
        #expect(pair.initiatorMessages == bodies.map { [MessageType.pong.rawValue] + $0 })
    }

    @Test("Version 1 ends with different link ciphers are refused at the first message, with a reason that names the cipher")
    func cipherMismatch() throws {
        for (mine, theirs) in [(LinkCipher.chaChaPoly, LinkCipher.aesGCM), (.aesGCM, .chaChaPoly)] {
            var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                                initiatorCipher: .forced(mine), responderCipher: .forced(theirs),
                                initiatorVersions: 1...1, responderVersions: 1...1)
            try expectRefusedAtFirstMessage(&pair, seed: 13)
        }
        #expect(LinkError.wrongClusterKey.description.contains("link cipher"))
    }

    @Test("Insecure and secure ends do not connect")
    func securityMismatch() throws {
        var rng = SplitMix64(seed: 9)
        var pair = try Pair(initiatorSecurity: .insecure, responderSecurity: .noise(key))
        var first = ByteArrayOutput()
        try pair.initiator.start(output: &first)
        #expect(throws: LinkError.self) { _ = try pair.deliver(first.bytes, toResponder: true, rng: &rng) }
        #expect(pair.responder.phase == .failed)

        var reverse = try Pair(initiatorSecurity: .noise(key), responderSecurity: .insecure)
        var hello = ByteArrayOutput()
        try reverse.initiator.start(output: &hello)
        do {
            _ = try reverse.deliver(hello.bytes, toResponder: true, rng: &rng)
            Issue.record("an insecure responder accepted a Noise handshake")
        } catch let error as LinkError {
            guard case .notAP2PQPeer = error else {
                Issue.record("unexpected error \(error)")
                return
            }
        }
    }

    @Test("A tampered transport record is rejected")
    func tampering() throws {
        var rng = SplitMix64(seed: 11)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key))
        try pair.handshake(rng: &rng)
        var sealed = ByteArrayOutput()
        try frame(.ping, Array(repeating: 7, count: 100)).withUnsafeBytes { m in
            try pair.initiator.seal(m, into: &sealed)
        }
        var bytes = sealed.bytes
        bytes[bytes.count - 20] ^= 0x01
        #expect(throws: LinkError.recordAuthenticationFailed) {
            _ = try pair.deliver(bytes, toResponder: true, rng: &rng)
        }
        #expect(pair.responderMessages.isEmpty)
    }

    @Test("Garbage instead of a handshake is refused", arguments: [
        [0x00, 0x10] + [UInt8](repeating: 0x41, count: 16),          // a record too short for Noise
        [0x00, 0x40] + (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37) }, // random-looking bytes
        [0x00, 0x00, 0x01],                                           // an empty record
    ])
    func garbage(bytes: [UInt8]) throws {
        var rng = SplitMix64(seed: 13)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key))
        #expect(throws: LinkError.self) { _ = try pair.deliver(bytes, toResponder: true, rng: &rng) }
        #expect(pair.responder.phase == .failed)
    }

    @Test("An incomplete record is held, not refused (the node's handshake timeout ends it)")
    func incompleteRecord() throws {
        var rng = SplitMix64(seed: 15)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key))
        let reply = try pair.deliver(Array("GET / HTTP/1.1\r\n".utf8), toResponder: true, rng: &rng)
        #expect(reply.isEmpty)
        #expect(pair.responder.phase == .handshaking)
    }

    @Test("An oversized message closes the link with a framing error")
    func oversized() throws {
        var rng = SplitMix64(seed: 17)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key), maxFrameSize: 4096)
        try pair.handshake(rng: &rng)
        var sealed = ByteArrayOutput()
        try frame(.ping, Array(repeating: 1, count: 5000)).withUnsafeBytes { m in
            try pair.initiator.seal(m, into: &sealed)
        }
        do {
            _ = try pair.deliver(sealed.bytes, toResponder: true, rng: &rng)
            Issue.record("an oversized message was accepted")
        } catch let error as LinkError {
            guard case .framing(.frameTooLarge) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
        }
    }

    @Test("Sealing before the handshake fails")
    func sealTooEarly() throws {
        var session = try LinkSession(role: .initiator, security: .noise(key), identity: .generate())
        var out = ByteArrayOutput()
        #expect(throws: LinkError.notEstablished) {
            try [UInt8](repeating: 0, count: 8).withUnsafeBytes { m in try session.seal(m, into: &out) }
        }
    }
}

@Suite("Identity and keys")
struct IdentityTests {
    func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    @Test("Identity files round-trip, are private, and are never overwritten")
    func identityFile() throws {
        let path = temporaryPath("identity")
        let created = try NodeIdentity.loadOrCreate(path: path)
        let loaded = try NodeIdentity.loadOrCreate(path: path)
        #expect(created.peerID == loaded.peerID)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect(throws: IdentityError.alreadyExists(path: path)) {
            try ClusterKey.generate().save(path: path)
        }
    }

    @Test("Key files reject malformed contents", arguments: [
        "", "p2pq-cluster-key-v1", "p2pq-cluster-key-v1 abcd", "wrong-header " + String(repeating: "0", count: 64),
        "p2pq-cluster-key-v1 " + String(repeating: "z", count: 64),
    ])
    func malformedKey(text: String) {
        #expect(throws: IdentityError.self) { _ = try ClusterKey(fileContents: text) }
    }

    @Test("Cluster keys round-trip and their public id does not reveal them")
    func clusterKey() throws {
        let key = ClusterKey.generate()
        #expect(try ClusterKey(fileContents: key.fileContents) == key)
        let hex = key.fileContents.split(separator: " ")[1].trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!hex.contains(key.clusterID))
        #expect(key.clusterID.count == 16)
        #expect(ClusterKey.generate().clusterID != key.clusterID)
    }

    @Test("A PeerID is the SHA-256 of the static public key")
    func peerID() throws {
        let identity = NodeIdentity.generate()
        #expect(identity.peerID == PeerID(publicKey: identity.keyPair.publicKey))
        #expect(identity.peerID.short.count == 12)
        #expect(identity.peerID.description.hasPrefix(identity.peerID.short))
    }
}
