import P2PQLink
import P2PQNoise
import P2PQWire
import Testing

/// A link's handshake takes its only randomness (the ephemeral keys) from the source it is
/// given: the same seeded sources replay the same handshake, byte for byte.
@Suite struct HandshakeKeySourceTests {
    let key = ClusterKey.generate()
    let initiatorIdentity = NodeIdentity.generate()
    let responderIdentity = NodeIdentity.generate()

    /// Every record both ends write until both are established.
    func transcript(_ initiatorKeys: HandshakeKeySource, _ responderKeys: HandshakeKeySource) throws -> [[UInt8]] {
        var initiator = try LinkSession(role: .initiator, security: .noise(key), identity: initiatorIdentity,
                                        handshakeKeys: initiatorKeys)
        var responder = try LinkSession(role: .responder, security: .noise(key), identity: responderIdentity,
                                        handshakeKeys: responderKeys)
        var output = ByteArrayOutput()
        try initiator.start(output: &output)
        var records = [output.bytes]
        var toResponder = true
        while !records[records.count - 1].isEmpty && records.count < 10 {
            var reply = ByteArrayOutput()
            try records[records.count - 1].withUnsafeBytes { bytes in
                if toResponder {
                    try responder.receive(bytes, output: &reply) { _ in }
                } else {
                    try initiator.receive(bytes, output: &reply) { _ in }
                }
            }
            records.append(reply.bytes)
            toResponder.toggle()
        }
        #expect(initiator.phase == .established && responder.phase == .established)
        return records
    }

    @Test func theSameSeedsGiveTheSameHandshakeBytes() throws {
        let first = try transcript(.seeded(1), .seeded(2))
        #expect(first.count > 2)
        #expect(try transcript(.seeded(1), .seeded(2)) == first)
        // The keys do come from the seed: another seed, other bytes.
        #expect(try transcript(.seeded(3), .seeded(2)) != first)
    }

    @Test func systemKeysDifferEachTime() throws {
        #expect(try transcript(.system, .system) != transcript(.system, .system))
    }

    @Test func splitSourcesAreSeededApartAndSystemStaysSystem() {
        var seeded = HandshakeKeySource.seeded(5)
        let a = seeded.split()
        let b = seeded.split()
        #expect(a.isSeeded && b.isSeeded)
        var system = HandshakeKeySource.system
        #expect(!system.split().isSeeded)
    }
}
