import Testing
import P2PQWire
@testable import P2PQRemoteCall

func peer(_ n: UInt8) -> PeerID { PeerID(bytes: [UInt8](repeating: n, count: 32))! }

func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
func be32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32($0))) } }
func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
func str(_ s: String) -> [UInt8] { be32(UInt32(s.utf8.count)) + Array(s.utf8) }

@Suite struct CallItemCodecTests {
    @Test func roundTrips() throws {
        let items = [
            CallItem(id: CallID(caller: peer(1), sequence: 7), function: "fib", memoize: true, arguments: [0, 0, 0, 30]),
            CallItem(id: CallID(caller: peer(2), sequence: .max), attempt: 255, function: String(repeating: "é", count: 127), memoize: false, deadline: 1_700_000_000_000_000_000, arguments: []),
            CallItem(id: CallID(caller: peer(3), sequence: 0), attempt: 2, function: "x", memoize: false, arguments: Array(repeating: 9, count: 70_000)),
        ]
        for item in items {
            let bytes = try item.encoded()
            #expect(bytes.count == item.encodedSize)
            #expect(try CallItem.decode(bytes) == item)
            #expect(CallItem.header(of: bytes) == item.id)
        }
    }

    /// A run of items through one name cache: the cached name is reused only for the same bytes.
    @Test func functionNameCache() throws {
        var names = CallItem.FunctionNames()
        let head: [UInt8] = [1] + [UInt8](repeating: 7, count: 32) + be64(1) + [1, 0] + be64(0)
        func decode(_ name: [UInt8]) -> Result<CallItem, WireError> {
            let bytes = head + be32(UInt32(name.count)) + name + be32(0)
            return bytes.withUnsafeBytes { raw in
                Result { () throws(WireError) in try CallItem.decode(raw, maxArgumentSize: 64, names: &names) }
            }
        }
        for name in ["fib", "fib", "fix", "é", "fib", "fib"] {
            #expect(try decode(Array(name.utf8)).get().function == name)
        }
        // Invalid UTF-8 of the cached name's length is still rejected.
        #expect(throws: WireError.malformed(field: "call.function", reason: "invalid UTF-8")) { try decode([0xC3, 0x28, 0x62]).get() }
        #expect(try decode(Array("fib".utf8)).get().function == "fib")
    }

    /// The documented layout, byte for byte.
    @Test func layout() throws {
        let item = CallItem(id: CallID(caller: peer(0xAB), sequence: 5), attempt: 2, function: "f", memoize: true, deadline: 9, arguments: [1, 2])
        let expected: [UInt8] = [1] + [UInt8](repeating: 0xAB, count: 32) + be64(5) + [2, 1] + be64(9) + str("f") + be32(2) + [1, 2]
        #expect(try item.encoded() == expected)
    }

    @Test func encoderRejectsWhatTheDecoderWould() {
        let id = CallID(caller: peer(1), sequence: 1)
        #expect(throws: WireError.malformed(field: "call.function", reason: "empty")) {
            try CallItem(id: id, function: "", memoize: false, arguments: []).encoded()
        }
        #expect(throws: WireError.malformed(field: "call.attempt", reason: "attempt 0")) {
            try CallItem(id: id, attempt: 0, function: "f", memoize: false, arguments: []).encoded()
        }
        #expect(throws: WireError.malformed(field: "call.function", reason: "length 256 exceeds the limit of 255 bytes")) {
            try CallItem(id: id, function: String(repeating: "a", count: 256), memoize: false, arguments: []).encoded()
        }
        #expect(throws: WireError.malformed(field: "call.arguments", reason: "length 11 exceeds the limit of 10 bytes")) {
            try CallItem(id: id, function: "f", memoize: false, arguments: [UInt8](repeating: 0, count: 11)).encoded(maxArgumentSize: 10)
        }
    }

    @Test func malformedItems() {
        let head: [UInt8] = [1] + [UInt8](repeating: 7, count: 32) + be64(1)
        let good = head + [1, 0] + be64(0) + str("f") + be32(1) + [42]
        let cases: [(String, [UInt8], WireError)] = [
            ("empty", [], .truncated(field: "call.version", needed: 1, available: 0)),
            ("unknown version", [2] + good.dropFirst(), .malformed(field: "call.version", reason: "unknown version 2")),
            ("short caller", [1, 7, 7], .truncated(field: "call.caller", needed: 32, available: 2)),
            ("short sequence", Array(head.prefix(37)), .truncated(field: "call.sequence", needed: 8, available: 4)),
            ("no attempt", head, .truncated(field: "call.attempt", needed: 1, available: 0)),
            ("attempt 0", head + [0, 0] + be64(0) + str("f") + be32(0), .malformed(field: "call.attempt", reason: "attempt 0")),
            ("unknown flags", head + [1, 0x82] + be64(0) + str("f") + be32(0), .malformed(field: "call.flags", reason: "unknown flag bits 0x82")),
            ("short deadline", head + [1, 0, 0, 0], .truncated(field: "call.deadline", needed: 8, available: 2)),
            ("no name length", head + [1, 0] + be64(0) + [0, 0], .truncated(field: "call.function.length", needed: 4, available: 2)),
            ("empty name", head + [1, 0] + be64(0) + str("") + be32(0), .malformed(field: "call.function", reason: "empty")),
            ("long name", head + [1, 0] + be64(0) + be32(256) + [UInt8](repeating: 97, count: 256) + be32(0), .malformed(field: "call.function", reason: "length 256 exceeds the limit of 255 bytes")),
            ("bad UTF-8 name", head + [1, 0] + be64(0) + be32(2) + [0xC3, 0x28] + be32(0), .malformed(field: "call.function", reason: "invalid UTF-8")),
            ("short name", head + [1, 0] + be64(0) + be32(5) + [97], .truncated(field: "call.function", needed: 5, available: 1)),
            ("no arguments", head + [1, 0] + be64(0) + str("f"), .truncated(field: "call.arguments.length", needed: 4, available: 0)),
            ("short arguments", head + [1, 0] + be64(0) + str("f") + be32(3) + [1], .truncated(field: "call.arguments", needed: 3, available: 1)),
            ("arguments over the limit", head + [1, 0] + be64(0) + str("f") + be32(65) + [UInt8](repeating: 0, count: 65), .malformed(field: "call.arguments", reason: "length 65 exceeds the limit of 64 bytes")),
            ("trailing bytes", good + [0, 0], .malformed(field: "call", reason: "2 trailing bytes")),
        ]
        #expect((try? CallItem.decode(good, maxArgumentSize: 64)) != nil)
        for (name, bytes, expected) in cases {
            let result = Result { () throws(WireError) in try CallItem.decode(bytes, maxArgumentSize: 64) }
            switch result {
            case .success: Issue.record("\(name): decoded")
            case .failure(let error): #expect(error == expected, "\(name)")
            }
        }
        #expect(CallItem.header(of: head + [0]) == CallID(caller: PeerID(bytes: [UInt8](repeating: 7, count: 32))!, sequence: 1))
        #expect(CallItem.header(of: Array(head.prefix(20))) == nil)
    }
}

@Suite struct MessageCodecTests {
    static let messages: [RemoteCallMessage] = [
        .results([
            CallResultEntry(sequence: 1, outcome: .success([1, 2, 3])),
            CallResultEntry(sequence: 2, outcome: .success([])),
            CallResultEntry(sequence: 3, outcome: .thrown(typeName: "MyError", description: "bad thing ✓")),
            CallResultEntry(sequence: .max, outcome: .unknownFunction),
            CallResultEntry(sequence: 5, outcome: .badArguments("expected Int")),
            CallResultEntry(sequence: 6, outcome: .malformedCall("truncated call.deadline")),
        ]),
        .started([CallStartedEntry(sequence: 1, attempt: 1), CallStartedEntry(sequence: 99, attempt: 255)]),
        .cancel([1, 2, .max]),
        .direct([
            try! CallItem(id: CallID(caller: peer(1), sequence: 7), function: "fib", memoize: true, arguments: [0, 0, 0, 30]).encoded(),
            try! CallItem(id: CallID(caller: peer(1), sequence: 8), attempt: 2, function: "echo", memoize: false, arguments: []).encoded(),
        ]),
        .credit(1),
        .credit(.max),
    ]

    @Test func roundTrips() throws {
        for message in Self.messages {
            let framed = try message.encoded()
            #expect(framed.count == 5 + message.bodySize)
            #expect(framed[4] == message.messageType.rawValue)
            let decoded = try RemoteCallMessage.decode(type: message.messageType, body: Array(framed.dropFirst(5)))
            #expect(decoded == message)
        }
        #expect(MessageType.family(of: MessageType.remoteCallResults.rawValue) == .remoteCall)
        #expect(RemoteCallMessage.messageTypes.allSatisfy { MessageType.family(of: $0.rawValue) == .remoteCall })
    }

    /// The framed stream decoder accepts the new types; the link layer refuses to decode them.
    @Test func framing() throws {
        var stream: [UInt8] = []
        for message in Self.messages { try message.encode(into: &stream) }
        let raw = try MessageDecoder.decodeAll(stream)
        #expect(try raw.map { try RemoteCallMessage.decode($0) } == Self.messages)
        #expect(throws: WireError.unknownMessageType(0x40)) { try LinkMessage.decode(raw[0]) }
        #expect(throws: WireError.unknownMessageType(0x02)) { try RemoteCallMessage.decode(type: .ping, body: [UInt8](repeating: 0, count: 16)) }
    }

    @Test func malformedMessages() {
        let cases: [(String, MessageType, [UInt8], WireError)] = [
            ("results no count", .remoteCallResults, [0], .truncated(field: "results.count", needed: 2, available: 1)),
            ("results count 0", .remoteCallResults, be16(0), .malformed(field: "results.count", reason: "no entries")),
            ("results short entry", .remoteCallResults, be16(1) + [0, 0, 0], .truncated(field: "results[0].sequence", needed: 8, available: 3)),
            ("results missing second entry", .remoteCallResults, be16(2) + be64(1) + [2], .truncated(field: "results[1].sequence", needed: 8, available: 0)),
            ("results unknown kind", .remoteCallResults, be16(1) + be64(1) + [9], .malformed(field: "results[0].kind", reason: "unknown outcome kind 9")),
            ("results short value", .remoteCallResults, be16(1) + be64(1) + [0] + be32(10) + [1], .truncated(field: "results[0].value", needed: 10, available: 1)),
            ("results long type name", .remoteCallResults, be16(1) + be64(1) + [1] + be32(256) + [UInt8](repeating: 65, count: 256) + str(""), .malformed(field: "results[0].typeName", reason: "length 256 exceeds the limit of 255 bytes")),
            ("results long description", .remoteCallResults, be16(1) + be64(1) + [3] + be32(4097) + [UInt8](repeating: 65, count: 4097), .malformed(field: "results[0].description", reason: "length 4097 exceeds the limit of 4096 bytes")),
            ("results bad UTF-8", .remoteCallResults, be16(1) + be64(1) + [4] + be32(1) + [0xFF], .malformed(field: "results[0].description", reason: "invalid UTF-8")),
            ("results trailing", .remoteCallResults, be16(1) + be64(1) + [2, 0], .trailingBytes(type: .remoteCallResults, count: 1)),
            ("started count 0", .remoteCallStarted, be16(0), .malformed(field: "started.count", reason: "no entries")),
            ("started attempt 0", .remoteCallStarted, be16(1) + be64(1) + [0], .malformed(field: "started[0].attempt", reason: "attempt 0")),
            ("started short", .remoteCallStarted, be16(2) + be64(1) + [1] + be64(2), .truncated(field: "started[1].attempt", needed: 1, available: 0)),
            ("started trailing", .remoteCallStarted, be16(1) + be64(1) + [1, 9], .trailingBytes(type: .remoteCallStarted, count: 1)),
            ("cancel count 0", .remoteCallCancel, be16(0), .malformed(field: "cancel.count", reason: "no entries")),
            ("cancel short", .remoteCallCancel, be16(3) + be64(1) + be64(2) + [1], .truncated(field: "cancel[2].sequence", needed: 8, available: 1)),
            ("cancel trailing", .remoteCallCancel, be16(1) + be64(1) + [0], .trailingBytes(type: .remoteCallCancel, count: 1)),
            ("direct count 0", .remoteCallDirect, be16(0), .malformed(field: "direct.count", reason: "no entries")),
            ("direct item shorter than a header", .remoteCallDirect, be16(1) + be32(3) + [1, 2, 3], .malformed(field: "direct[0]", reason: "3 bytes, shorter than a call item header")),
            ("direct item cut", .remoteCallDirect, be16(1) + be32(100) + [1], .truncated(field: "direct[0]", needed: 100, available: 1)),
            ("credit 0", .remoteCallCredit, be32(0), .malformed(field: "credit.slots", reason: "no credit")),
            ("credit short", .remoteCallCredit, [0, 1], .truncated(field: "credit.slots", needed: 4, available: 2)),
            ("credit trailing", .remoteCallCredit, be32(1) + [0], .trailingBytes(type: .remoteCallCredit, count: 1)),
        ]
        for (name, type, body, expected) in cases {
            let result = Result { () throws(WireError) in try RemoteCallMessage.decode(type: type, body: body) }
            switch result {
            case .success: Issue.record("\(name): decoded")
            case .failure(let error): #expect(error == expected, "\(name)")
            }
        }
    }

    @Test func encoderValidates() {
        #expect(throws: WireError.malformed(field: "cancel.count", reason: "no entries")) { try RemoteCallMessage.cancel([]).encoded() }
        #expect(throws: WireError.malformed(field: "results[0].typeName", reason: "length 300 exceeds the limit of 255 bytes")) {
            try RemoteCallMessage.results([CallResultEntry(sequence: 1, outcome: .thrown(typeName: String(repeating: "x", count: 300), description: ""))]).encoded()
        }
        #expect(throws: WireError.malformed(field: "started[0].attempt", reason: "attempt 0")) {
            try RemoteCallMessage.started([CallStartedEntry(sequence: 1, attempt: 0)]).encoded()
        }
        // Truncation keeps whole characters and fits the limits.
        let long = CallOutcome.thrownTruncating(typeName: String(repeating: "é", count: 200), description: String(repeating: "ü", count: 3000))
        guard case .thrown(let typeName, let description) = long else { Issue.record("not thrown"); return }
        #expect(typeName.utf8.count == 254 && description.utf8.count == 4096)
        #expect((try? RemoteCallMessage.results([CallResultEntry(sequence: 1, outcome: long)]).encoded()) != nil)
    }
}

@Suite struct LRUCacheTests {
    @Test func evictsLeastRecentlyUsed() {
        var cache = LRUCache<Int, String>(maxEntries: 3)
        for key in 1...3 { cache.insert("\(key)", for: key, cost: 1) }
        #expect(cache.value(for: 1) == "1")  // 1 is now the newest
        cache.insert("4", for: 4, cost: 1)
        #expect(cache.keysByRecency == [4, 1, 3])
        #expect(cache.value(for: 2) == nil)
        cache.insert("3b", for: 3, cost: 1)
        #expect(cache.keysByRecency == [3, 4, 1])
        #expect(cache.count == 3)
    }

    @Test func byteBound() {
        var cache = LRUCache<Int, [UInt8]>(maxEntries: 100, maxBytes: 10)
        cache.insert([1], for: 1, cost: 4)
        cache.insert([2], for: 2, cost: 4)
        cache.insert([3], for: 3, cost: 4)  // 12 > 10: evicts 1
        #expect(cache.keysByRecency == [3, 2])
        #expect(cache.byteCount == 8)
        cache.insert([4], for: 4, cost: 11)  // larger than the whole cache: not kept
        #expect(cache.keysByRecency == [3, 2])
        cache.removeValue(for: 3)
        #expect(cache.keysByRecency == [2] && cache.byteCount == 4)
        var off = LRUCache<Int, Int>(maxEntries: 0)
        off.insert(1, for: 1, cost: 1)
        #expect(off.count == 0)
    }

    @Test func manyOperationsStayConsistent() {
        var cache = LRUCache<Int, Int>(maxEntries: 50)
        var model: [Int] = []  // most recent first
        var rng = SplitMix64(seed: 42)
        for _ in 0..<5000 {
            let key = Int(rng.next() % 120)
            if rng.next() % 3 == 0 {
                cache.insert(key, for: key, cost: 1)
                model.removeAll { $0 == key }
                model.insert(key, at: 0)
                if model.count > 50 { model.removeLast() }
            } else {
                let hit = cache.value(for: key)
                #expect((hit != nil) == model.contains(key))
                if hit != nil { model.removeAll { $0 == key }; model.insert(key, at: 0) }
            }
        }
        #expect(cache.keysByRecency == model)
    }
}

@Suite struct BoundedSetTests {
    @Test func forgetsOldestAndSurvivesReinsertion() {
        var set = BoundedSet<Int>(capacity: 3)
        for n in 1...3 { set.insert(n) }
        set.remove(1)
        set.insert(1)  // now the newest
        set.insert(4)  // evicts 2 (the stale entry of 1 is skipped)
        #expect(!set.contains(2) && set.contains(1) && set.contains(3) && set.contains(4))
        for n in 5...1000 { set.insert(n) }
        #expect(set.count == 3 && set.contains(1000) && !set.contains(1))
    }
}

@Suite struct DecoderRobustnessTests {
    /// Random corruptions of valid encodings: every decode either succeeds or throws a
    /// WireError, and whatever decodes re-encodes to the same bytes.
    @Test func mutatedInputsNeverCrash() throws {
        var rng = SplitMix64(seed: 7)
        let item = try CallItem(id: CallID(caller: peer(5), sequence: 77), attempt: 3, function: "fib", memoize: true, deadline: 123, arguments: [1, 2, 3, 4]).encoded()
        let bodies = try MessageCodecTests.messages.map { message -> (MessageType, [UInt8]) in
            (message.messageType, Array(try message.encoded().dropFirst(5)))
        }
        // One name cache for every item: corrupted names must not be served from it.
        var names = CallItem.FunctionNames()
        for round in 0..<3000 {
            var bytes = round % 4 == 0 ? item : bodies[round % bodies.count].1
            let type = round % 4 == 0 ? nil : bodies[round % bodies.count].0
            for _ in 0...(rng.next() % 4) {
                guard !bytes.isEmpty else { break }
                switch rng.next() % 3 {
                case 0: bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes.removeLast(Int(rng.next() % UInt64(min(bytes.count, 8))) + 1)
                default: bytes.append(UInt8(truncatingIfNeeded: rng.next()))
                }
            }
            if let type {
                if let message = try? RemoteCallMessage.decode(type: type, body: bytes) {
                    #expect(Array(try message.encoded().dropFirst(5)) == bytes)
                }
            } else {
                let precise = bytes.withUnsafeBytes { raw in try? CallItem.preciseDecode(raw, maxArgumentSize: 64) }
                let fast = bytes.withUnsafeBytes { raw in CallItem.fastDecode(raw, maxArgumentSize: 64, names: &names) }
                #expect(fast == precise, "the fast path accepts exactly what the precise decoder accepts")
                if let precise { #expect(try precise.encoded() == bytes) }
            }
        }
    }
}
