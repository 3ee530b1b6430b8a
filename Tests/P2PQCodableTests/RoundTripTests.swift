import Foundation
import Testing
@testable import P2PQCodable

@Suite("Round trips")
struct RoundTripTests {
    @Test("Integer extremes of every width")
    func integers() throws {
        for value in [Int8.min, -1, 0, 1, Int8.max] { try roundTrip(value) }
        for value in [Int16.min, -1, 0, Int16.max] { try roundTrip(value) }
        for value in [Int32.min, -1, 0, Int32.max] { try roundTrip(value) }
        for value in [Int64.min, Int64.min + 1, -1, 0, 1, Int64.max] { try roundTrip(value) }
        for value in [Int.min, Int.max] { try roundTrip(value) }
        for value in [UInt8.min, 127, 128, UInt8.max] { try roundTrip(value) }
        for value in [UInt16.min, UInt16.max] { try roundTrip(value) }
        for value in [UInt32.min, UInt32.max] { try roundTrip(value) }
        for value in [UInt64.min, 1 << 63, UInt64.max] { try roundTrip(value) }
        for value in [UInt.min, UInt.max] { try roundTrip(value) }
        for value in [Int128.min, -1, 0, Int128.max] { try roundTrip(value) }
        for value in [UInt128.min, UInt128.max] { try roundTrip(value) }
        // The widest varints: 10 bytes for 64 bits, 19 for 128.
        #expect(try encode(UInt64.max).count == 2 + 10)
        #expect(try encode(Int64.min).count == 2 + 10)
        #expect(try encode(UInt128.max).count == 2 + 19)
    }

    @Test("Floating-point specials keep their exact bits")
    func floats() throws {
        let doubles: [Double] = [0, -0.0, 1.5, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude, .pi]
        for value in doubles {
            let decoded = try CompactDecoder().decode(Double.self, from: try encode(value))
            #expect(decoded.bitPattern == value.bitPattern)
        }
        for value in [Double.nan, Double.signalingNaN, Double(nan: 0x1234, signaling: false), -Double.nan] {
            let decoded = try CompactDecoder().decode(Double.self, from: try encode(value))
            #expect(decoded.isNaN && decoded.bitPattern == value.bitPattern)
        }
        let floats: [Float] = [0, -0.0, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude, .nan]
        for value in floats {
            let decoded = try CompactDecoder().decode(Float.self, from: try encode(value))
            #expect(decoded.bitPattern == value.bitPattern)
        }
    }

    @Test("Strings, unicode included", arguments: ["", "a", "héllo wörld", "👩‍👩‍👧‍👦", "日本語のテキスト", "nul\u{0}inside", String(repeating: "x", count: 300)])
    func strings(value: String) throws {
        try roundTrip(value)
        #expect(try encode(value).count == 2 + (value.utf8.count < 128 ? 1 : 2) + value.utf8.count)
    }

    @Test("[UInt8] and Data are raw bytes, not arrays of numbers")
    func byteArrays() throws {
        let raw: [UInt8] = [0x00, 0x7F, 0x80, 0xFF]
        #expect(try encode(raw) == [1, 0, 4, 0x00, 0x7F, 0x80, 0xFF])
        #expect(try encode(Data(raw)) == [1, 0, 4, 0x00, 0x7F, 0x80, 0xFF])
        try roundTrip(raw)
        try roundTrip(Data(raw))
        try roundTrip([UInt8]())
        try roundTrip(Data())
        try roundTrip([[UInt8]]([[1, 2], [], [255]]))
        let big = [UInt8]((0..<10_000).map { UInt8(truncatingIfNeeded: $0) })
        try roundTrip(big)
        #expect(try encode(big).count == 2 + 2 + 10_000)
    }

    @Test("Optionals at every level")
    func optionals() throws {
        try roundTrip(Int?.none)
        try roundTrip(Int?.some(0))
        try roundTrip(Int??.some(.none))
        try roundTrip(Int??.none)
        try roundTrip([Int?]([1, nil, 0, nil]))
        try roundTrip(["a": 1, "b": nil] as [String: Int?])
        try roundTrip(Command.pop(max: nil, timeout: 2.5))
        try roundTrip(Command.pop(max: 3, timeout: nil))
        try roundTrip(Command.nested(nil))
        try roundTrip(Command.nested(.nested(.close)))
        #expect(try encode(Int?.none) == [1, 0, 0])
        #expect(try encode(Int?.some(1)) == [1, 0, 1, 2])
    }

    @Test("Structs: exact bytes of a two-field struct")
    func structBytes() throws {
        let bytes = try encode(Point(x: 1, y: -1))
        // version, key table ["x", "y"], 2 entries: (key 0, length 1, zigzag 1), (key 1, length 1, zigzag -1)
        #expect(bytes == [1, 2, 1, 0x78, 1, 0x79, 2, 0, 1, 2, 2, 1, 1])
        try roundTrip(Point(x: 1, y: -1))
        try roundTrip(Polygon(points: [Point(x: 0, y: 0), Point(x: 3, y: 4), Point(x: -7, y: 1 << 40)]))
        // The key table holds each name once however many points there are.
        let many = try encode(Polygon(points: (0..<50).map { Point(x: $0, y: $0) }))
        #expect(Array(many[0..<2]) == [1, 3])
    }

    @Test("Integer coding keys need no key table")
    func integerKeys() throws {
        let bytes = try encode(Numbered(first: 5, second: "s"))
        #expect(bytes[1] == 0)
        try roundTrip(Numbered(first: 5, second: "s"))
        try roundTrip([1: "one", -2: "minus two", Int.max: "max", Int.min: "min"] as [Int: String])
        // "05" has intValue 5 in a dictionary key, but must stay "05".
        try roundTrip(["05": 1, "5": 2, "-0": 3, "0": 4])
    }

    @Test("Enums with associated values, raw-value enums")
    func enums() throws {
        for command in [Command.push(queue: "jobs", items: [1, 2, 3]), .pop(max: 10, timeout: nil), .close, .ping(-4, "é"), .nested(.ping(1, ""))] {
            try roundTrip(command)
        }
        try roundTrip([Color.red, .green])
        try roundTrip(Tree.chain(20))
    }

    @Test("Nested arrays and dictionaries")
    func collections() throws {
        try roundTrip([[Int]]([[], [1], [2, 3], []]))
        try roundTrip([[[String]]]([[["a"]], [], [["b", "c"], []]]))
        try roundTrip(["a": [1, 2], "": [], "ü": [3]])
        try roundTrip(["x": ["y": 1], "z": [:]] as [String: [String: Int]])
        try roundTrip([Point(x: 1, y: 2): "a", Point(x: 3, y: 4): "b"] as [Point: String], canonical: false)
        try roundTrip(Set(["a", "b", "c", "d"]), canonical: false)
        try roundTrip([Nothing(), Nothing()])
        try roundTrip(Nothing())
        #expect(try encode(Nothing()) == [1, 0, 0])
    }

    @Test("Hand-written nested containers, superEncoder")
    func nestedContainers() throws {
        try roundTrip(Nested(name: "n", matrix: [[1, 2], [], [3]], inner: ["t": true, "f": false], pairs: [Pair(a: 1, b: 2), Pair(a: -3, b: 4)]))
        let dog = Dog(legs: 4, name: "Rex")
        let decoded = try CompactDecoder().decode(Dog.self, from: try encode(dog))
        #expect(decoded.name == "Rex" && decoded.legs == 4)
    }

    @Test("Foundation values: Date, URL, UUID")
    func foundationValues() throws {
        try roundTrip(Date(timeIntervalSinceReferenceDate: 123_456.789))
        try roundTrip(URL(string: "https://example.com/a?b=c")!)
        try roundTrip(UUID())
    }

    @Test("A struct with every kind of field")
    func everything() throws {
        try roundTrip(PropertyTests.randomEverything(using: &PropertyTests.fixedGenerator))
    }

    @Test("Equal dictionaries encode to equal bytes whatever their insertion order")
    func canonicalDictionaries() throws {
        var a: [String: Int] = [:]
        var b: [String: Int] = [:]
        let keys = (0..<200).map { "key\($0)" }
        for key in keys { a[key] = key.count }
        for key in keys.reversed() { b[key] = key.count }
        #expect(try encode(a) == encode(b))
    }

    @Test("Optional fields: explicit encode and encodeIfPresent decode alike")
    func optionalFieldForms() throws {
        struct Explicit: Encodable {
            var value: Int?
            enum CodingKeys: CodingKey { case value }
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(value, forKey: .value)
            }
        }
        struct Synthesized: Codable, Equatable { var value: Int? }
        for value in [nil, 0, 7] as [Int?] {
            let decoded = try CompactDecoder().decode(Synthesized.self, from: try encode(Explicit(value: value)))
            #expect(decoded.value == value)
            try roundTrip(Synthesized(value: value))
        }
        struct TwoLevels: Codable, Equatable { var value: Int?? }
        for value in [.none, .some(.none), .some(.some(3))] as [Int??] {
            try roundTrip(TwoLevels(value: value))
        }
        // An absent optional costs nothing: no entry at all.
        #expect(try encode(Synthesized(value: nil)) == [1, 0, 0])
    }

    @Test("The size limit applies to encoding and decoding")
    func sizeLimits() throws {
        let value = [UInt8](repeating: 1, count: 100)
        let small = CompactEncoder(maxSize: 50)
        #expect(throws: CompactCodingError.sizeLimitExceeded(size: 103, limit: 50)) { try small.encode(value) }
        let bytes = try encode(value)
        #expect(throws: CompactCodingError.sizeLimitExceeded(size: 103, limit: 50)) {
            try CompactDecoder(maxSize: 50).decode([UInt8].self, from: bytes)
        }
    }

    @Test("The depth limit stops deep and cyclic values, encoding and decoding")
    func depthLimits() throws {
        let deep = Tree.chain(40)
        let bytes = try encode(deep)
        #expect(try CompactDecoder().decode(Tree.self, from: bytes) == deep)
        guard case .depthLimitExceeded(_, let limit)? = decodeError(Tree.self, bytes, CompactDecoder(maxDepth: 10)) else {
            Issue.record("expected depthLimitExceeded")
            return
        }
        #expect(limit == 10)
        let encoded = Result { () throws(CompactCodingError) in try CompactEncoder(maxDepth: 10).encode(deep) }
        guard case .failure(.depthLimitExceeded(_, 10)) = encoded else {
            Issue.record("expected depthLimitExceeded, got \(encoded)")
            return
        }
        // A reference cycle is a depth error, not a stack overflow.
        final class Loop: Encodable, @unchecked Sendable {
            var next: Loop?
        }
        let loop = Loop()
        loop.next = loop
        let cyclic = Result { () throws(CompactCodingError) in try CompactEncoder().encode(loop) }
        guard case .failure(.depthLimitExceeded) = cyclic else {
            Issue.record("expected depthLimitExceeded, got \(cyclic)")
            return
        }
        loop.next = nil
    }

    @Test("Input as Data, ArraySlice and raw buffer")
    func inputForms() throws {
        let bytes = try encode(Point(x: 3, y: 4))
        #expect(try CompactDecoder().decode(Point.self, from: Data(bytes)) == Point(x: 3, y: 4))
        #expect(try CompactDecoder().decode(Point.self, from: ([0xEE] + bytes)[1...]) == Point(x: 3, y: 4))
        let fromBuffer = try bytes.withUnsafeBytes { buffer in try CompactDecoder().decode(Point.self, from: buffer) }
        #expect(fromBuffer == Point(x: 3, y: 4))
    }
}
