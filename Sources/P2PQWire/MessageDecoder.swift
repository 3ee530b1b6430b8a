/// One decoded message, copied out of the stream (for tests and for callers that keep messages).
public struct RawMessage: Sendable, Equatable {
    public var type: MessageType
    /// The body, without the length and type bytes.
    public var body: [UInt8]

    public init(type: MessageType, body: [UInt8]) {
        self.type = type
        self.body = body
    }
}

/// Splits the plaintext byte stream of a link into messages:
/// `[u32 big-endian length L][u8 type][L-1 bytes body]`, with `1 <= L <= maxFrameSize`.
///
/// A sans-I/O state machine: feed it the plaintext of each record (or any other chunking, down
/// to one byte); it calls back once per complete message with its type and body. Messages span
/// records freely, and one record may hold many.
///
/// - A length over ``maxFrameSize`` is rejected as soon as its four bytes are seen, and an
///   unknown type as soon as its byte is seen: nothing of such a frame is buffered.
/// - A message wholly inside a chunk is passed in place, without a copy. A split one is
///   accumulated in a buffer that grows with what arrives (never to the declared length up
///   front) and is bounded by ``maxFrameSize``.
/// - After any error, including one thrown by the callback, the decoder stays failed: every
///   later ``feed(_:_:)`` throws the same error.
public struct MessageDecoder: Sendable {
    /// The largest accepted length field (type + body).
    public let maxFrameSize: Int

    /// Header bytes seen of a header split across chunks (0...4), shifted into `header`.
    private var headerCount = 0
    private var header: UInt64 = 0
    /// Type and body length of the message being reassembled, once its header is complete.
    private var pendingType: MessageType?
    private var pendingBodyLength = 0
    // A split body of up to 64 KiB keeps its buffer for the next one (common with records of
    // that size). A larger one keeps it too while large bodies keep coming (a stream of queue
    // transfers), and frees it once `largeBufferIdleLimit` messages in a row did without it, so
    // one large message does not pin memory for the life of a quiet connection.
    private var body = ReassemblyBuffer(retainedCapacity: 64 << 10)
    /// Messages delivered since the last one that needed more than the retained capacity.
    private var sinceLargeBody = 0
    static let largeBufferIdleLimit = 16
    /// The error that stopped this decoder, if any.
    public private(set) var failure: WireError?

    /// A decoder accepting messages up to `maxFrameSize` bytes (type + body).
    ///
    /// - Throws: ``WireError/invalidMaxFrameSize(_:)`` outside ``WireProtocol/maxFrameSizeRange``.
    public init(maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) {
        try WireProtocol.validateMaxFrameSize(maxFrameSize)
        self.maxFrameSize = maxFrameSize
    }

    /// Feeds `bytes`, calling `onMessage` for each complete message.
    ///
    /// The body pointer is valid only during the call: copy what you keep.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer,
        _ onMessage: (MessageType, UnsafeRawBufferPointer) throws(WireError) -> Void
    ) throws(WireError) {
        if let failure { throw failure }
        do {
            try process(bytes, onMessage)
        } catch {
            failure = error
            body.release()
            throw error
        }
    }

    /// Whether the stream so far ended exactly at a message boundary.
    public var isAtMessageBoundary: Bool { headerCount == 0 && pendingType == nil }

    /// Call when the stream ends: throws ``WireError/truncated(field:needed:available:)`` if a
    /// message was cut off (or the stored failure, if the decoder failed).
    public func finish() throws(WireError) {
        if let failure { throw failure }
        if headerCount > 0 {
            let field = headerCount < 4 ? "message.length" : "message.type"
            throw .truncated(field: field, needed: headerCount < 4 ? 4 : 1, available: headerCount < 4 ? headerCount : 0)
        }
        if let pendingType {
            throw .truncated(field: "\(pendingType).body", needed: pendingBodyLength, available: body.count)
        }
    }

    /// Checks a length field as soon as it is complete.
    @inline(__always)
    private func checkLength(_ length: Int) throws(WireError) {
        guard length > 0 else { throw .emptyFrame }
        guard length <= maxFrameSize else { throw .frameTooLarge(length: length, limit: maxFrameSize) }
    }

    @inline(__always)
    private func checkType(_ raw: UInt8) throws(WireError) -> MessageType {
        guard let type = MessageType(rawValue: raw) else { throw .unknownMessageType(raw) }
        return type
    }

    /// Takes one byte of a split header, validating each field the moment it is complete.
    private mutating func pushHeaderByte(_ byte: UInt8) throws(WireError) {
        header = header << 8 | UInt64(byte)
        headerCount += 1
        if headerCount == 4 {
            try checkLength(Int(header))
        } else if headerCount == 5 {
            pendingType = try checkType(UInt8(truncatingIfNeeded: header))
            pendingBodyLength = Int(header >> 8) - 1
            headerCount = 0
            header = 0
        }
    }

    private mutating func process(
        _ bytes: UnsafeRawBufferPointer,
        _ onMessage: (MessageType, UnsafeRawBufferPointer) throws(WireError) -> Void
    ) throws(WireError) {
        let end = bytes.count
        var offset = 0

        // First finish a message left over from earlier chunks.
        while headerCount > 0 && offset < end {
            try pushHeaderByte(bytes[offset])
            offset += 1
        }
        if headerCount > 0 { return }
        if let type = pendingType {
            let missing = pendingBodyLength - body.count
            if body.count == 0 && end - offset >= missing {
                // Only the header was split: the body is all here, pass it in place.
                let start = offset
                offset += missing
                pendingType = nil
                try onMessage(type, UnsafeRawBufferPointer(rebasing: bytes[start..<offset]))
                deliveredWithoutLargeBody()
            } else {
                let take = Swift.min(missing, end - offset)
                body.append(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + take]), frameLength: pendingBodyLength)
                offset += take
                guard body.count == pendingBodyLength else { return }
                pendingType = nil
                try withBytes(body.bytes) { (raw) throws(WireError) in try onMessage(type, raw) }
                let large = pendingBodyLength > body.retainedCapacity
                body.reset()
                if large { sinceLargeBody = 0 } else { deliveredWithoutLargeBody() }
            }
        }

        // Then every message wholly inside this chunk, in place.
        while offset < end {
            let available = end - offset
            guard available >= WireProtocol.messageHeaderSize else {
                // Keep the partial header; its length is still checked the moment it is whole.
                for index in offset..<end { try pushHeaderByte(bytes[index]) }
                return
            }
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            try checkLength(length)
            let type = try checkType(bytes[offset + 4])
            let start = offset + WireProtocol.messageHeaderSize
            let bodyLength = length - 1
            guard end - start >= bodyLength else {
                pendingType = type
                pendingBodyLength = bodyLength
                body.append(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), frameLength: bodyLength)
                return
            }
            offset = start + bodyLength
            try onMessage(type, UnsafeRawBufferPointer(rebasing: bytes[start..<offset]))
            deliveredWithoutLargeBody()
        }
    }

    /// Counts a message that needed no large buffer; frees the buffer's extra capacity after
    /// `largeBufferIdleLimit` in a row.
    @inline(__always)
    private mutating func deliveredWithoutLargeBody() {
        sinceLargeBody += 1
        if sinceLargeBody == Self.largeBufferIdleLimit { body.trim() }
    }

    /// Bytes the reassembly buffer has allocated (tests check the bound).
    var bufferedCapacity: Int { body.capacity }

    // MARK: Convenience

    /// Feeds `bytes` and returns copies of the complete messages.
    public mutating func decodeAll(_ bytes: [UInt8]) throws(WireError) -> [RawMessage] {
        var messages: [RawMessage] = []
        try withBytes(bytes) { (raw) throws(WireError) in
            try feed(raw) { type, body in messages.append(RawMessage(type: type, body: Array(body))) }
        }
        return messages
    }

    /// Decodes a complete message stream: the messages, or an error if the stream is malformed
    /// or ends inside a message.
    public static func decodeAll(
        _ bytes: [UInt8], maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) -> [RawMessage] {
        var decoder = try MessageDecoder(maxFrameSize: maxFrameSize)
        let messages = try decoder.decodeAll(bytes)
        try decoder.finish()
        return messages
    }
}
