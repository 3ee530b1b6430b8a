#if canImport(FoundationEssentials)
import FoundationEssentials
#elseif canImport(Foundation)
import Foundation
#endif

/// Decodes `Decodable` values from the compact binary format described in docs/encoding.md.
///
/// Strict: any input that is not exactly an encoding of a `T` fails with a precise
/// ``CompactCodingError`` naming the coding path, never a crash, and no count or length in the
/// input makes it allocate more than the input's own size. A value type holding only settings.
public struct CompactDecoder: Sendable {
    /// The deepest nesting of containers and values accepted.
    public var maxDepth: Int
    /// The largest input accepted.
    public var maxSize: Int
    /// Passed to `Decoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable]

    public init(maxDepth: Int = 128, maxSize: Int = 16 << 20, userInfo: [CodingUserInfoKey: any Sendable] = [:]) {
        self.maxDepth = maxDepth
        self.maxSize = maxSize
        self.userInfo = userInfo
    }

    /// Decodes a `T` from exactly `bytes`.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(CompactCodingError) -> T {
        guard bytes.count <= maxSize else { throw .sizeLimitExceeded(size: bytes.count, limit: maxSize) }
        let input = DecodingInput(bytes: bytes, maxDepth: maxDepth, userInfo: userInfo)
        let cursor = Cursor(input: input, position: 0, end: bytes.count)
        do {
            try readHeader(cursor)
            let value = try decodeValue(type, cursor: cursor, inField: false, path: [], depth: 0)
            guard cursor.remaining == 0 else {
                throw CompactCodingError.trailingBytes(path: "", count: cursor.remaining)
            }
            return value
        } catch {
            throw compactError(from: error)
        }
    }

    /// Decodes a `T` from exactly `bytes` (for instance a `Data` or an `ArraySlice`).
    public func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws(CompactCodingError) -> T {
        guard bytes.count <= maxSize else { throw .sizeLimitExceeded(size: bytes.count, limit: maxSize) }
        return try decode(type, from: Array(bytes))
    }

    /// Decodes a `T` from exactly `bytes`; the bytes are copied, so nothing decoded refers to them.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws(CompactCodingError) -> T {
        guard bytes.count <= maxSize else { throw .sizeLimitExceeded(size: bytes.count, limit: maxSize) }
        return try decode(type, from: Array(bytes))
    }

    /// Version byte, then the key table.
    private func readHeader(_ cursor: Cursor) throws(CompactCodingError) {
        let version = try cursor.readByte([])
        guard version == CompactFormat.version else { throw .unsupportedVersion(version) }
        let count = try cursor.readCount([], minimumBytesEach: 1)
        let input = cursor.input
        for index in 0..<count {
            let path: [any CodingKey] = [KeyTableKey(index)]
            let length = try cursor.readCount(path, minimumBytesEach: 1)
            let start = cursor.position
            cursor.position += length
            guard let key = String(validating: input.bytes[start..<start + length], as: UTF8.self) else {
                throw .invalidUTF8(path: pathString(path))
            }
            guard input.index(ofKey: key) == nil else {
                throw .duplicateKey(path: pathString(path), key: key)
            }
            input.appendKey(key)
        }
    }
}

/// Names a key table entry in error paths: `keys[2]`.
struct KeyTableKey: CodingKey {
    let intValue: Int?
    var stringValue: String { "keys[\(intValue ?? 0)]" }
    init(_ index: Int) { intValue = index }
    init?(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}

final class DecodingInput {
    let bytes: [UInt8]
    let maxDepth: Int
    let userInfo: [CodingUserInfoKey: Any]
    private(set) var keys: [String] = []
    /// Built only for large tables; small ones are searched linearly (cheaper than hashing).
    private var keyLookup: [String: Int] = [:]
    private static let linearLimit = 8

    func index(ofKey key: String) -> Int? {
        keys.count > Self.linearLimit ? keyLookup[key] : keys.firstIndex(of: key)
    }

    func appendKey(_ key: String) {
        keys.append(key)
        if keys.count == Self.linearLimit + 1 {
            for (index, key) in keys.enumerated() { keyLookup[key] = index }
        } else if keys.count > Self.linearLimit + 1 {
            keyLookup[key] = keys.count - 1
        }
    }

    init(bytes: [UInt8], maxDepth: Int, userInfo: [CodingUserInfoKey: any Sendable]) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.userInfo = userInfo
    }
}

/// A read position in a range of the input. Values inside one unkeyed container share a
/// cursor; each keyed entry gets its own, bounded by the entry's length.
final class Cursor {
    let input: DecodingInput
    var position: Int
    let end: Int

    init(input: DecodingInput, position: Int, end: Int) {
        self.input = input
        self.position = position
        self.end = end
    }

    var remaining: Int { end - position }

    func readByte(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> UInt8 {
        guard position < end else { throw .truncated(path: pathString(path()), needed: 1, available: 0) }
        let byte = input.bytes[position]
        position += 1
        return byte
    }

    func peekByte() -> UInt8? {
        position < end ? input.bytes[position] : nil
    }

    /// An unsigned LEB128 varint of at most `U.bitWidth` bits, in its shortest form.
    func readVarint<U: FixedWidthInteger & UnsignedInteger>(_ type: U.Type, _ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> U {
        let maxBytes = (U.bitWidth + 6) / 7
        var result: U = 0
        for index in 0..<maxBytes {
            guard position < end else {
                throw .truncated(path: pathString(path()), needed: 1, available: 0)
            }
            let byte = input.bytes[position]
            position += 1
            let group = U(byte & 0x7F)
            if index == maxBytes - 1 {
                // The last possible byte carries only the bits left and no continuation.
                let bitsLeft = U.bitWidth - 7 * index
                guard byte & 0x80 == 0, group >> bitsLeft == 0 else {
                    throw .overlongVarint(path: pathString(path()))
                }
            }
            result |= group << (7 * index)
            if byte & 0x80 == 0 {
                // A final zero group after the first byte means a shorter form existed.
                guard byte != 0 || index == 0 else { throw .overlongVarint(path: pathString(path())) }
                return result
            }
        }
        throw .overlongVarint(path: pathString(path()))
    }

    /// A count or length, checked against the bytes left (each item needs at least
    /// `minimumBytesEach`) before anyone allocates for it.
    func readCount(_ path: @autoclosure () -> [any CodingKey], minimumBytesEach: Int) throws(CompactCodingError) -> Int {
        let count = try readVarint(UInt64.self, path())
        guard count <= UInt64(remaining / minimumBytesEach) else {
            throw .countExceedsRemaining(path: pathString(path()), count: count, remaining: remaining)
        }
        return Int(count)
    }

    func readBool(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> Bool {
        let byte = try readByte(path())
        switch byte {
        case 0: return false
        case 1: return true
        default: throw .invalidBool(path: pathString(path()), byte: byte)
        }
    }

    func readSigned<I: FixedWidthInteger & SignedInteger>(_ type: I.Type, _ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> I {
        let value = unzigzag(try readVarint(UInt64.self, path()))
        guard let result = I(exactly: value) else {
            throw .valueOutOfRange(path: pathString(path()), type: "\(I.self)", value: "\(value)")
        }
        return result
    }

    func readUnsigned<U: FixedWidthInteger & UnsignedInteger>(_ type: U.Type, _ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> U {
        let value = try readVarint(UInt64.self, path())
        guard let result = U(exactly: value) else {
            throw .valueOutOfRange(path: pathString(path()), type: "\(U.self)", value: "\(value)")
        }
        return result
    }

    func readInt128(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> Int128 {
        unzigzag128(try readVarint(UInt128.self, path()))
    }

    func readUInt128(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> UInt128 {
        try readVarint(UInt128.self, path())
    }

    func readLittleEndian<U: FixedWidthInteger>(_ type: U.Type, _ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> U {
        let size = U.bitWidth / 8
        guard remaining >= size else {
            throw .truncated(path: pathString(path()), needed: size, available: remaining)
        }
        var result: U = 0
        for index in 0..<size {
            result |= U(input.bytes[position + index]) << (8 * index)
        }
        position += size
        return result
    }

    func readFloat(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> Float {
        Float(bitPattern: try readLittleEndian(UInt32.self, path()))
    }

    func readDouble(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> Double {
        Double(bitPattern: try readLittleEndian(UInt64.self, path()))
    }

    /// A length-prefixed byte string, as a range of the input.
    func readByteString(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> Range<Int> {
        let length = try readCount(path(), minimumBytesEach: 1)
        let start = position
        position += length
        return start..<position
    }

    func readString(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> String {
        let range = try readByteString(path())
        guard let string = String(validating: input.bytes[range], as: UTF8.self) else {
            throw .invalidUTF8(path: pathString(path()))
        }
        return string
    }

    /// Nothing may be left of a bounded value.
    func finish(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) {
        guard remaining == 0 else { throw .trailingBytes(path: pathString(path()), count: remaining) }
    }
}

// MARK: - Decoding values

/// Decodes a `T` at `cursor`. `inField` is true for a keyed entry's value (non-empty here),
/// where an optional has no presence byte.
func decodeValue<T: Decodable>(_ type: T.Type, cursor: Cursor, inField: Bool, path: [any CodingKey], depth: Int) throws -> T {
    // The common primitives directly: the same bytes their init(from:) would read, without
    // a decoder and a container per value.
    if T.self == Int.self { return unsafeBitCast(try cursor.readSigned(Int.self, path), to: T.self) }
    if T.self == String.self { return unsafeBitCast(try cursor.readString(path), to: T.self) }
    if T.self == Double.self { return unsafeBitCast(try cursor.readDouble(path), to: T.self) }
    if T.self == Bool.self { return unsafeBitCast(try cursor.readBool(path), to: T.self) }
    if T.self == Int64.self { return unsafeBitCast(try cursor.readSigned(Int64.self, path), to: T.self) }
    if T.self == UInt64.self { return unsafeBitCast(try cursor.readUnsigned(UInt64.self, path), to: T.self) }
    if T.self == Int32.self { return unsafeBitCast(try cursor.readSigned(Int32.self, path), to: T.self) }
    if T.self == UInt32.self { return unsafeBitCast(try cursor.readUnsigned(UInt32.self, path), to: T.self) }
    if T.self == Float.self { return unsafeBitCast(try cursor.readFloat(path), to: T.self) }
    if T.self == [UInt8].self {
        let range = try cursor.readByteString(path)
        return try cast(Array(cursor.input.bytes[range]), path)
    }
    if T.self == Data.self {
        let range = try cursor.readByteString(path)
        return try cast(Data(cursor.input.bytes[range]), path)
    }
    if let optional = T.self as? any CompactOptionalDecodable.Type {
        let wrapped = WrappedDecoding(cursor: cursor, path: path, depth: depth)
        if inField { return try cast(try optional.compactSome(wrapped), path) }
        let marker = try cursor.readByte(path)
        switch marker {
        case 0: return try cast(optional.compactNone, path)
        case 1: return try cast(try optional.compactSome(wrapped), path)
        default: throw CompactCodingError.invalidMarker(path: pathString(path), byte: marker)
        }
    }
    let maxDepth = cursor.input.maxDepth
    guard depth < maxDepth else { throw CompactCodingError.depthLimitExceeded(path: pathString(path), limit: maxDepth) }
    let decoder = CompactDecoderImpl(cursor: cursor, codingPath: path, depth: depth + 1)
    let value = try T(from: decoder)
    try decoder.finish()
    return value
}

private func cast<T>(_ value: Any, _ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) -> T {
    guard let result = value as? T else {
        throw .typeMismatch(path: pathString(path()), expected: "\(T.self)", reason: "internal cast failed")
    }
    return result
}

struct WrappedDecoding: CompactWrappedDecoding {
    let cursor: Cursor
    let path: [any CodingKey]
    let depth: Int
    func decodeWrapped<W: Decodable>(_ type: W.Type) throws -> W {
        try decodeValue(type, cursor: cursor, inField: false, path: path, depth: depth)
    }
}

/// Which container a value's `init(from:)` asked for, kept so asking twice gets the same one
/// and so the decoder can check afterwards that the value was read whole.
final class DecoderState {
    enum Requested {
        case none
        case single
        case keyed(KeyedTable)
        case unkeyed(UnkeyedState)
    }
    var requested: Requested = .none
}

struct CompactDecoderImpl: Decoder {
    let cursor: Cursor
    let codingPath: [any CodingKey]
    let depth: Int
    let state = DecoderState()
    var userInfo: [CodingUserInfoKey: Any] { cursor.input.userInfo }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        let table: KeyedTable
        switch state.requested {
        case .keyed(let existing):
            table = existing
        case .none:
            table = try KeyedTable(cursor: cursor, path: codingPath)
            state.requested = .keyed(table)
        default:
            throw CompactCodingError.typeMismatch(path: pathString(codingPath), expected: "keyed container", reason: "another container was already requested")
        }
        return KeyedDecodingContainer(CompactKeyedDecoding<Key>(table: table, codingPath: codingPath, depth: depth))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let unkeyed: UnkeyedState
        switch state.requested {
        case .unkeyed(let existing):
            unkeyed = existing
        case .none:
            unkeyed = UnkeyedState(count: try cursor.readCount(codingPath, minimumBytesEach: 1))
            state.requested = .unkeyed(unkeyed)
        default:
            throw CompactCodingError.typeMismatch(path: pathString(codingPath), expected: "unkeyed container", reason: "another container was already requested")
        }
        return CompactUnkeyedDecoding(state: unkeyed, cursor: cursor, codingPath: codingPath, depth: depth)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        if case .none = state.requested { state.requested = .single }
        return CompactSingleValueDecoding(cursor: cursor, codingPath: codingPath, depth: depth)
    }

    /// After `init(from:)`: a value that read nothing consumes its empty marker; an unkeyed
    /// container must have been read to its end, or the next value would start mid-array.
    func finish() throws(CompactCodingError) {
        switch state.requested {
        case .none:
            let marker = try cursor.readByte(codingPath)
            guard marker == 0 else { throw .invalidMarker(path: pathString(codingPath), byte: marker) }
        case .unkeyed(let unkeyed):
            try unkeyed.checkConsumed(codingPath)
        case .single, .keyed:
            break
        }
    }
}

// MARK: - Keyed

/// A keyed container's entries, located (not decoded) when the container is opened.
final class KeyedTable {
    struct Entry {
        let ref: UInt64
        let start: Int
        let end: Int
    }
    let input: DecodingInput
    let entries: [Entry]
    private var index: [UInt64: Int] = [:]

    /// Small containers are searched linearly; larger ones get a dictionary.
    private static let linearLimit = 12

    init(cursor: Cursor, path: [any CodingKey]) throws(CompactCodingError) {
        input = cursor.input
        // Each entry takes at least a key byte and a length byte.
        let count = try cursor.readCount(path, minimumBytesEach: 2)
        var entries: [Entry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            let ref = try cursor.readVarint(UInt64.self, path)
            if ref & 1 == 0, ref >> 1 >= UInt64(input.keys.count) {
                throw .invalidKeyIndex(path: pathString(path), index: ref >> 1, tableSize: input.keys.count)
            }
            let length = try cursor.readCount(path + [RawKey(ref: ref, input: input)], minimumBytesEach: 1)
            entries.append(Entry(ref: ref, start: cursor.position, end: cursor.position + length))
            cursor.position += length
        }
        self.entries = entries
        if count > Self.linearLimit {
            for (offset, entry) in entries.enumerated() where index.updateValue(offset, forKey: entry.ref) != nil {
                throw .duplicateKey(path: pathString(path), key: RawKey(ref: entry.ref, input: input).stringValue)
            }
        } else {
            for i in entries.indices {
                for j in entries.indices where j < i && entries[j].ref == entries[i].ref {
                    throw .duplicateKey(path: pathString(path), key: RawKey(ref: entries[i].ref, input: input).stringValue)
                }
            }
        }
    }

    /// The entry for `key`, looked up in the one form the encoder would have written it in.
    func entry(for key: some CodingKey) -> Entry? {
        let ref: UInt64
        switch EncodedKey(key) {
        case .int(let int):
            ref = zigzag(Int64(int)) << 1 | 1
        case .string(let string):
            guard let index = input.index(ofKey: string) else { return nil }
            ref = UInt64(index) << 1
        }
        if entries.count > Self.linearLimit {
            return index[ref].map { entries[$0] }
        }
        return entries.first { $0.ref == ref }
    }

    func allKeys<Key: CodingKey>(_ type: Key.Type) -> [Key] {
        entries.compactMap { entry in
            if entry.ref & 1 == 1 {
                return Key(intValue: Int(unzigzag(entry.ref >> 1)))
            }
            return Key(stringValue: input.keys[Int(entry.ref >> 1)])
        }
    }
}

/// A key as it appears in the data, for error paths.
struct RawKey: CodingKey {
    let stringValue: String
    let intValue: Int?
    init(ref: UInt64, input: DecodingInput) {
        if ref & 1 == 1 {
            let int = Int(unzigzag(ref >> 1))
            intValue = int
            stringValue = "\(int)"
        } else {
            intValue = nil
            let index = Int(ref >> 1)
            stringValue = index < input.keys.count ? input.keys[index] : "#\(index)"
        }
    }
    init?(intValue: Int) { nil }
    init?(stringValue: String) { nil }
}

struct CompactKeyedDecoding<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let table: KeyedTable
    let codingPath: [any CodingKey]
    let depth: Int

    var allKeys: [Key] { table.allKeys(Key.self) }

    func contains(_ key: Key) -> Bool { table.entry(for: key) != nil }

    private func cursor(for key: some CodingKey) throws(CompactCodingError) -> Cursor {
        guard let entry = table.entry(for: key) else {
            throw .keyNotFound(path: pathString(codingPath), key: key.stringValue)
        }
        return Cursor(input: table.input, position: entry.start, end: entry.end)
    }

    /// Reads a primitive that must fill the entry exactly.
    private func primitive<T>(_ key: Key, _ read: (Cursor, () -> [any CodingKey]) throws(CompactCodingError) -> T) throws(CompactCodingError) -> T {
        let cursor = try cursor(for: key)
        guard cursor.remaining > 0 else { throw .valueNotFound(path: pathString(codingPath, key), type: "\(T.self)") }
        let value = try read(cursor, { codingPath + [key] })
        try cursor.finish(codingPath + [key])
        return value
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        try cursor(for: key).remaining == 0
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try primitive(key) { c, p throws(CompactCodingError) in try c.readBool(p()) } }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try primitive(key) { c, p throws(CompactCodingError) in try c.readString(p()) } }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try primitive(key) { c, p throws(CompactCodingError) in try c.readDouble(p()) } }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try primitive(key) { c, p throws(CompactCodingError) in try c.readFloat(p()) } }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try primitive(key) { c, p throws(CompactCodingError) in try c.readSigned(Int.self, p()) } }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try primitive(key) { c, p throws(CompactCodingError) in try c.readSigned(Int8.self, p()) } }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try primitive(key) { c, p throws(CompactCodingError) in try c.readSigned(Int16.self, p()) } }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try primitive(key) { c, p throws(CompactCodingError) in try c.readSigned(Int32.self, p()) } }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try primitive(key) { c, p throws(CompactCodingError) in try c.readSigned(Int64.self, p()) } }
    func decode(_ type: Int128.Type, forKey key: Key) throws -> Int128 { try primitive(key) { c, p throws(CompactCodingError) in try c.readInt128(p()) } }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try primitive(key) { c, p throws(CompactCodingError) in try c.readUnsigned(UInt.self, p()) } }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try primitive(key) { c, p throws(CompactCodingError) in try c.readUnsigned(UInt8.self, p()) } }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try primitive(key) { c, p throws(CompactCodingError) in try c.readUnsigned(UInt16.self, p()) } }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try primitive(key) { c, p throws(CompactCodingError) in try c.readUnsigned(UInt32.self, p()) } }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try primitive(key) { c, p throws(CompactCodingError) in try c.readUnsigned(UInt64.self, p()) } }
    func decode(_ type: UInt128.Type, forKey key: Key) throws -> UInt128 { try primitive(key) { c, p throws(CompactCodingError) in try c.readUInt128(p()) } }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        let cursor = try cursor(for: key)
        let path = codingPath + [key]
        if cursor.remaining == 0 {
            // An entry of length 0 is nil.
            if let optional = T.self as? any CompactOptionalDecodable.Type, let none = optional.compactNone as? T {
                return none
            }
            throw CompactCodingError.valueNotFound(path: pathString(path), type: "\(T.self)")
        }
        let value = try decodeValue(type, cursor: cursor, inField: true, path: path, depth: depth)
        try cursor.finish(path)
        return value
    }

    /// Absent or empty is nil; otherwise the entry holds the unwrapped value, so a `T` that is
    /// itself optional reads its presence byte (the mirror of the encoder's `encodeIfPresent`).
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let entry = table.entry(for: key), entry.end > entry.start else { return nil }
        let cursor = Cursor(input: table.input, position: entry.start, end: entry.end)
        let path = codingPath + [key]
        let value = try decodeValue(type, cursor: cursor, inField: false, path: path, depth: depth)
        try cursor.finish(path)
        return value
    }

    private func checkDepth(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) {
        let maxDepth = table.input.maxDepth
        guard depth < maxDepth else { throw .depthLimitExceeded(path: pathString(path()), limit: maxDepth) }
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        let path = codingPath + [key]
        try checkDepth(path)
        let cursor = try cursor(for: key)
        let nested = try KeyedTable(cursor: cursor, path: path)
        try cursor.finish(path)
        return KeyedDecodingContainer(CompactKeyedDecoding<NestedKey>(table: nested, codingPath: path, depth: depth + 1))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let path = codingPath + [key]
        try checkDepth(path)
        let cursor = try cursor(for: key)
        let state = UnkeyedState(count: try cursor.readCount(path, minimumBytesEach: 1))
        return CompactUnkeyedDecoding(state: state, cursor: cursor, codingPath: path, depth: depth + 1)
    }

    func superDecoder() throws -> any Decoder {
        let path = codingPath + [SuperKey()]
        try checkDepth(path)
        return CompactDecoderImpl(cursor: try cursor(for: SuperKey()), codingPath: path, depth: depth + 1)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        let path = codingPath + [key]
        try checkDepth(path)
        return CompactDecoderImpl(cursor: try cursor(for: key), codingPath: path, depth: depth + 1)
    }
}

// MARK: - Unkeyed

final class UnkeyedState {
    let count: Int
    var index = 0
    /// A nested unkeyed container opened on the shared cursor: it must be read to its end
    /// before this container reads on.
    var openChild: UnkeyedState?

    init(count: Int) { self.count = count }

    func checkConsumed(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) {
        try checkChild(path())
        guard index == count else {
            throw .typeMismatch(path: pathString(path()), expected: "\(count) elements read", reason: "only \(index) were decoded")
        }
    }

    func checkChild(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) {
        guard let child = openChild else { return }
        try child.checkConsumed(path() + [IndexKey(index - 1)])
        openChild = nil
    }
}

struct CompactUnkeyedDecoding: UnkeyedDecodingContainer {
    let state: UnkeyedState
    let cursor: Cursor
    let codingPath: [any CodingKey]
    let depth: Int

    var count: Int? { state.count }
    var isAtEnd: Bool { state.index >= state.count }
    var currentIndex: Int { state.index }

    /// The path of the next element, after checking there is one.
    @discardableResult
    private func next(_ expected: String) throws(CompactCodingError) -> [any CodingKey] {
        try check(expected)
        return codingPath + [IndexKey(state.index)]
    }

    private func check(_ expected: String) throws(CompactCodingError) {
        try state.checkChild(codingPath)
        guard !isAtEnd else {
            throw .typeMismatch(path: pathString(codingPath, IndexKey(state.index)), expected: expected, reason: "the unkeyed container holds only \(state.count) elements")
        }
    }

    /// A primitive element; its path is only built for an error.
    private mutating func element<T>(_ read: (Cursor, () -> [any CodingKey]) throws(CompactCodingError) -> T) throws(CompactCodingError) -> T {
        try check("\(T.self)")
        let index = state.index
        let value = try read(cursor, { codingPath + [IndexKey(index)] })
        state.index += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        try check("nil")
        guard cursor.peekByte() == 0 else { return false }
        cursor.position += 1
        state.index += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try element { c, p throws(CompactCodingError) in try c.readBool(p()) } }
    mutating func decode(_ type: String.Type) throws -> String { try element { c, p throws(CompactCodingError) in try c.readString(p()) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try element { c, p throws(CompactCodingError) in try c.readDouble(p()) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try element { c, p throws(CompactCodingError) in try c.readFloat(p()) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try element { c, p throws(CompactCodingError) in try c.readSigned(Int.self, p()) } }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try element { c, p throws(CompactCodingError) in try c.readSigned(Int8.self, p()) } }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try element { c, p throws(CompactCodingError) in try c.readSigned(Int16.self, p()) } }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try element { c, p throws(CompactCodingError) in try c.readSigned(Int32.self, p()) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try element { c, p throws(CompactCodingError) in try c.readSigned(Int64.self, p()) } }
    mutating func decode(_ type: Int128.Type) throws -> Int128 { try element { c, p throws(CompactCodingError) in try c.readInt128(p()) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try element { c, p throws(CompactCodingError) in try c.readUnsigned(UInt.self, p()) } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try element { c, p throws(CompactCodingError) in try c.readUnsigned(UInt8.self, p()) } }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try element { c, p throws(CompactCodingError) in try c.readUnsigned(UInt16.self, p()) } }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try element { c, p throws(CompactCodingError) in try c.readUnsigned(UInt32.self, p()) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try element { c, p throws(CompactCodingError) in try c.readUnsigned(UInt64.self, p()) } }
    mutating func decode(_ type: UInt128.Type) throws -> UInt128 { try element { c, p throws(CompactCodingError) in try c.readUInt128(p()) } }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let path = try next("\(T.self)")
        let value = try decodeValue(type, cursor: cursor, inField: false, path: path, depth: depth)
        state.index += 1
        return value
    }

    private func checkDepth(_ path: @autoclosure () -> [any CodingKey]) throws(CompactCodingError) {
        let maxDepth = cursor.input.maxDepth
        guard depth < maxDepth else { throw .depthLimitExceeded(path: pathString(path()), limit: maxDepth) }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let path = try next("keyed container")
        try checkDepth(path)
        let table = try KeyedTable(cursor: cursor, path: path)
        state.index += 1
        return KeyedDecodingContainer(CompactKeyedDecoding<NestedKey>(table: table, codingPath: path, depth: depth + 1))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let path = try next("unkeyed container")
        try checkDepth(path)
        let child = UnkeyedState(count: try cursor.readCount(path, minimumBytesEach: 1))
        state.index += 1
        state.openChild = child
        return CompactUnkeyedDecoding(state: child, cursor: cursor, codingPath: path, depth: depth + 1)
    }

    mutating func superDecoder() throws -> any Decoder {
        let path = try next("value")
        try checkDepth(path)
        state.index += 1
        return CompactDecoderImpl(cursor: cursor, codingPath: path, depth: depth + 1)
    }
}

// MARK: - Single value

struct CompactSingleValueDecoding: SingleValueDecodingContainer {
    let cursor: Cursor
    let codingPath: [any CodingKey]
    let depth: Int

    func decodeNil() -> Bool {
        // Only a bare 0x00 (encodeNil) is nil here; Optional values are recognised by type.
        guard cursor.peekByte() == 0 else { return false }
        cursor.position += 1
        return true
    }

    func decode(_ type: Bool.Type) throws -> Bool { try cursor.readBool(codingPath) }
    func decode(_ type: String.Type) throws -> String { try cursor.readString(codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try cursor.readDouble(codingPath) }
    func decode(_ type: Float.Type) throws -> Float { try cursor.readFloat(codingPath) }
    func decode(_ type: Int.Type) throws -> Int { try cursor.readSigned(Int.self, codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try cursor.readSigned(Int8.self, codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try cursor.readSigned(Int16.self, codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try cursor.readSigned(Int32.self, codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try cursor.readSigned(Int64.self, codingPath) }
    func decode(_ type: Int128.Type) throws -> Int128 { try cursor.readInt128(codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try cursor.readUnsigned(UInt.self, codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try cursor.readUnsigned(UInt8.self, codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try cursor.readUnsigned(UInt16.self, codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try cursor.readUnsigned(UInt32.self, codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try cursor.readUnsigned(UInt64.self, codingPath) }
    func decode(_ type: UInt128.Type) throws -> UInt128 { try cursor.readUInt128(codingPath) }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try decodeValue(type, cursor: cursor, inField: false, path: codingPath, depth: depth)
    }
}
