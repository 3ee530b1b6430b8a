// Fuzz target for the compact Codable decoder (P2PQCodable).
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files named on the command line (P2PQFuzzSupport.fuzzMain), or, given
// `--write-corpus <dir>`, writes the seed corpus (Fuzz/corpus/codable) from the types below.
//
// The first input byte picks the type to decode and the limits; the rest is the encoding.
// Besides "no crash", any input that decodes must give a value whose encoding is stable:
// encode, decode, encode again gives the same bytes. (So no type here holds a Set or a
// Dictionary keyed by anything but String or Int: those are written in iteration order.)

import P2PQCodable
import P2PQFuzzSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct Point: Codable, Hashable {
    var x: Int
    var y: Int
}

indirect enum Command: Codable {
    case push(queue: String, items: [Int])
    case pop(max: Int?, timeout: Double?)
    case close
    case ping(Int, String)
    case nested(Command?)
}

struct Item: Codable {
    var id: UInt64
    var flag: Bool
    var small: Int8
    var wide: Int128
    var unsigned: UInt16
    var ratio: Float
    var name: String
    var note: String??
    var payload: [UInt8]
    var matrix: [[Int32]]
    var map: [String: [Int?]]
    var numbered: [Int: Point]
    var command: Command
    var points: [Point]
}

indirect enum Tree: Codable {
    case leaf(Int)
    case node(Tree, Tree)
}

/// Decodes `bytes` as a `T`; if that works, the value's encoding must be stable.
func check<T: Codable>(_ type: T.Type, _ bytes: [UInt8], decoder: CompactDecoder) {
    let result = Result { () throws(CompactCodingError) in try decoder.decode(type, from: bytes) }
    guard case .success(let value) = result else { return }
    let encoder = CompactEncoder(maxDepth: decoder.maxDepth)
    guard let once = try? encoder.encode(value) else {
        fatalError("a decoded \(T.self) does not encode")
    }
    guard let again = try? decoder.decode(type, from: once), let twice = try? encoder.encode(again) else {
        fatalError("the encoding of a decoded \(T.self) does not decode")
    }
    precondition(once == twice, "the encoding of a decoded \(T.self) is not stable")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let selector = data[0]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    // High nibble: a small depth limit or the default.
    let decoder = CompactDecoder(maxDepth: selector & 0x80 == 0 ? 128 : 8)
    switch selector & 0x07 {
    case 0: check(Item.self, bytes, decoder: decoder)
    case 1: check(Command.self, bytes, decoder: decoder)
    case 2: check([String: [Int?]].self, bytes, decoder: decoder)
    case 3: check(Tree.self, bytes, decoder: decoder)
    case 4: check([Int: [Point]].self, bytes, decoder: decoder)
    case 5: check(String?.self, bytes, decoder: decoder)
    case 6: check([[UInt8]].self, bytes, decoder: decoder)
    default: check(Point.self, bytes, decoder: decoder)
    }
    return 0
}

/// The seeds: one valid encoding per selector.
func seeds() throws -> [(name: String, bytes: [UInt8])] {
    let encoder = CompactEncoder()
    let item = Item(
        id: 42, flag: true, small: -8, wide: Int128.min, unsigned: 65_535, ratio: 0.5, name: "é日",
        note: .some(nil), payload: [0, 1, 255], matrix: [[1, -2], []], map: ["a": [1, nil]],
        numbered: [7: Point(x: 1, y: 2)], command: .push(queue: "q", items: [1, 2]),
        points: [Point(x: -1, y: 1)])
    let tree = Tree.node(.node(.leaf(1), .leaf(2)), .leaf(3))
    return [
        ("item", [0x00] + (try encoder.encode(item))),
        ("command", [0x01] + (try encoder.encode(Command.nested(.pop(max: 3, timeout: nil))))),
        ("map", [0x02] + (try encoder.encode(["x": [1, nil, -3], "": []] as [String: [Int?]]))),
        ("tree", [0x03] + (try encoder.encode(tree))),
        ("tree-shallow-limit", [0x83] + (try encoder.encode(tree))),
        ("int-keys", [0x04] + (try encoder.encode([-1: [Point(x: 1, y: 2)], 5: []] as [Int: [Point]]))),
        ("optional-string", [0x05] + (try encoder.encode(String?.some("s")))),
        ("byte-arrays", [0x06] + (try encoder.encode([[1, 2], [], [3]] as [[UInt8]]))),
        ("point", [0x07] + (try encoder.encode(Point(x: 300, y: -300)))),
    ]
}

try writeCorpusIfAsked(seeds)

fuzzMain(name: "P2PQCodableFuzz", fuzz)
