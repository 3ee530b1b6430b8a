/// Everything that can go wrong encoding or decoding the wire format.
///
/// A link that meets any decode error is closed and the error logged, so each case carries
/// enough to say exactly what the peer got wrong.
public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A message header declared `length` bytes (type + body), more than the receiver's `limit`.
    /// Raised as soon as the four length bytes are in, before anything is buffered.
    case frameTooLarge(length: Int, limit: Int)
    /// A message header declared length 0; a message holds at least its type byte.
    case emptyFrame
    /// A record header declared length 0.
    case emptyRecord
    /// A record body to encode was longer than 65535 bytes.
    case recordTooLarge(length: Int)
    /// A message type this side does not decode (unassigned, or reserved for a later layer).
    case unknownMessageType(UInt8)
    /// `field` needed `needed` bytes but only `available` were left.
    case truncated(field: String, needed: Int, available: Int)
    /// `field` was complete but its value is not allowed.
    case malformed(field: String, reason: String)
    /// A message of `type` was decoded with `count` bytes left over.
    case trailingBytes(type: MessageType, count: Int)
    /// A configured maximum frame size outside ``WireProtocol/maxFrameSizeRange``.
    case invalidMaxFrameSize(Int)
    /// A hello announced a protocol version this side does not speak.
    case unsupportedVersion(received: UInt16, supported: ClosedRange<UInt16>)
    /// An output buffer had `available` bytes where `required` were needed.
    case bufferTooSmall(required: Int, available: Int)

    public var description: String {
        switch self {
        case .frameTooLarge(let length, let limit):
            return "frame too large: declared \(length) bytes, limit is \(limit)"
        case .emptyFrame:
            return "empty frame: message length 0 (must include the type byte)"
        case .emptyRecord:
            return "empty record: record length 0"
        case .recordTooLarge(let length):
            return "record too large: \(length) bytes, limit is \(WireProtocol.maxRecordBodySize)"
        case .unknownMessageType(let raw):
            return "unknown message type 0x\(hex(raw))"
        case .truncated(let field, let needed, let available):
            return "truncated \(field): needed \(needed) bytes, \(available) available"
        case .malformed(let field, let reason):
            return "malformed \(field): \(reason)"
        case .trailingBytes(let type, let count):
            return "\(count) trailing bytes after a \(type) message"
        case .invalidMaxFrameSize(let size):
            return "invalid max frame size \(size): must be in \(WireProtocol.maxFrameSizeRange)"
        case .unsupportedVersion(let received, let supported):
            return "unsupported protocol version \(received): this side speaks \(supported)"
        case .bufferTooSmall(let required, let available):
            return "buffer too small: \(required) bytes required, \(available) available"
        }
    }

    /// The same error with `prefix` put in front of its field name, so an error inside a list
    /// entry says which entry ("peers[3].host"). Built only on the error path.
    /// The error with its field named for entry `index` of list `name`: a field `name...`
    /// becomes `name[index]...`. Decoders read entries under the bare list name and index the
    /// name only when something failed, so a list of many entries builds no string per entry.
    public func indexed(_ index: Int, of name: String) -> WireError {
        func rename(_ field: String) -> String {
            field.hasPrefix(name) ? name + "[\(index)]" + field.dropFirst(name.count) : field
        }
        switch self {
        case .truncated(let field, let needed, let available):
            return .truncated(field: rename(field), needed: needed, available: available)
        case .malformed(let field, let reason):
            return .malformed(field: rename(field), reason: reason)
        default:
            return self
        }
    }

    public func nested(under prefix: String) -> WireError {
        switch self {
        case .truncated(let field, let needed, let available):
            return .truncated(field: prefix + "." + field, needed: needed, available: available)
        case .malformed(let field, let reason):
            return .malformed(field: prefix + "." + field, reason: reason)
        default:
            return self
        }
    }
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0x0F)])
}

// The standard library's `withUnsafeBytes` is untyped `rethrows`; these keep `WireError` typed.
@inline(__always)
func withBytes<R>(
    _ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(WireError) -> R
) throws(WireError) -> R {
    let result: Result<R, WireError> = bytes.withUnsafeBytes { pointer in
        Result { () throws(WireError) in try body(pointer) }
    }
    return try result.get()
}
