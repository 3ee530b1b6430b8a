/// A message body that knows its type and exact encoded size, so ``MessageEncoder`` can frame it
/// with one reservation and no intermediate buffer.
public protocol WireMessage {
    /// The type byte the message is framed with.
    var messageType: MessageType { get }
    /// Checks every limit the receiver enforces, so a message is either encoded whole or not
    /// at all (never half-written, never sent only to be rejected).
    func validate() throws(WireError)
    /// Exact bytes ``writeBody(into:)`` appends. Meaningful once ``validate()`` passed.
    var bodySize: Int { get }
    /// Appends the body. Call only after ``validate()`` passed.
    func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>)
}

/// Frames messages as `[u32 big-endian L][u8 type][body]` with `L = 1 + body size`.
///
/// Encoding into the reactor's outbound queue without a copy:
///
/// ```swift
/// let size = try MessageEncoder.encodedSize(of: message)   // validates
/// connection.write(reservingCapacity: size) { buffer in
///     (try? MessageEncoder.encode(message, into: buffer)) ?? 0
/// }
/// ```
public enum MessageEncoder {
    /// Bytes the framed message takes: 5 header bytes plus the body.
    ///
    /// - Throws: the message's validation error, or ``WireError/frameTooLarge(length:limit:)``
    ///   if the receiver's `maxFrameSize` would reject it.
    @inlinable
    public static func encodedSize(
        of message: some WireMessage, maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) -> Int {
        try message.validate()
        return try frameSize(bodySize: message.bodySize, maxFrameSize: maxFrameSize)
    }

    /// Bytes a framed message with a body of `bodySize` bytes takes.
    public static func frameSize(
        bodySize: Int, maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) -> Int {
        try WireProtocol.validateMaxFrameSize(maxFrameSize)
        let length = 1 + bodySize
        guard length <= maxFrameSize else { throw .frameTooLarge(length: length, limit: maxFrameSize) }
        return WireProtocol.messageHeaderSize + bodySize
    }

    /// Appends the framed message to `bytes` (nothing if it throws).
    ///
    /// - Throws: the message's validation error, or ``WireError/frameTooLarge(length:limit:)``
    ///   if the receiver's `maxFrameSize` would reject it.
    @inlinable
    public static func encode(
        _ message: some WireMessage, into bytes: inout [UInt8],
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) {
        try message.validate()
        try WireProtocol.validateMaxFrameSize(maxFrameSize)
        // Written first and measured after, the length patched in: asking the body for its size
        // first would cost a transfer a pass over its items (a bulk body reserves for itself).
        let start = bytes.count
        bytes.withWireWriter { writer in
            writer.writeU32(0)
            writer.writeU8(message.messageType.rawValue)
            message.writeBody(into: &writer)
        }
        let length = bytes.count - start - 4
        guard length <= maxFrameSize else {
            bytes.removeSubrange(start...)
            throw .frameTooLarge(length: length, limit: maxFrameSize)
        }
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(length).bigEndian, toByteOffset: start, as: UInt32.self) }
    }

    /// Writes the framed message at the start of `buffer`, returning the bytes written.
    ///
    /// - Throws: as ``encodedSize(of:maxFrameSize:)``, or ``WireError/bufferTooSmall(required:available:)``.
    public static func encode(
        _ message: some WireMessage, into buffer: UnsafeMutableRawBufferPointer,
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) -> Int {
        let size = try encodedSize(of: message, maxFrameSize: maxFrameSize)
        guard buffer.count >= size else { throw .bufferTooSmall(required: size, available: buffer.count) }
        var writer = WireWriter(output: UnsafeWireBuffer(buffer))
        write(message, bodySize: size - WireProtocol.messageHeaderSize, into: &writer)
        return writer.output.count
    }

    /// Appends the framed message through any writer (the caller validated it, and checked
    /// its size against the receiver's limit, e.g. with ``encodedSize(of:maxFrameSize:)``).
    @inlinable
    public static func write<Output: WireOutput>(_ message: some WireMessage, into writer: inout WireWriter<Output>) {
        write(message, bodySize: message.bodySize, into: &writer)
    }

    @inlinable
    static func write<Output: WireOutput>(_ message: some WireMessage, bodySize: Int, into writer: inout WireWriter<Output>) {
        writer.writeU32(UInt32(1 + bodySize))
        writer.writeU8(message.messageType.rawValue)
        message.writeBody(into: &writer)
    }

    /// Appends a message with an already encoded `body` (e.g. one a later layer built).
    public static func encode(
        type: MessageType, body: UnsafeRawBufferPointer, into bytes: inout [UInt8],
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize
    ) throws(WireError) {
        let size = try frameSize(bodySize: body.count, maxFrameSize: maxFrameSize)
        bytes.reserveWireCapacity(size)
        bytes.withWireWriter { writer in
            writer.writeU32(UInt32(1 + body.count))
            writer.writeU8(type.rawValue)
            writer.writeRaw(body)
        }
    }
}

/// Frames record bodies as `[u16 big-endian length][body]`.
///
/// With Noise each body is one transport message (ciphertext and tag, at most 65535 bytes, so
/// at most 65519 bytes of plaintext); in the explicit insecure mode the bodies are plaintext.
public enum RecordEncoder {
    /// Appends one record carrying `body` (1...65535 bytes).
    ///
    /// - Throws: ``WireError/emptyRecord``, ``WireError/recordTooLarge(length:)``.
    public static func encode(body: UnsafeRawBufferPointer, into bytes: inout [UInt8]) throws(WireError) {
        guard !body.isEmpty else { throw .emptyRecord }
        guard body.count <= WireProtocol.maxRecordBodySize else { throw .recordTooLarge(length: body.count) }
        bytes.reserveWireCapacity(WireProtocol.recordHeaderSize + body.count)
        bytes.withWireWriter { writer in
            writer.writeU16(UInt16(body.count))
            writer.writeRaw(body)
        }
    }

    /// Appends one record carrying `body` (1...65535 bytes).
    public static func encode(body: [UInt8], into bytes: inout [UInt8]) throws(WireError) {
        try withBytes(body) { (raw) throws(WireError) in try encode(body: raw, into: &bytes) }
    }

    /// Cuts a plaintext stream into records of at most `maxBodySize` bytes each (insecure
    /// mode; with Noise, cut at 65519 and encrypt each piece instead). An empty stream makes
    /// no record.
    ///
    /// - Throws: ``WireError/recordTooLarge(length:)`` if `maxBodySize` is over 65535, or
    ///   ``WireError/emptyRecord`` if it is below 1.
    public static func encodeRecords(
        carrying stream: UnsafeRawBufferPointer, maxBodySize: Int = WireProtocol.maxRecordBodySize,
        into bytes: inout [UInt8]
    ) throws(WireError) {
        guard maxBodySize >= 1 else { throw .emptyRecord }
        guard maxBodySize <= WireProtocol.maxRecordBodySize else { throw .recordTooLarge(length: maxBodySize) }
        var offset = 0
        while offset < stream.count {
            let length = Swift.min(maxBodySize, stream.count - offset)
            try encode(body: UnsafeRawBufferPointer(rebasing: stream[offset..<offset + length]), into: &bytes)
            offset += length
        }
    }
}

/// A message body that decodes from the bytes of one frame. Conforming layers write the
/// raw-buffer decoder; the array and ``RawMessage`` forms come with the protocol.
public protocol WireDecodable {
    /// Decodes the body of a message of `type`, rejecting anything malformed with a precise error.
    static func decode(type: MessageType, body: UnsafeRawBufferPointer) throws(WireError) -> Self
}

extension WireDecodable {
    /// Decodes the body of a message of `type` held in an array.
    public static func decode(type: MessageType, body: [UInt8]) throws(WireError) -> Self {
        try withBytes(body) { (raw) throws(WireError) in try decode(type: type, body: raw) }
    }

    /// Decodes a message copied out by ``MessageDecoder/decodeAll(_:)``.
    public static func decode(_ message: RawMessage) throws(WireError) -> Self {
        try decode(type: message.type, body: message.body)
    }
}
