import Foundation
import Testing
@testable import P2PQCodable

/// The examples of docs/encoding.md, byte for byte.
@Suite("Documented format")
struct FormatTests {
    @Test("Examples from docs/encoding.md")
    func documentedExamples() throws {
        #expect(try encode(Point(x: 1, y: -1)) == [0x01, 0x02, 0x01, 0x78, 0x01, 0x79, 0x02, 0x00, 0x01, 0x02, 0x02, 0x01, 0x01])
        #expect(try encode(1) == [0x01, 0x00, 0x02])
        #expect(try encode(Int?.none) == [0x01, 0x00, 0x00])
        #expect(try encode(Int?.some(1)) == [0x01, 0x00, 0x01, 0x02])
        #expect(try encode([UInt8]([0, 255])) == [0x01, 0x00, 0x02, 0x00, 0xFF])
        #expect(try encode("é") == [0x01, 0x00, 0x02, 0xC3, 0xA9])
        #expect(try encode([1, 2]) == [0x01, 0x00, 0x02, 0x02, 0x04])
        #expect(try encode(1.0) == [0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF0, 0x3F])
        #expect(try encode([5: "a"] as [Int: String]) == [0x01, 0x00, 0x01, 0x15, 0x02, 0x01, 0x61])
        // 100 small points: 6 header bytes, 1 count byte, 7 bytes a point.
        let points = (0..<100).map { Point(x: $0 % 50, y: -($0 % 50)) }
        #expect(try encode(points).count == 707)
        #expect(try JSONEncoder().encode(points).count > 1_500)
    }

    @Test("Varint and zigzag edges")
    func varints() {
        func bytes(_ value: UInt64) -> [UInt8] {
            var out: [UInt8] = []
            appendVarint(value, to: &out)
            return out
        }
        #expect(bytes(0) == [0x00])
        #expect(bytes(127) == [0x7F])
        #expect(bytes(128) == [0x80, 0x01])
        #expect(bytes(300) == [0xAC, 0x02])
        #expect(bytes(.max) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        for value: UInt64 in [0, 1, 127, 128, 16_383, 16_384, 1 << 63, .max] {
            #expect(varintSize(value) == bytes(value).count)
        }
        #expect(zigzag(0) == 0 && zigzag(-1) == 1 && zigzag(1) == 2 && zigzag(-2) == 3)
        #expect(zigzag(.max) == .max - 1 && zigzag(.min) == .max)
        for value: Int64 in [0, -1, 1, .min, .max, 12_345, -12_345] {
            #expect(unzigzag(zigzag(value)) == value)
        }
    }

    @Test("Keyed entries are written sorted, unknown entries skipped")
    func keyedEntries() throws {
        struct Reversed: Encodable {
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: AnyKey.self)
                try container.encode(2, forKey: AnyKey("b"))
                try container.encode(1, forKey: AnyKey("a"))
                try container.encode(9, forKey: AnyKey("a"))  // last write wins
            }
        }
        struct AB: Codable, Equatable { var a: Int; var b: Int }
        let bytes = try encode(Reversed())
        // Key table in first-use order of the sorted walk: "a" then "b".
        #expect(bytes == [0x01, 0x02, 0x01, 0x61, 0x01, 0x62, 0x02, 0x00, 0x01, 0x12, 0x02, 0x01, 0x04])
        #expect(try CompactDecoder().decode(AB.self, from: bytes) == AB(a: 9, b: 2))
        // A newer writer's extra field is skipped by an older reader.
        struct ABC: Codable { var a: Int; var b: Int; var c: [String] }
        #expect(try CompactDecoder().decode(AB.self, from: encode(ABC(a: 1, b: 2, c: ["x"]))) == AB(a: 1, b: 2))
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

@Suite("API details")
struct APITests {
    @Test("encode(_:into:) appends after existing bytes and returns the size")
    func appendInto() throws {
        var buffer: [UInt8] = [0xAA, 0xBB]
        let size = try CompactEncoder().encode(Point(x: 1, y: -1), into: &buffer)
        #expect(size == 13)
        #expect(Array(buffer[2...]) == (try encode(Point(x: 1, y: -1))))
        #expect(Array(buffer[..<2]) == [0xAA, 0xBB])
        // A failure leaves the buffer as it was.
        let failed = Result { () throws(CompactCodingError) in try CompactEncoder(maxSize: 4).encode(Point(x: 1, y: 2), into: &buffer) }
        guard case .failure(.sizeLimitExceeded) = failed else {
            Issue.record("expected sizeLimitExceeded")
            return
        }
        #expect(buffer.count == 15)
    }

    @Test("userInfo reaches encode(to:) and init(from:)")
    func userInfo() throws {
        let key = CodingUserInfoKey(rawValue: "scale")!
        struct Scaled: Codable, Equatable {
            var value: Int
            init(value: Int) { self.value = value }
            init(from decoder: any Decoder) throws {
                let scale = decoder.userInfo[CodingUserInfoKey(rawValue: "scale")!] as? Int ?? 1
                value = try decoder.singleValueContainer().decode(Int.self) / scale
            }
            func encode(to encoder: any Encoder) throws {
                let scale = encoder.userInfo[CodingUserInfoKey(rawValue: "scale")!] as? Int ?? 1
                var container = encoder.singleValueContainer()
                try container.encode(value * scale)
            }
        }
        let bytes = try CompactEncoder(userInfo: [key: 10]).encode(Scaled(value: 3))
        #expect(bytes == [1, 0, 60])
        #expect(try CompactDecoder(userInfo: [key: 10]).decode(Scaled.self, from: bytes) == Scaled(value: 3))
    }

    @Test("superEncoder in unkeyed and keyed containers, default key \"super\"")
    func superCoders() throws {
        struct Wrapped: Codable, Equatable {
            var inner: Point
            var tail: Int
            init(inner: Point, tail: Int) { self.inner = inner; self.tail = tail }
            init(from decoder: any Decoder) throws {
                var list = try decoder.unkeyedContainer()
                inner = try Point(from: list.superDecoder())
                let keyed = try list.nestedContainer(keyedBy: AnyKey.self)
                tail = try keyed.decode(Int.self, forKey: AnyKey("t"))
                #expect(keyed.contains(AnyKey("super")))
                let superValue = try Int(from: keyed.superDecoder())
                #expect(superValue == 99)
            }
            func encode(to encoder: any Encoder) throws {
                var list = encoder.unkeyedContainer()
                try inner.encode(to: list.superEncoder())
                var keyed = list.nestedContainer(keyedBy: AnyKey.self)
                try keyed.encode(tail, forKey: AnyKey("t"))
                try 99.encode(to: keyed.superEncoder())
            }
        }
        try roundTrip(Wrapped(inner: Point(x: 5, y: 6), tail: -1))
    }
}

@Suite("Stack safety")
struct StackTests {
    @Test("Values at the default depth limit decode on a pool thread (debug build, no stack overflow)")
    func defaultDepthOnPoolThread() async throws {
        let deep = try CompactEncoder(maxDepth: 10_000).encode(Tree.chain(200))
        let justInside = try encode(Tree.chain(60))
        let outcome = await Task.detached {
            (decodeError(Tree.self, deep), decodeError(Tree.self, justInside))
        }.value
        guard case .depthLimitExceeded(_, 128)? = outcome.0 else {
            Issue.record("expected depthLimitExceeded, got \(String(describing: outcome.0))")
            return
        }
        #expect(outcome.1 == nil)
    }
}
