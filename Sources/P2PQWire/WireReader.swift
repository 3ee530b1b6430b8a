/// Bounds-checked reads of wire-format values from a byte buffer.
///
/// Every read names its field, so a short body fails with
/// ``WireError/truncated(field:needed:available:)`` saying which field and by how much.
/// Byte strings come back as views into the buffer (valid as long as the buffer).
///
/// The reads are inlinable: the decoders of every layer call them per field, and a call across
/// the module boundary per field cost the queue's transfer decoding about a tenth of its time.
/// Their error paths stay out of line.
public struct WireReader {
    /// The bytes being read.
    public let bytes: UnsafeRawBufferPointer
    @usableFromInline var consumed = 0

    /// Bytes consumed so far.
    @inlinable public var offset: Int { consumed }

    public init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// Bytes not yet read.
    @inlinable public var remaining: Int { bytes.count - consumed }

    @inlinable @inline(__always)
    mutating func take(_ count: Int, field: String) throws(WireError) -> Int {
        guard count <= remaining else { throw Self.truncated(field, needed: count, available: remaining) }
        let start = consumed
        consumed += count
        return start
    }

    @usableFromInline @inline(never)
    static func truncated(_ field: String, needed: Int, available: Int) -> WireError {
        .truncated(field: field, needed: needed, available: available)
    }

    @usableFromInline @inline(never)
    static func tooLong(_ field: String, length: Int, maxLength: Int) -> WireError {
        .malformed(field: field, reason: "length \(length) exceeds the limit of \(maxLength) bytes")
    }

    // The per-field reads are forced inline: left to the optimizer, a decoder in another module
    // (a transfer's item headers) called each one, a call per field per item.

    /// Reads one byte.
    @inlinable @inline(__always)
    public mutating func readU8(field: String) throws(WireError) -> UInt8 {
        bytes[try take(1, field: field)]
    }

    /// Reads a big-endian u16.
    @inlinable @inline(__always)
    public mutating func readU16(field: String) throws(WireError) -> UInt16 {
        UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: try take(2, field: field), as: UInt16.self))
    }

    /// Reads a big-endian u32.
    @inlinable @inline(__always)
    public mutating func readU32(field: String) throws(WireError) -> UInt32 {
        UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: try take(4, field: field), as: UInt32.self))
    }

    /// Reads a big-endian u64.
    @inlinable @inline(__always)
    public mutating func readU64(field: String) throws(WireError) -> UInt64 {
        UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: try take(8, field: field), as: UInt64.self))
    }

    /// Reads an IEEE-754 binary64 from its big-endian bit pattern.
    @inlinable
    public mutating func readFloat64(field: String) throws(WireError) -> Double {
        Double(bitPattern: try readU64(field: field))
    }

    /// Reads `count` bytes with no length prefix, as a view into ``bytes``.
    @inlinable @inline(__always)
    public mutating func readRaw(count: Int, field: String) throws(WireError) -> UnsafeRawBufferPointer {
        let start = try take(count, field: field)
        return UnsafeRawBufferPointer(rebasing: bytes[start..<start + count])
    }

    /// Reads a 32-byte peer ID.
    public mutating func readPeerID(field: String) throws(WireError) -> PeerID {
        PeerID(unchecked: try readRaw(count: WireProtocol.peerIDSize, field: field))
    }

    /// Reads a byte string (u32 length, then the bytes) as a view into ``bytes``.
    ///
    /// The length prefix is reported as field `"<field>.length"`. A length over `maxLength`
    /// is ``WireError/malformed(field:reason:)`` even if the bytes are there.
    @inlinable @inline(__always)
    public mutating func readByteString(field: String, maxLength: Int) throws(WireError) -> UnsafeRawBufferPointer {
        guard remaining >= 4 else { throw Self.truncated(field + ".length", needed: 4, available: remaining) }
        let length = Int(try readU32(field: field))
        guard length <= maxLength else { throw Self.tooLong(field, length: length, maxLength: maxLength) }
        return try readRaw(count: length, field: field)
    }

    /// Reads a string: a byte string that must be valid UTF-8.
    public mutating func readString(field: String, maxLength: Int) throws(WireError) -> String {
        let raw = try readByteString(field: field, maxLength: maxLength)
        guard let string = String(validating: raw, as: UTF8.self) else {
            throw .malformed(field: field, reason: "invalid UTF-8")
        }
        return string
    }

    /// Checks the whole buffer was read: a message must not carry bytes its type does not define.
    public func finish(type: MessageType) throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(type: type, count: remaining) }
    }
}
