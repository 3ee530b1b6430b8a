/// Everything that can go wrong encoding or decoding the compact format (docs/encoding.md).
///
/// Each case carries the coding path of the value involved, written like `items[3].name`
/// (an empty string is the root), so a peer's bad item or call argument can be reported exactly.
public enum CompactCodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Reading `needed` bytes at `path` with only `available` left.
    case truncated(path: String, needed: Int, available: Int)
    /// A varint longer than its type allows, or not in its shortest form.
    case overlongVarint(path: String)
    /// A well-formed number that does not fit the type being decoded.
    case valueOutOfRange(path: String, type: String, value: String)
    /// A string or key whose bytes are not valid UTF-8.
    case invalidUTF8(path: String)
    /// A boolean byte other than 0 or 1.
    case invalidBool(path: String, byte: UInt8)
    /// An optional's presence byte other than 0 or 1, or an empty value's marker other than 0.
    case invalidMarker(path: String, byte: UInt8)
    /// A count or length prefix larger than the bytes that could possibly hold it.
    /// Checked before anything is allocated.
    case countExceedsRemaining(path: String, count: UInt64, remaining: Int)
    /// A value was decoded with `count` of its bytes left over.
    case trailingBytes(path: String, count: Int)
    /// The first byte names a format version this side does not decode.
    case unsupportedVersion(UInt8)
    /// A keyed entry references key table entry `index`; the table has `tableSize` entries.
    case invalidKeyIndex(path: String, index: UInt64, tableSize: Int)
    /// A key appears twice in one keyed container or twice in the key table.
    case duplicateKey(path: String, key: String)
    /// A key the type requires is absent.
    case keyNotFound(path: String, key: String)
    /// A non-optional value was found encoded as nil.
    case valueNotFound(path: String, type: String)
    /// The data does not have the shape the type asks for (for instance, more elements
    /// requested than an unkeyed container holds, or fewer decoded than it holds).
    case typeMismatch(path: String, expected: String, reason: String)
    /// Nesting deeper than the configured maximum.
    case depthLimitExceeded(path: String, limit: Int)
    /// Input or output larger than the configured maximum.
    case sizeLimitExceeded(size: Int, limit: Int)
    /// A value's own `encode(to:)` or `init(from:)` rejected it (EncodingError.invalidValue,
    /// DecodingError.dataCorrupted, or any other error it threw).
    case invalidValue(path: String, description: String)

    public var description: String {
        func at(_ path: String) -> String { path.isEmpty ? "at the root" : "at \(path)" }
        switch self {
        case .truncated(let path, let needed, let available):
            return "truncated \(at(path)): needed \(needed) bytes, \(available) available"
        case .overlongVarint(let path):
            return "overlong or non-minimal varint \(at(path))"
        case .valueOutOfRange(let path, let type, let value):
            return "value \(value) does not fit \(type) \(at(path))"
        case .invalidUTF8(let path):
            return "invalid UTF-8 \(at(path))"
        case .invalidBool(let path, let byte):
            return "invalid boolean byte \(byte) \(at(path))"
        case .invalidMarker(let path, let byte):
            return "invalid presence/empty marker byte \(byte) \(at(path))"
        case .countExceedsRemaining(let path, let count, let remaining):
            return "count \(count) exceeds the \(remaining) remaining bytes \(at(path))"
        case .trailingBytes(let path, let count):
            return "\(count) trailing bytes \(at(path))"
        case .unsupportedVersion(let version):
            return "unsupported compact format version \(version)"
        case .invalidKeyIndex(let path, let index, let tableSize):
            return "key index \(index) outside the key table of \(tableSize) \(at(path))"
        case .duplicateKey(let path, let key):
            return "duplicate key \"\(key)\" \(at(path))"
        case .keyNotFound(let path, let key):
            return "key \"\(key)\" not found \(at(path))"
        case .valueNotFound(let path, let type):
            return "expected \(type), found nil \(at(path))"
        case .typeMismatch(let path, let expected, let reason):
            return "type mismatch \(at(path)): expected \(expected), \(reason)"
        case .depthLimitExceeded(let path, let limit):
            return "nesting deeper than \(limit) \(at(path))"
        case .sizeLimitExceeded(let size, let limit):
            return "size \(size) exceeds the limit of \(limit) bytes"
        case .invalidValue(let path, let description):
            return "invalid value \(at(path)): \(description)"
        }
    }
}

/// `items[3].name` from a coding path: integer keys as subscripts, others dotted.
func pathString(_ path: [any CodingKey]) -> String {
    var result = ""
    for key in path {
        if let index = key.intValue, key.stringValue == "Index \(index)" {
            result += "[\(index)]"
        } else {
            if !result.isEmpty { result += "." }
            result += key.stringValue
        }
    }
    return result
}

func pathString(_ path: [any CodingKey], _ last: any CodingKey) -> String {
    pathString(path + [last])
}

/// The key used for unkeyed container elements in coding paths (named like Foundation's).
struct IndexKey: CodingKey {
    let intValue: Int?
    var stringValue: String { "Index \(intValue ?? 0)" }
    init(_ index: Int) { intValue = index }
    init?(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}

/// The key `superEncoder()`/`superDecoder()` use, as in Foundation.
struct SuperKey: CodingKey {
    var stringValue: String { "super" }
    var intValue: Int? { nil }
    init() {}
    init?(intValue: Int) { nil }
    init?(stringValue: String) { guard stringValue == "super" else { return nil } }
}

/// Turns whatever a value's own `encode(to:)`/`init(from:)` threw into a precise error.
func compactError(from error: any Error) -> CompactCodingError {
    if let error = error as? CompactCodingError { return error }
    if let error = error as? DecodingError {
        switch error {
        case .typeMismatch(let type, let context):
            return .typeMismatch(path: pathString(context.codingPath), expected: "\(type)", reason: context.debugDescription)
        case .valueNotFound(let type, let context):
            return .valueNotFound(path: pathString(context.codingPath), type: "\(type)")
        case .keyNotFound(let key, let context):
            return .keyNotFound(path: pathString(context.codingPath), key: key.stringValue)
        case .dataCorrupted(let context):
            return .invalidValue(path: pathString(context.codingPath), description: context.debugDescription)
        @unknown default:
            return .invalidValue(path: "", description: "\(error)")
        }
    }
    if let error = error as? EncodingError {
        switch error {
        case .invalidValue(_, let context):
            return .invalidValue(path: pathString(context.codingPath), description: context.debugDescription)
        @unknown default:
            return .invalidValue(path: "", description: "\(error)")
        }
    }
    return .invalidValue(path: "", description: "\(error)")
}
