/// Splits a byte stream into record bodies: `[u16 big-endian length][body]`, body 1...65535.
///
/// A sans-I/O state machine: feed it whatever the socket delivered, in chunks of any size down
/// to one byte, and it calls back once per complete record. It knows nothing of encryption;
/// the caller decrypts each body (or, in insecure mode, uses it as plaintext).
///
/// A record lying wholly inside a chunk is passed in place, without a copy. Only a record split
/// across chunks is accumulated, in a buffer bounded by 65535 bytes.
///
/// After any error, including one thrown by the callback, the decoder stays failed: every
/// later ``feed(_:_:)`` throws the same error. The link is closed on the first one anyway.
public struct RecordDecoder: Sendable {
    /// Header bytes seen so far of a header split across chunks (0, or 1 of 2).
    private var headerCount = 0
    private var header: UInt16 = 0
    /// Body length of the record being reassembled; 0 when none is.
    private var pendingLength = 0
    // Split records are the norm (records rarely align with reads), and the buffer never
    // exceeds 64 KiB, so it is kept between records rather than reallocated each time.
    private var body = ReassemblyBuffer(retainedCapacity: .max)
    /// The error that stopped this decoder, if any.
    public private(set) var failure: WireError?

    public init() {}

    /// Feeds `bytes`, calling `onRecord` for each complete record body.
    ///
    /// The body pointer is valid only during the call: copy what you keep.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer,
        _ onRecord: (UnsafeRawBufferPointer) throws(WireError) -> Void
    ) throws(WireError) {
        if let failure { throw failure }
        do {
            try process(bytes, onRecord)
        } catch {
            failure = error
            body.release()
            throw error
        }
    }

    /// Whether the stream so far ended exactly at a record boundary.
    public var isAtRecordBoundary: Bool { headerCount == 0 && pendingLength == 0 }

    /// Call when the stream ends: throws ``WireError/truncated(field:needed:available:)`` if a
    /// record was cut off (or the stored failure, if the decoder failed).
    public func finish() throws(WireError) {
        if let failure { throw failure }
        if headerCount > 0 {
            throw .truncated(field: "record.length", needed: WireProtocol.recordHeaderSize, available: headerCount)
        }
        if pendingLength > 0 {
            throw .truncated(field: "record.body", needed: pendingLength, available: body.count)
        }
    }

    private mutating func process(
        _ bytes: UnsafeRawBufferPointer,
        _ onRecord: (UnsafeRawBufferPointer) throws(WireError) -> Void
    ) throws(WireError) {
        let end = bytes.count
        var offset = 0

        // First finish a record left over from earlier chunks.
        if headerCount > 0 {
            guard end > 0 else { return }
            header = header << 8 | UInt16(bytes[0])
            headerCount = 0
            offset = 1
            pendingLength = Int(header)
            guard pendingLength > 0 else { throw .emptyRecord }
        }
        if pendingLength > 0 {
            let missing = pendingLength - body.count
            if body.count == 0 && end - offset >= missing {
                // Only the header was split: the body is all here, pass it in place.
                let start = offset
                offset += missing
                pendingLength = 0
                try onRecord(UnsafeRawBufferPointer(rebasing: bytes[start..<offset]))
            } else {
                let take = Swift.min(missing, end - offset)
                body.append(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + take]), frameLength: pendingLength)
                offset += take
                guard body.count == pendingLength else { return }
                pendingLength = 0
                try withBytes(body.bytes, onRecord)
                body.reset()
            }
        }

        // Then every record wholly inside this chunk, in place.
        while offset < end {
            let available = end - offset
            guard available >= WireProtocol.recordHeaderSize else {
                header = UInt16(bytes[offset])
                headerCount = 1
                return
            }
            let length = Int(UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
            guard length > 0 else { throw .emptyRecord }
            let start = offset + WireProtocol.recordHeaderSize
            guard end - start >= length else {
                pendingLength = length
                body.append(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), frameLength: length)
                return
            }
            offset = start + length
            try onRecord(UnsafeRawBufferPointer(rebasing: bytes[start..<offset]))
        }
    }

    /// Bytes the reassembly buffer has allocated (tests check the bound).
    var bufferedCapacity: Int { body.capacity }

    // MARK: Convenience

    /// Feeds `bytes` and returns copies of the complete record bodies.
    public mutating func decodeAll(_ bytes: [UInt8]) throws(WireError) -> [[UInt8]] {
        var records: [[UInt8]] = []
        try withBytes(bytes) { (raw) throws(WireError) in
            try feed(raw) { records.append(Array($0)) }
        }
        return records
    }

    /// Decodes a complete record stream: the bodies, or an error if the stream is malformed
    /// or ends inside a record.
    public static func decodeAll(_ bytes: [UInt8]) throws(WireError) -> [[UInt8]] {
        var decoder = RecordDecoder()
        let records = try decoder.decodeAll(bytes)
        try decoder.finish()
        return records
    }
}
