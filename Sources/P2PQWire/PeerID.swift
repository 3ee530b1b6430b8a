/// A peer's 32-byte identity: the SHA-256 of its Noise static public key.
///
/// This module only carries the bytes; computing the hash belongs to the handshake layer.
/// Stored as four words so it lives inline (no heap allocation per message) and hashes cheaply.
public struct PeerID: Sendable, Hashable, Comparable, CustomStringConvertible {
    // Big-endian words: word0 holds bytes 0...7, so comparing words compares bytes.
    @usableFromInline let word0: UInt64
    @usableFromInline let word1: UInt64
    @usableFromInline let word2: UInt64
    @usableFromInline let word3: UInt64

    /// The ID made of exactly 32 `bytes`, or nil for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == WireProtocol.peerIDSize else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() {
            words[index / 8] = words[index / 8] << 8 | UInt64(byte)
        }
        self.init(words: words[0], words[1], words[2], words[3])
    }

    /// Reads the ID from exactly 32 raw bytes (the caller checked the count).
    init(unchecked raw: UnsafeRawBufferPointer) {
        self.init(
            words: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self).bigEndian,
            raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self).bigEndian,
            raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self).bigEndian,
            raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self).bigEndian
        )
    }

    private init(words w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
        word0 = w0
        word1 = w1
        word2 = w2
        word3 = w3
    }

    /// The 32 bytes, in wire order.
    public var bytes: [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(WireProtocol.peerIDSize)
        for word in [word0, word1, word2, word3] {
            for shift in stride(from: 56, through: 0, by: -8) {
                result.append(UInt8(truncatingIfNeeded: word >> UInt64(shift)))
            }
        }
        return result
    }

    /// Writes the 32 bytes.
    @inlinable
    public func write<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        writer.writeU64(word0)
        writer.writeU64(word1)
        writer.writeU64(word2)
        writer.writeU64(word3)
    }

    public static func < (lhs: PeerID, rhs: PeerID) -> Bool {
        (lhs.word0, lhs.word1, lhs.word2, lhs.word3) < (rhs.word0, rhs.word1, rhs.word2, rhs.word3)
    }

    /// Lowercase hex of the 32 bytes.
    public var description: String {
        bytes.map(hex).joined()
    }
}
