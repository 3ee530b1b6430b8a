import P2PQNoise
import P2PQWire

/// Where a link's handshakes take their ephemeral keys from: the one source of randomness in
/// a ``LinkSession``.
public struct HandshakeKeySource: Sendable {
    private var generator: SplitMix64?

    /// Fresh keys from the system's secure random source, made when a handshake needs one:
    /// the only choice for a real link.
    public static var system: HandshakeKeySource { HandshakeKeySource(generator: nil) }

    /// Keys drawn from `seed`: the same seed gives the same keys, so a test or a simulation
    /// replays a handshake byte for byte. Never for a real link: whoever knows the seed can
    /// read its traffic.
    public static func seeded(_ seed: UInt64) -> HandshakeKeySource {
        HandshakeKeySource(generator: SplitMix64(seed: seed))
    }

    /// Whether keys come from a seed.
    public var isSeeded: Bool { generator != nil }

    /// A source for one more link: ``system`` again, or a seeded one split off this one.
    public mutating func split() -> HandshakeKeySource {
        guard var generator else { return .system }
        defer { self.generator = generator }
        return .seeded(generator.next())
    }

    /// The next ephemeral key pair; nil from ``system``, where the handshake makes its own.
    mutating func next() -> NoiseKeyPair? {
        guard var generator else { return nil }
        defer { self.generator = generator }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for _ in 0..<4 {
            let word = generator.next()
            for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        // Any 32 bytes are a Curve25519 private key (the scalar is clamped).
        return try? NoiseKeyPair(privateKey: bytes)
    }
}
