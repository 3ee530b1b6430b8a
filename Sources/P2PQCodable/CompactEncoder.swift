#if canImport(FoundationEssentials)
import FoundationEssentials
#elseif canImport(Foundation)
import Foundation
#endif

/// Encodes `Encodable` values in the compact binary format described in docs/encoding.md.
///
/// A value type holding only settings: share it freely across tasks. Equal values encode to
/// equal bytes as long as their `encode(to:)` is deterministic (keyed entries, dictionaries
/// included, are written sorted; `Set` is not sorted), so the bytes can serve as a cache key.
public struct CompactEncoder: Sendable {
    /// The deepest nesting of containers and values allowed; deeper values (including
    /// reference cycles) fail with ``CompactCodingError/depthLimitExceeded(path:limit:)``.
    public var maxDepth: Int
    /// The largest encoding produced; larger fails with
    /// ``CompactCodingError/sizeLimitExceeded(size:limit:)``.
    public var maxSize: Int
    /// Passed to `Encoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable]

    public init(maxDepth: Int = 128, maxSize: Int = 16 << 20, userInfo: [CodingUserInfoKey: any Sendable] = [:]) {
        self.maxDepth = maxDepth
        self.maxSize = maxSize
        self.userInfo = userInfo
    }

    /// The encoding of `value`: version byte, key table, then the value.
    public func encode<T: Encodable>(_ value: T) throws(CompactCodingError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(value, into: &out)
        return out
    }

    /// Appends the encoding of `value` to `out` (for instance after a frame header), and
    /// returns its size. On error `out` is left as it was.
    @discardableResult
    public func encode<T: Encodable>(_ value: T, into out: inout [UInt8]) throws(CompactCodingError) -> Int {
        let root = EncodedValue()
        let settings = EncoderSettings(maxDepth: maxDepth, userInfo: userInfo)
        do {
            try encodeValue(value, into: root, inField: false, path: [], depth: 0, settings: settings)
        } catch {
            throw compactError(from: error)
        }
        var serializer = Serializer()
        let bodySize = serializer.measure(root)
        var tableSize = varintSize(UInt64(serializer.keys.count))
        for key in serializer.keys { tableSize += varintSize(UInt64(key.utf8.count)) + key.utf8.count }
        let total = 1 + tableSize + bodySize
        guard total <= maxSize else { throw .sizeLimitExceeded(size: total, limit: maxSize) }
        out.reserveCapacity(out.count + total)
        out.append(CompactFormat.version)
        appendVarint(UInt64(serializer.keys.count), to: &out)
        for key in serializer.keys {
            appendVarint(UInt64(key.utf8.count), to: &out)
            out.append(contentsOf: key.utf8)
        }
        serializer.write(root, into: &out)
        return total
    }
}

/// Format constants.
public enum CompactFormat {
    /// The first byte of every encoding.
    public static let version: UInt8 = 1
}

final class EncoderSettings {
    let maxDepth: Int
    let userInfo: [CodingUserInfoKey: Any]
    init(maxDepth: Int, userInfo: [CodingUserInfoKey: any Sendable]) {
        self.maxDepth = maxDepth
        self.userInfo = userInfo
    }
}

// MARK: - The value tree

/// A key as written: an integer when the key type round-trips it, else a key table string.
enum EncodedKey: Hashable {
    case int(Int)
    case string(String)

    init(_ key: some CodingKey) {
        // The integer form is used only when it gives the same key back, so a dictionary key
        // like "05" (whose intValue is 5) keeps its string.
        if let int = key.intValue, int.magnitude < (1 << 62),
           let back = type(of: key).init(intValue: int), back.stringValue == key.stringValue {
            self = .int(int)
        } else {
            self = .string(key.stringValue)
        }
    }

    /// Integers first, by value; then strings by their UTF-8 bytes.
    static func precedes(_ a: EncodedKey, _ b: EncodedKey) -> Bool {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x < y
        case (.int, .string): return true
        case (.string, .int): return false
        case (.string(let x), .string(let y)):
            return x.utf8.lexicographicallyPrecedes(y.utf8)
        }
    }
}

/// One value slot; containers fill it in as the value encodes itself.
final class EncodedValue {
    enum Content {
        /// No container was requested: written as a single 0x00.
        case empty
        /// Already-encoded bytes (a primitive).
        case bytes([UInt8])
        /// A varint (integers, booleans), kept unencoded to save an array per value.
        case varint(UInt64)
        /// `count` little-endian bytes of `bits` (floats).
        case fixed(bits: UInt64, count: Int)
        /// A length-prefixed string, written straight from its UTF-8 view.
        case string(String)
        /// A nil as a keyed entry's value: written as nothing (the entry's length is 0).
        case fieldNil
        /// A present optional outside a keyed entry: 0x01 then the value.
        case some(EncodedValue)
        case keyed(KeyedStore)
        case unkeyed(UnkeyedStore)
    }
    var content: Content = .empty
    var size = -1
}

final class KeyedStore {
    var entries: [(key: EncodedKey, value: EncodedValue)] = []
    var normalized = false
}

final class UnkeyedStore {
    var elements: [EncodedValue] = []
}

/// Lays the tree out: a measuring pass (which also sorts entries and numbers the key table in
/// first-use order), then a writing pass in the same order.
struct Serializer {
    var keys: [String] = []
    var keyIndex: [String: Int] = [:]

    mutating func keyRef(_ key: EncodedKey) -> UInt64 {
        switch key {
        case .int(let int):
            return zigzag(Int64(int)) << 1 | 1
        case .string(let string):
            // Small tables are searched linearly (cheaper than hashing), large ones hashed.
            if keys.count <= 8 {
                if let index = keys.firstIndex(of: string) { return UInt64(index) << 1 }
            } else if let index = keyIndex[string] {
                return UInt64(index) << 1
            }
            keys.append(string)
            if keys.count == 9 {
                for (index, key) in keys.enumerated() { keyIndex[key] = index }
            } else if keys.count > 9 {
                keyIndex[string] = keys.count - 1
            }
            return UInt64(keys.count - 1) << 1
        }
    }

    mutating func measure(_ value: EncodedValue) -> Int {
        let size: Int
        switch value.content {
        case .empty: size = 1
        case .bytes(let bytes): size = bytes.count
        case .varint(let value): size = varintSize(value)
        case .fixed(_, let count): size = count
        case .string(let string):
            let count = string.utf8.count
            size = varintSize(UInt64(count)) + count
        case .fieldNil: size = 0
        case .some(let inner): size = 1 + measure(inner)
        case .keyed(let store):
            normalize(store)
            var total = varintSize(UInt64(store.entries.count))
            for entry in store.entries {
                let valueSize = measure(entry.value)
                total += varintSize(keyRef(entry.key)) + varintSize(UInt64(valueSize)) + valueSize
            }
            size = total
        case .unkeyed(let store):
            var total = varintSize(UInt64(store.elements.count))
            for element in store.elements { total += measure(element) }
            size = total
        }
        value.size = size
        return size
    }

    /// Sorts the entries by key; of a key written twice the last write wins.
    func normalize(_ store: KeyedStore) {
        guard !store.normalized else { return }
        store.normalized = true
        var sorted = true
        for i in store.entries.indices.dropFirst()
        where !EncodedKey.precedes(store.entries[i - 1].key, store.entries[i].key) {
            sorted = false
            break
        }
        guard !sorted else { return }
        let ordered = store.entries.enumerated().sorted { a, b in
            if a.element.key == b.element.key { return a.offset < b.offset }
            return EncodedKey.precedes(a.element.key, b.element.key)
        }
        var result: [(key: EncodedKey, value: EncodedValue)] = []
        result.reserveCapacity(ordered.count)
        for item in ordered {
            if let last = result.last, last.key == item.element.key {
                result[result.count - 1] = item.element
            } else {
                result.append(item.element)
            }
        }
        store.entries = result
    }

    mutating func write(_ value: EncodedValue, into out: inout [UInt8]) {
        switch value.content {
        case .empty: out.append(0)
        case .bytes(let bytes): out.append(contentsOf: bytes)
        case .varint(let value): appendVarint(value, to: &out)
        case .fixed(let bits, let count):
            var rest = bits
            for _ in 0..<count {
                out.append(UInt8(truncatingIfNeeded: rest))
                rest >>= 8
            }
        case .string(let string):
            appendVarint(UInt64(string.utf8.count), to: &out)
            out.append(contentsOf: string.utf8)
        case .fieldNil: break
        case .some(let inner):
            out.append(1)
            write(inner, into: &out)
        case .keyed(let store):
            appendVarint(UInt64(store.entries.count), to: &out)
            for entry in store.entries {
                appendVarint(keyRef(entry.key), to: &out)
                appendVarint(UInt64(entry.value.size), to: &out)
                write(entry.value, into: &out)
            }
        case .unkeyed(let store):
            appendVarint(UInt64(store.elements.count), to: &out)
            for element in store.elements { write(element, into: &out) }
        }
    }
}

// MARK: - Encoding values

/// Encodes `value` into `slot`. `inField` is true for a keyed entry's value, where an
/// optional needs no presence byte (the entry length says nil).
func encodeValue<T: Encodable>(
    _ value: T, into slot: EncodedValue, inField: Bool, path: [any CodingKey], depth: Int,
    settings: EncoderSettings
) throws {
    // The common primitives directly: the same bytes their encode(to:) would write, without
    // an encoder and a container per value.
    if T.self == Int.self { slot.content = (Primitive.signed(Int64(unsafeBitCast(value, to: Int.self)))); return }
    if T.self == String.self { slot.content = (Primitive.string(unsafeBitCast(value, to: String.self))); return }
    if T.self == Double.self { slot.content = (Primitive.double(unsafeBitCast(value, to: Double.self))); return }
    if T.self == Bool.self { slot.content = (Primitive.bool(unsafeBitCast(value, to: Bool.self))); return }
    if T.self == Int64.self { slot.content = (Primitive.signed(unsafeBitCast(value, to: Int64.self))); return }
    if T.self == UInt64.self { slot.content = (Primitive.unsigned(unsafeBitCast(value, to: UInt64.self))); return }
    if T.self == Int32.self { slot.content = (Primitive.signed(Int64(unsafeBitCast(value, to: Int32.self)))); return }
    if T.self == UInt32.self { slot.content = (Primitive.unsigned(UInt64(unsafeBitCast(value, to: UInt32.self)))); return }
    if T.self == Float.self { slot.content = (Primitive.float(unsafeBitCast(value, to: Float.self))); return }
    // Byte arrays are raw bytes, not arrays of numbers.
    if T.self == [UInt8].self {
        let bytes = unsafeBitCast(value, to: [UInt8].self)
        var out: [UInt8] = []
        out.reserveCapacity(varintSize(UInt64(bytes.count)) + bytes.count)
        appendVarint(UInt64(bytes.count), to: &out)
        out.append(contentsOf: bytes)
        slot.content = .bytes(out)
        return
    }
    if T.self == Data.self {
        let data = unsafeBitCast(value, to: Data.self)
        var out: [UInt8] = []
        out.reserveCapacity(varintSize(UInt64(data.count)) + data.count)
        appendVarint(UInt64(data.count), to: &out)
        out.append(contentsOf: data)
        slot.content = .bytes(out)
        return
    }
    if let optional = value as? any CompactOptionalEncodable {
        guard let wrapped = optional.compactWrapped else {
            slot.content = inField ? .fieldNil : .varint(0)
            return
        }
        if inField {
            try encodeValue(wrapped, into: slot, inField: false, path: path, depth: depth, settings: settings)
        } else {
            let inner = EncodedValue()
            slot.content = .some(inner)
            try encodeValue(wrapped, into: inner, inField: false, path: path, depth: depth, settings: settings)
        }
        return
    }
    guard depth < settings.maxDepth else {
        throw CompactCodingError.depthLimitExceeded(path: pathString(path), limit: settings.maxDepth)
    }
    try value.encode(to: CompactEncoderImpl(slot: slot, codingPath: path, depth: depth + 1, settings: settings))
}

struct CompactEncoderImpl: Encoder {
    let slot: EncodedValue
    let codingPath: [any CodingKey]
    let depth: Int
    let settings: EncoderSettings
    var userInfo: [CodingUserInfoKey: Any] { settings.userInfo }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let store: KeyedStore
        if case .keyed(let existing) = slot.content {
            store = existing
        } else {
            store = KeyedStore()
            slot.content = .keyed(store)
        }
        return KeyedEncodingContainer(CompactKeyedEncoding<Key>(store: store, codingPath: codingPath, depth: depth, settings: settings))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let store: UnkeyedStore
        if case .unkeyed(let existing) = slot.content {
            store = existing
        } else {
            store = UnkeyedStore()
            slot.content = .unkeyed(store)
        }
        return CompactUnkeyedEncoding(store: store, codingPath: codingPath, depth: depth, settings: settings)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        CompactSingleValueEncoding(slot: slot, codingPath: codingPath, depth: depth, settings: settings)
    }
}

// Primitive encodings, as slot contents.
enum Primitive {
    static func bool(_ value: Bool) -> EncodedValue.Content { .varint(value ? 1 : 0) }
    static func signed(_ value: Int64) -> EncodedValue.Content { .varint(zigzag(value)) }
    static func unsigned(_ value: UInt64) -> EncodedValue.Content { .varint(value) }
    static func int128(_ value: Int128) -> EncodedValue.Content {
        var out: [UInt8] = []
        appendVarint(zigzag128(value), to: &out)
        return .bytes(out)
    }
    static func uint128(_ value: UInt128) -> EncodedValue.Content {
        var out: [UInt8] = []
        appendVarint(value, to: &out)
        return .bytes(out)
    }
    static func float(_ value: Float) -> EncodedValue.Content { .fixed(bits: UInt64(value.bitPattern), count: 4) }
    static func double(_ value: Double) -> EncodedValue.Content { .fixed(bits: value.bitPattern, count: 8) }
    static func string(_ value: String) -> EncodedValue.Content { .string(value) }
}

struct CompactSingleValueEncoding: SingleValueEncodingContainer {
    let slot: EncodedValue
    let codingPath: [any CodingKey]
    let depth: Int
    let settings: EncoderSettings

    mutating func encodeNil() throws { slot.content = .varint(0) }
    mutating func encode(_ value: Bool) throws { slot.content = (Primitive.bool(value)) }
    mutating func encode(_ value: String) throws { slot.content = (Primitive.string(value)) }
    mutating func encode(_ value: Double) throws { slot.content = (Primitive.double(value)) }
    mutating func encode(_ value: Float) throws { slot.content = (Primitive.float(value)) }
    mutating func encode(_ value: Int) throws { slot.content = (Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int8) throws { slot.content = (Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int16) throws { slot.content = (Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int32) throws { slot.content = (Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int64) throws { slot.content = (Primitive.signed(value)) }
    mutating func encode(_ value: Int128) throws { slot.content = (Primitive.int128(value)) }
    mutating func encode(_ value: UInt) throws { slot.content = (Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt8) throws { slot.content = (Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt16) throws { slot.content = (Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt32) throws { slot.content = (Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt64) throws { slot.content = (Primitive.unsigned(value)) }
    mutating func encode(_ value: UInt128) throws { slot.content = (Primitive.uint128(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        // The value takes this slot's place: no extra nesting level in the bytes.
        try encodeValue(value, into: slot, inField: false, path: codingPath, depth: depth, settings: settings)
    }
}

struct CompactUnkeyedEncoding: UnkeyedEncodingContainer {
    let store: UnkeyedStore
    let codingPath: [any CodingKey]
    let depth: Int
    let settings: EncoderSettings
    var count: Int { store.elements.count }

    private func append(_ content: EncodedValue.Content) {
        let slot = EncodedValue()
        slot.content = content
        store.elements.append(slot)
    }

    private func nextSlot() -> (EncodedValue, [any CodingKey]) {
        let slot = EncodedValue()
        let path = codingPath + [IndexKey(store.elements.count)]
        store.elements.append(slot)
        return (slot, path)
    }

    mutating func encodeNil() throws { append(.varint(0)) }
    mutating func encode(_ value: Bool) throws { append(Primitive.bool(value)) }
    mutating func encode(_ value: String) throws { append(Primitive.string(value)) }
    mutating func encode(_ value: Double) throws { append(Primitive.double(value)) }
    mutating func encode(_ value: Float) throws { append(Primitive.float(value)) }
    mutating func encode(_ value: Int) throws { append(Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int8) throws { append(Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int16) throws { append(Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int32) throws { append(Primitive.signed(Int64(value))) }
    mutating func encode(_ value: Int64) throws { append(Primitive.signed(value)) }
    mutating func encode(_ value: Int128) throws { append(Primitive.int128(value)) }
    mutating func encode(_ value: UInt) throws { append(Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt8) throws { append(Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt16) throws { append(Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt32) throws { append(Primitive.unsigned(UInt64(value))) }
    mutating func encode(_ value: UInt64) throws { append(Primitive.unsigned(value)) }
    mutating func encode(_ value: UInt128) throws { append(Primitive.uint128(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let (slot, path) = nextSlot()
        try encodeValue(value, into: slot, inField: false, path: path, depth: depth, settings: settings)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let (slot, path) = nextSlot()
        return CompactEncoderImpl(slot: slot, codingPath: path, depth: depth + 1, settings: settings).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let (slot, path) = nextSlot()
        return CompactEncoderImpl(slot: slot, codingPath: path, depth: depth + 1, settings: settings).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let (slot, path) = nextSlot()
        return CompactEncoderImpl(slot: slot, codingPath: path, depth: depth + 1, settings: settings)
    }
}

struct CompactKeyedEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let store: KeyedStore
    let codingPath: [any CodingKey]
    let depth: Int
    let settings: EncoderSettings

    private func put(_ content: EncodedValue.Content, _ key: Key) {
        let slot = EncodedValue()
        slot.content = content
        store.entries.append((EncodedKey(key), slot))
    }

    private func slot(for key: some CodingKey) -> EncodedValue {
        let slot = EncodedValue()
        store.entries.append((EncodedKey(key), slot))
        return slot
    }

    mutating func encodeNil(forKey key: Key) throws {
        slot(for: key).content = .fieldNil
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws { put(Primitive.bool(value), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { put(Primitive.string(value), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { put(Primitive.double(value), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { put(Primitive.float(value), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { put(Primitive.signed(Int64(value)), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { put(Primitive.signed(Int64(value)), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { put(Primitive.signed(Int64(value)), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { put(Primitive.signed(Int64(value)), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { put(Primitive.signed(value), key) }
    mutating func encode(_ value: Int128, forKey key: Key) throws { put(Primitive.int128(value), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { put(Primitive.unsigned(UInt64(value)), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { put(Primitive.unsigned(UInt64(value)), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { put(Primitive.unsigned(UInt64(value)), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { put(Primitive.unsigned(UInt64(value)), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { put(Primitive.unsigned(value), key) }
    mutating func encode(_ value: UInt128, forKey key: Key) throws { put(Primitive.uint128(value), key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try encodeValue(value, into: slot(for: key), inField: true, path: codingPath + [key], depth: depth, settings: settings)
    }

    /// The entry holds the unwrapped value, exactly as `encode(Optional(value), forKey:)` would
    /// write it, so a `T` that is itself optional keeps its presence byte (`.some(nil)` survives).
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws {
        guard let value else { return }
        try encodeValue(value, into: slot(for: key), inField: false, path: codingPath + [key], depth: depth, settings: settings)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        CompactEncoderImpl(slot: slot(for: key), codingPath: codingPath + [key], depth: depth + 1, settings: settings).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        CompactEncoderImpl(slot: slot(for: key), codingPath: codingPath + [key], depth: depth + 1, settings: settings).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        CompactEncoderImpl(slot: slot(for: SuperKey()), codingPath: codingPath + [SuperKey()], depth: depth + 1, settings: settings)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        CompactEncoderImpl(slot: slot(for: key), codingPath: codingPath + [key], depth: depth + 1, settings: settings)
    }
}
