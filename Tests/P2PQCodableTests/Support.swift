import Foundation
import Testing
@testable import P2PQCodable

struct Point: Codable, Equatable, Hashable {
    var x: Int
    var y: Int
}

struct PointX: Codable, Equatable {
    var x: Int
}

struct Polygon: Codable, Equatable {
    var points: [Point]
}

struct PolygonX: Codable, Equatable {
    var points: [PointX]
}

indirect enum Command: Codable, Equatable {
    case push(queue: String, items: [Int])
    case pop(max: Int?, timeout: Double?)
    case close
    case ping(Int, String)
    case nested(Command?)
}

enum Color: String, Codable, Equatable {
    case red, green
}

/// Integer coding keys: the encoding needs no key table.
struct Numbered: Codable, Equatable {
    var first: Int
    var second: String
    enum CodingKeys: Int, CodingKey {
        case first = 1
        case second = 2
    }
}

struct Everything: Codable, Equatable {
    var bool: Bool
    var int8: Int8
    var int16: Int16
    var int32: Int32
    var int64: Int64
    var int: Int
    var uint8: UInt8
    var uint16: UInt16
    var uint32: UInt32
    var uint64: UInt64
    var uint: UInt
    var float: Float
    var double: Double
    var string: String
    var optional: Int?
    var doubleOptional: String??
    var bytes: [UInt8]
    var data: Data
    var list: [[Int]]
    var map: [String: [Int?]]
    var intMap: [Int: String]
    var command: Command
    var color: Color
    var points: [Point]
}

/// Writes nothing at all: encoded as the empty marker.
struct Nothing: Codable, Equatable {
    init() {}
    init(from decoder: any Decoder) throws {}
    func encode(to encoder: any Encoder) throws {}
}

/// Encodes two integers in an unkeyed container, decodes them as a pair.
struct Pair: Codable, Equatable {
    var a: Int
    var b: Int
    init(a: Int, b: Int) { self.a = a; self.b = b }
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        a = try container.decode(Int.self)
        b = try container.decode(Int.self)
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        try container.encode(a)
        try container.encode(b)
    }
}

/// Reads only the first element of an unkeyed container: it must not pass silently.
struct FirstOnly: Decodable {
    var a: Int
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        a = try container.decode(Int.self)
    }
}

/// Hand-written coding with nested containers of every kind.
struct Nested: Codable, Equatable {
    var name: String
    var matrix: [[Int]]
    var inner: [String: Bool]
    var pairs: [Pair]

    enum CodingKeys: String, CodingKey { case name, info, matrix }
    enum InfoKeys: String, CodingKey { case inner, pairs }

    init(name: String, matrix: [[Int]], inner: [String: Bool], pairs: [Pair]) {
        self.name = name
        self.matrix = matrix
        self.inner = inner
        self.pairs = pairs
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        var rows = try container.nestedUnkeyedContainer(forKey: .matrix)
        matrix = []
        while !rows.isAtEnd {
            var row = try rows.nestedUnkeyedContainer()
            var values: [Int] = []
            while !row.isAtEnd { values.append(try row.decode(Int.self)) }
            matrix.append(values)
        }
        let info = try container.nestedContainer(keyedBy: InfoKeys.self, forKey: .info)
        inner = try info.decode([String: Bool].self, forKey: .inner)
        var pairList = try info.nestedUnkeyedContainer(forKey: .pairs)
        pairs = []
        while !pairList.isAtEnd {
            let pair = try pairList.nestedContainer(keyedBy: PairKeys.self)
            pairs.append(Pair(a: try pair.decode(Int.self, forKey: .a), b: try pair.decode(Int.self, forKey: .b)))
        }
    }

    enum PairKeys: String, CodingKey { case a, b }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        var rows = container.nestedUnkeyedContainer(forKey: .matrix)
        for values in matrix {
            var row = rows.nestedUnkeyedContainer()
            for value in values { try row.encode(value) }
        }
        var info = container.nestedContainer(keyedBy: InfoKeys.self, forKey: .info)
        try info.encode(inner, forKey: .inner)
        var pairList = info.nestedUnkeyedContainer(forKey: .pairs)
        for pair in pairs {
            var entry = pairList.nestedContainer(keyedBy: PairKeys.self)
            try entry.encode(pair.a, forKey: .a)
            try entry.encode(pair.b, forKey: .b)
        }
    }
}

class Animal: Codable {
    var legs: Int
    init(legs: Int) { self.legs = legs }
}

/// Class inheritance through superEncoder/superDecoder.
final class Dog: Animal, @unchecked Sendable {
    var name: String
    enum CodingKeys: String, CodingKey { case name }
    init(legs: Int, name: String) {
        self.name = name
        super.init(legs: legs)
    }
    required init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        try super.init(from: container.superDecoder())
    }
    override func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try super.encode(to: container.superEncoder())
    }
}

/// A recursive type, for the depth limit.
indirect enum Tree: Codable, Equatable {
    case leaf(Int)
    case node(Tree, Tree)

    static func chain(_ depth: Int) -> Tree {
        var tree = Tree.leaf(0)
        for _ in 0..<depth { tree = .node(tree, .leaf(1)) }
        return tree
    }
}

func encode<T: Encodable>(_ value: T, _ encoder: CompactEncoder = CompactEncoder()) throws(CompactCodingError) -> [UInt8] {
    try encoder.encode(value)
}

/// `canonical: false` for values written in iteration order (Set, Dictionary with keys other
/// than String and Int), which need not re-encode to the same bytes.
func roundTrip<T: Codable & Equatable>(_ value: T, canonical: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let bytes = try CompactEncoder().encode(value)
    let decoded = try CompactDecoder().decode(T.self, from: bytes)
    #expect(decoded == value, sourceLocation: sourceLocation)
    // Canonical: what decodes re-encodes to the same bytes.
    if canonical {
        #expect(try CompactEncoder().encode(decoded) == bytes, sourceLocation: sourceLocation)
    }
}

/// The error decoding `bytes` as a `T`, or nil if it decoded.
func decodeError<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], _ decoder: CompactDecoder = CompactDecoder()) -> CompactCodingError? {
    let result = Result { () throws(CompactCodingError) in try decoder.decode(type, from: bytes) }
    switch result {
    case .success: return nil
    case .failure(let error): return error
    }
}
