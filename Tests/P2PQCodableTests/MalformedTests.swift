import Testing
@testable import P2PQCodable

/// Every malformed input fails with exactly the error that names what is wrong.
@Suite("Malformed input")
struct MalformedTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var decode: @Sendable ([UInt8]) -> CompactCodingError?
        var expected: CompactCodingError
        var testDescription: String { name }

        init<T: Decodable & Sendable>(_ name: String, _ type: T.Type, _ bytes: [UInt8], _ expected: CompactCodingError, decoder: CompactDecoder = CompactDecoder()) {
            self.name = name
            self.bytes = bytes
            self.decode = { decodeError(T.self, $0, decoder) }
            self.expected = expected
        }
    }

    static let x: UInt8 = 0x78
    static let y: UInt8 = 0x79

    static let cases: [Case] = [
        Case("empty input", Int.self, [], .truncated(path: "", needed: 1, available: 0)),
        Case("unknown version", Int.self, [2, 0, 0], .unsupportedVersion(2)),
        Case("version 0", Int.self, [0, 0, 0], .unsupportedVersion(0)),
        Case("no key table", Int.self, [1], .truncated(path: "", needed: 1, available: 0)),
        Case("truncated varint", Int.self, [1, 0, 0x80], .truncated(path: "", needed: 1, available: 0)),
        Case("missing value", Int.self, [1, 0], .truncated(path: "", needed: 1, available: 0)),
        Case("non-minimal varint (0 in two bytes)", Int.self, [1, 0, 0x80, 0x00], .overlongVarint(path: "")),
        Case("non-minimal varint (1 in three bytes)", UInt64.self, [1, 0, 0x81, 0x80, 0x00], .overlongVarint(path: "")),
        Case("11-byte varint", UInt64.self, [1, 0] + [UInt8](repeating: 0xFF, count: 10) + [0x01], .overlongVarint(path: "")),
        Case("10th varint byte over 1", UInt64.self, [1, 0] + [UInt8](repeating: 0xFF, count: 9) + [0x02], .overlongVarint(path: "")),
        Case("20-byte 128-bit varint", UInt128.self, [1, 0] + [UInt8](repeating: 0xFF, count: 19) + [0x01], .overlongVarint(path: "")),
        Case("UInt8 out of range", UInt8.self, [1, 0, 0x80, 0x02], .valueOutOfRange(path: "", type: "UInt8", value: "256")),
        Case("Int8 out of range", Int8.self, [1, 0, 0x80, 0x02], .valueOutOfRange(path: "", type: "Int8", value: "128")),
        Case("Int32 out of range", Int32.self, [1, 0, 0x80, 0x80, 0x80, 0x80, 0x10], .valueOutOfRange(path: "", type: "Int32", value: "2147483648")),
        Case("UInt32 in a field out of range", [String: UInt32].self, [1, 1, 1, x, 1, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x10], .valueOutOfRange(path: "x", type: "UInt32", value: "4294967296")),
        Case("invalid boolean", Bool.self, [1, 0, 2], .invalidBool(path: "", byte: 2)),
        Case("invalid presence byte", Int?.self, [1, 0, 2, 0], .invalidMarker(path: "", byte: 2)),
        Case("invalid empty marker", Nothing.self, [1, 0, 5], .invalidMarker(path: "", byte: 5)),
        Case("truncated float", Float.self, [1, 0, 0, 0], .truncated(path: "", needed: 4, available: 2)),
        Case("truncated double", Double.self, [1, 0, 1, 2, 3, 4, 5, 6, 7], .truncated(path: "", needed: 8, available: 7)),
        Case("invalid UTF-8 string", String.self, [1, 0, 2, 0xC0, 0xAF], .invalidUTF8(path: ""),),
        Case("surrogate in UTF-8", String.self, [1, 0, 3, 0xED, 0xA0, 0x80], .invalidUTF8(path: "")),
        Case("string length beyond the input", String.self, [1, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x61], .countExceedsRemaining(path: "", count: 0xFFFF_FFFF, remaining: 1)),
        Case("byte array length beyond the input", [UInt8].self, [1, 0, 5, 1], .countExceedsRemaining(path: "", count: 5, remaining: 1)),
        Case("huge array count", [Int].self, [1, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 2], .countExceedsRemaining(path: "", count: UInt64.max >> 1, remaining: 1)),
        Case("array count beyond the input", [Int].self, [1, 0, 0x90, 0x4E, 2], .countExceedsRemaining(path: "", count: 10_000, remaining: 1)),
        Case("array count over the bytes left", [Int].self, [1, 0, 3, 2, 4], .countExceedsRemaining(path: "", count: 3, remaining: 2)),
        Case("element cut short", [String].self, [1, 0, 2, 1, 0x61, 5], .countExceedsRemaining(path: "[1]", count: 5, remaining: 0)),
        Case("element varint cut short", [Int].self, [1, 0, 2, 2, 0x80], .truncated(path: "[1]", needed: 1, available: 0)),
        Case("keyed entry count beyond the input", Point.self, [1, 0, 0x7F], .countExceedsRemaining(path: "", count: 127, remaining: 0)),
        Case("keyed entry length beyond the input", Point.self, [1, 1, 1, x, 1, 0, 5, 2], .countExceedsRemaining(path: "x", count: 5, remaining: 1)),
        Case("key table count beyond the input", Point.self, [1, 9, 1, x], .countExceedsRemaining(path: "", count: 9, remaining: 2)),
        Case("key length beyond the input", Point.self, [1, 1, 4, x], .countExceedsRemaining(path: "keys[0]", count: 4, remaining: 1)),
        Case("key table with invalid UTF-8", Point.self, [1, 1, 1, 0xFF, 0], .invalidUTF8(path: "keys[0]")),
        Case("key twice in the key table", Point.self, [1, 2, 1, x, 1, x, 0], .duplicateKey(path: "keys[1]", key: "x")),
        Case("key index outside the table", Point.self, [1, 0, 1, 0, 1, 2], .invalidKeyIndex(path: "", index: 0, tableSize: 0)),
        Case("duplicate key in a container", Point.self, [1, 1, 1, x, 2, 0, 1, 2, 0, 1, 4], .duplicateKey(path: "", key: "x")),
        Case("missing key", Point.self, [1, 1, 1, x, 1, 0, 1, 2], .keyNotFound(path: "", key: "y")),
        Case("nil for a non-optional field", Point.self, [1, 2, 1, x, 1, y, 2, 0, 0, 2, 1, 2], .valueNotFound(path: "x", type: "Int")),
        Case("bytes left in a field", Point.self, [1, 2, 1, x, 1, y, 2, 0, 2, 2, 2, 2, 1, 2], .trailingBytes(path: "x", count: 1)),
        Case("trailing garbage", Int.self, [1, 0, 2, 0xFF], .trailingBytes(path: "", count: 1)),
        Case("trailing garbage after a struct", Point.self, [1, 2, 1, x, 1, y, 2, 0, 1, 2, 2, 1, 2, 0], .trailingBytes(path: "", count: 1)),
        Case("a string read as an Int", Int.self, [1, 0, 3, 0x61, 0x62, 0x63], .trailingBytes(path: "", count: 3)),
        Case("unkeyed container too short for the type", Pair.self, [1, 0, 1, 2], .typeMismatch(path: "[1]", expected: "Int", reason: "the unkeyed container holds only 1 elements")),
        Case("elements left undecoded", FirstOnly.self, [1, 0, 2, 2, 4], .typeMismatch(path: "", expected: "2 elements read", reason: "only 1 were decoded")),
        Case("size limit", Int.self, [1, 0, 2, 0, 0], .sizeLimitExceeded(size: 5, limit: 4), decoder: CompactDecoder(maxSize: 4)),
    ]

    @Test("Malformed input fails with the precise error", arguments: cases)
    func malformed(testCase: Case) {
        #expect(testCase.decode(testCase.bytes) == testCase.expected)
    }

    @Test("Every strict prefix of a valid encoding fails, none crashes")
    func prefixes() throws {
        let value = Polygon(points: [Point(x: 1, y: 2), Point(x: -300, y: 1 << 33)])
        let bytes = try encode(value)
        for length in 0..<bytes.count {
            #expect(decodeError(Polygon.self, Array(bytes.prefix(length))) != nil)
        }
        #expect(decodeError(Polygon.self, bytes) == nil)
    }

    @Test("Errors deep inside carry the coding path")
    func nestedPaths() throws {
        // Encoded without "y": decoding as Point fails at the second point.
        let bytes = try encode(PolygonX(points: [PointX(x: 1), PointX(x: 2)]))
        #expect(decodeError(Polygon.self, bytes) == .keyNotFound(path: "points[0]", key: "y"))
        let strings = try encode(["a": ["b": [1, 2, 300]]])
        #expect(decodeError([String: [String: [UInt8]]].self, strings) != nil)
        #expect(decodeError([String: [String: [Int8]]].self, strings) == .valueOutOfRange(path: "a.b[2]", type: "Int8", value: "300"))
    }

    @Test("An unknown enum case is an error, not a crash")
    func unknownEnumCase() throws {
        struct Triangle: Codable { var triangle: Nothing }
        let bytes = try encode(Triangle(triangle: Nothing()))
        guard case .typeMismatch(let path, _, _)? = decodeError(Command.self, bytes) else {
            Issue.record("expected typeMismatch")
            return
        }
        #expect(path == "")
    }

    @Test("The error descriptions name the path")
    func descriptions() {
        #expect(CompactCodingError.keyNotFound(path: "points[0]", key: "y").description == "key \"y\" not found at points[0]")
        #expect(CompactCodingError.trailingBytes(path: "", count: 2).description == "2 trailing bytes at the root")
    }
}
