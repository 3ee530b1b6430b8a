import Foundation
import Testing
@testable import P2PQCodable
import P2PQTestSupport

@Suite("Properties, size, random input")
struct PropertyTests {
    nonisolated(unsafe) static var fixedGenerator = SplitMix64(seed: 42)

    static func randomString(using rng: inout SplitMix64) -> String {
        let alphabet: [Character] = ["a", "b", "z", "é", "日", "👍", " ", "\u{0}", "\n"]
        return String((0..<Int.random(in: 0...12, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
    }

    static func randomCommand(using rng: inout SplitMix64, depth: Int = 0) -> Command {
        switch Int.random(in: 0...4, using: &rng) {
        case 0: return .push(queue: randomString(using: &rng), items: (0..<Int.random(in: 0...5, using: &rng)).map { _ in Int.random(in: .min ... .max, using: &rng) })
        case 1: return .pop(max: Bool.random(using: &rng) ? Int.random(in: 0...100, using: &rng) : nil, timeout: Bool.random(using: &rng) ? Double.random(in: 0...10, using: &rng) : nil)
        case 2: return .close
        case 3: return .ping(Int.random(in: -1000...1000, using: &rng), randomString(using: &rng))
        default: return .nested(depth < 3 && Bool.random(using: &rng) ? randomCommand(using: &rng, depth: depth + 1) : nil)
        }
    }

    static func randomEverything(using rng: inout SplitMix64) -> Everything {
        func pick<T: FixedWidthInteger>(_ type: T.Type) -> T {
            switch Int.random(in: 0...3, using: &rng) {
            case 0: return .min
            case 1: return .max
            case 2: return 0
            default: return T.random(in: .min ... .max, using: &rng)
            }
        }
        let doubleOptional: String?? = switch Int.random(in: 0...2, using: &rng) {
        case 0: .none
        case 1: .some(.none)
        default: .some(randomString(using: &rng))
        }
        var map: [String: [Int?]] = [:]
        for _ in 0..<Int.random(in: 0...4, using: &rng) {
            map[randomString(using: &rng)] = (0..<Int.random(in: 0...3, using: &rng)).map { _ in Bool.random(using: &rng) ? nil : Int.random(in: -5...5, using: &rng) }
        }
        var intMap: [Int: String] = [:]
        for _ in 0..<Int.random(in: 0...4, using: &rng) { intMap[Int.random(in: -1000...1000, using: &rng)] = randomString(using: &rng) }
        return Everything(
            bool: Bool.random(using: &rng),
            int8: pick(Int8.self), int16: pick(Int16.self), int32: pick(Int32.self), int64: pick(Int64.self), int: pick(Int.self),
            uint8: pick(UInt8.self), uint16: pick(UInt16.self), uint32: pick(UInt32.self), uint64: pick(UInt64.self), uint: pick(UInt.self),
            float: Float.random(in: -1e30...1e30, using: &rng),
            double: [Double.infinity, -.infinity, -0.0, .leastNonzeroMagnitude, Double.random(in: -1e300...1e300, using: &rng)].randomElement(using: &rng)!,
            string: randomString(using: &rng),
            optional: Bool.random(using: &rng) ? pick(Int.self) : nil,
            doubleOptional: doubleOptional,
            bytes: (0..<Int.random(in: 0...20, using: &rng)).map { _ in pick(UInt8.self) },
            data: Data((0..<Int.random(in: 0...20, using: &rng)).map { _ in pick(UInt8.self) }),
            list: (0..<Int.random(in: 0...3, using: &rng)).map { _ in (0..<Int.random(in: 0...3, using: &rng)).map { _ in pick(Int.self) } },
            map: map,
            intMap: intMap,
            command: randomCommand(using: &rng),
            color: Bool.random(using: &rng) ? .red : .green,
            points: (0..<Int.random(in: 0...3, using: &rng)).map { _ in Point(x: pick(Int.self), y: pick(Int.self)) }
        )
    }

    @Test("Random values round-trip and re-encode to the same bytes")
    func randomRoundTrips() throws {
        var rng = SplitMix64(seed: 0xC0DAB1E)
        for _ in 0..<500 {
            try roundTrip(Self.randomEverything(using: &rng))
        }
    }

    @Test("Much smaller than JSON for typical queue items")
    func compactness() throws {
        struct Job: Codable, Equatable {
            var id: UInt64
            var queue: String
            var priority: Int
            var payload: [UInt8]
            var deadline: Double?
            var tags: [String]
        }
        var rng = SplitMix64(seed: 7)
        let jobs = (0..<100).map { index in
            Job(id: UInt64(index) * 7919, queue: "default", priority: Int.random(in: -3...3, using: &rng),
                payload: (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) },
                deadline: index % 2 == 0 ? 1_700_000_000.25 : nil, tags: ["a", "bb"])
        }
        let compact = try encode(jobs)
        let json = try JSONEncoder().encode(jobs)
        print("100 jobs: compact \(compact.count) bytes, JSON \(json.count) bytes")
        #expect(compact.count * 2 < json.count)
        let one = try encode(Point(x: 10, y: 20))
        let oneJSON = try JSONEncoder().encode(Point(x: 10, y: 20))
        #expect(one.count <= oneJSON.count)
        #expect(try encode(30).count == 3)
        #expect(try CompactDecoder().decode([Job].self, from: compact) == jobs)
    }

    @Test("Random bytes only ever produce errors or values, never a crash")
    func randomBytes() throws {
        var rng = SplitMix64(seed: 99)
        var decoded = 0
        for round in 0..<20_000 {
            var bytes = (0..<Int.random(in: 0...48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Mostly a valid header, so the fuzzing reaches past it.
            if round % 4 != 0, !bytes.isEmpty { bytes[0] = 1 }
            if round % 3 == 0, bytes.count > 1 { bytes[1] = UInt8.random(in: 0...3, using: &rng) }
            if decodeError(Everything.self, bytes) == nil { decoded += 1 }
            if decodeError(Command.self, bytes) == nil { decoded += 1 }
            if decodeError([String: [Int?]].self, bytes) == nil { decoded += 1 }
            if decodeError(Nested.self, bytes) == nil { decoded += 1 }
            if decodeError(Tree.self, bytes, CompactDecoder(maxDepth: 16)) == nil { decoded += 1 }
        }
        #expect(decoded >= 0)
    }

    @Test("Mutated valid encodings only ever produce errors or values, never a crash")
    func mutations() throws {
        var rng = SplitMix64(seed: 1234)
        var survivors = 0
        for _ in 0..<300 {
            let value = Self.randomEverything(using: &rng)
            let bytes = try encode(value)
            for _ in 0..<20 {
                var mutated = bytes
                switch Int.random(in: 0...3, using: &rng) {
                case 0: mutated[Int.random(in: 0..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1: mutated[Int.random(in: 0..<mutated.count, using: &rng)] ^= 1 << UInt8.random(in: 0...7, using: &rng)
                case 2: mutated.removeSubrange(Int.random(in: 0..<mutated.count, using: &rng)...)
                default: mutated.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...mutated.count, using: &rng))
                }
                let result = Result { () throws(CompactCodingError) in try CompactDecoder().decode(Everything.self, from: mutated) }
                if case .success(let survivor) = result {
                    survivors += 1
                    // Whatever decodes is a value that round-trips (compared as bytes: mutated
                    // doubles are often NaN, which is not == itself).
                    let again = try encode(survivor)
                    #expect(try encode(CompactDecoder().decode(Everything.self, from: again)) == again)
                }
            }
        }
        #expect(survivors >= 0)
    }
}
