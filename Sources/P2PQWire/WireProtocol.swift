/// Constants of the wire protocol, shared by encoders, decoders and docs/protocol-framing.md.
public enum WireProtocol {
    /// The highest protocol version this implementation speaks. Version 2 adds the cipher
    /// offer to the handshake (docs/protocol.md §2); its messages are version 1's.
    public static let version: UInt16 = 2
    /// The versions this implementation speaks; a link runs the highest both ends speak, and
    /// its hello carries that one.
    public static let supportedVersions: ClosedRange<UInt16> = 1...2

    /// Largest record body: the u16 length field, and also the largest Noise message.
    public static let maxRecordBodySize = 65535
    /// Bytes of the record header (u16 length).
    public static let recordHeaderSize = 2
    /// Bytes of the message header (u32 length + u8 type).
    public static let messageHeaderSize = 5

    /// Default limit on a message's length field (type + body): 1 MiB.
    public static let defaultMaxFrameSize = 1 << 20
    /// The hard ceiling no configuration may exceed: 64 MiB.
    public static let maxFrameSizeCeiling = 64 << 20
    /// The smallest allowed limit: every hello (at most 312 bytes) and goodbye must fit.
    public static let minimumMaxFrameSize = 512
    /// Allowed values for a configured maximum frame size.
    public static let maxFrameSizeRange = minimumMaxFrameSize...maxFrameSizeCeiling

    /// Bytes of a peer ID (SHA-256 of the peer's Noise static public key).
    public static let peerIDSize = 32
    /// Longest host string, in UTF-8 bytes (in hello and in peers entries).
    public static let maxHostLength = 255
    /// Hello feature bit 2: the node understands the link message `operations` (0x06) and
    /// sends its operations endpoint's address in one when it has one. (Bit 0 is the queue's
    /// ownership handover; bit 1 is reserved.)
    public static let featureOperationsAddress: UInt64 = 1 << 2
    /// Hello feature bit 3, set by a dialing node short of links (fewer than the connection
    /// manager's `minPeers`): a receiver at its `maxPeers` makes room by closing one of its
    /// other links instead of refusing this one, so a newcomer always joins the mesh.
    public static let featureNeedsLinks: UInt64 = 1 << 3
    /// Hello feature bit 4: the node understands remote-call direct runs (`0x45`), so its
    /// peers send it consecutive direct calls to one function as one run; a peer without the
    /// bit gets them as single call items (`0x43`).
    public static let featureCallRuns: UInt64 = 1 << 4
    /// Hello feature bit 5: the node understands remote-call result runs (`0x46`), so its
    /// executors send it the results of consecutive calls as one run; a peer without the bit
    /// gets them as results entries (`0x40`).
    public static let featureResultRuns: UInt64 = 1 << 5
    /// Longest goodbye detail string, in UTF-8 bytes.
    public static let maxGoodbyeDetailLength = 256
    /// Most entries in one peers message.
    public static let maxPeersPerMessage = 1024

    /// Checks a configured maximum frame size.
    public static func validateMaxFrameSize(_ size: Int) throws(WireError) {
        guard maxFrameSizeRange.contains(size) else { throw .invalidMaxFrameSize(size) }
    }
}
