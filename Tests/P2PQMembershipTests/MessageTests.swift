import P2PQMembership
import P2PQWire
import Testing

@Suite("Membership messages")
struct MembershipMessageTests {
    static let samples: [MembershipMessage] = [
        .ping(sequence: 1, updates: []),
        .ping(sequence: .max, updates: [update(.alive, 1, 7), update(.suspect, 2, 9, by: 3)]),
        .ack(sequence: 42, updates: [update(.dead, 4, 1, by: 5)]),
        .pingRequest(sequence: 7, target: peer(9), updates: [update(.left, 6, 0)]),
        .nack(sequence: 8, updates: []),
        .gossip(updates: (0..<20).map { update(.alive, $0, UInt64($0)) }),
    ]

    @Test("Round trip, with exact sizes", arguments: samples)
    func roundTrip(message: MembershipMessage) throws {
        let encoded = try message.encoded()
        #expect(encoded.count == WireProtocol.messageHeaderSize + message.bodySize)
        #expect(encoded[4] == message.messageType.rawValue)
        #expect(MessageType.family(of: encoded[4]) == .membership)
        let body = Array(encoded.dropFirst(WireProtocol.messageHeaderSize))
        #expect(try MembershipMessage.decode(type: message.messageType, body: body) == message)
    }

    @Test("Layout of a ping")
    func layout() throws {
        let encoded = try MembershipMessage.ping(sequence: 0x0102, updates: [update(.suspect, 1, 3, by: 2)]).encoded()
        #expect(encoded.prefix(5) == [0, 0, 0, 83, 0x10])  // 1 + 8 + 1 + 73
        #expect(Array(encoded[5..<13]) == [0, 0, 0, 0, 0, 0, 1, 2])
        #expect(encoded[13] == 1)  // count
        #expect(encoded[14] == 1)  // kind suspect
        #expect(Array(encoded[15..<47]) == peer(1).bytes)
        #expect(Array(encoded[47..<55]) == [0, 0, 0, 0, 0, 0, 0, 3])
        #expect(Array(encoded[55..<87]) == peer(2).bytes)
    }

    func decodeError(_ type: MessageType, _ body: [UInt8]) -> WireError? {
        switch Result(catching: { () throws(WireError) in try MembershipMessage.decode(type: type, body: body) }) {
        case .success: return nil
        case .failure(let error): return error
        }
    }

    @Test("Malformed bodies are rejected with precise errors")
    func malformed() throws {
        let good = Array(try MembershipMessage.ack(sequence: 5, updates: [update(.alive, 1, 1)]).encoded().dropFirst(5))
        #expect(decodeError(.membershipAck, []) == .truncated(field: "ack.sequence", needed: 8, available: 0))
        #expect(decodeError(.membershipAck, Array(good.prefix(8))) == .truncated(field: "ack.updates.count", needed: 1, available: 0))
        #expect(decodeError(.membershipAck, Array(good.prefix(20))) ==
            .truncated(field: "ack.updates[0].member", needed: 32, available: 10))
        #expect(decodeError(.membershipAck, good + [0]) == .trailingBytes(type: .membershipAck, count: 1))
        var badKind = good
        badKind[9] = 4
        #expect(decodeError(.membershipAck, badKind) == .malformed(field: "ack.updates[0].kind", reason: "unknown kind 4"))
        var forgedAlive = good
        forgedAlive[9 + 1 + 32 + 8] ^= 0xFF  // origin differs from member
        #expect(decodeError(.membershipAck, forgedAlive) ==
            .malformed(field: "ack.updates[0].origin", reason: "alive must come from the member itself"))
        // A count larger than the updates present.
        var lying = good
        lying[8] = 200
        #expect(decodeError(.membershipAck, lying) == .truncated(field: "ack.updates[1].kind", needed: 1, available: 0))
        #expect(decodeError(.membershipPingRequest, Array(repeating: 0, count: 20)) ==
            .truncated(field: "pingReq.target", needed: 32, available: 12))
        #expect(decodeError(.ping, [0]) == .unknownMessageType(0x02))
        #expect(decodeError(.membershipGossip, []) == .truncated(field: "gossip.updates.count", needed: 1, available: 0))
        // Encoding refuses what decoding would reject.
        let forged = MembershipMessage.gossip(updates: [update(.left, 1, 1, by: 2)])
        #expect(throws: WireError.malformed(field: "gossip.updates[0].origin", reason: "left must come from the member itself")) {
            try forged.encoded()
        }
        let full = MembershipMessage.gossip(updates: (0..<255).map { update(.alive, $0, 0) })
        #expect(try MembershipMessage.decode(type: .membershipGossip, body: Array(full.encoded().dropFirst(5))) == full)
        #expect(throws: WireError.self) {
            try MembershipMessage.gossip(updates: (0..<256).map { update(.alive, $0, 0) }).encoded()
        }
    }

    @Test("Random bytes never crash the decoder")
    func garbage() {
        var rng = SplitMix64(seed: 3)
        let types: [MessageType] = [.membershipPing, .membershipAck, .membershipPingRequest, .membershipNack, .membershipGossip]
        for _ in 0..<5000 {
            let size = Int(rng.next() % 300)
            var body = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if size > 9 && rng.next() % 2 == 0 { body[8] = UInt8(rng.next() % 4) }
            for type in types {
                if let message = try? MembershipMessage.decode(type: type, body: body) {
                    // Whatever decodes re-encodes to the same bytes.
                    #expect((try? message.encoded())?.dropFirst(5).elementsEqual(body) == true)
                }
            }
        }
    }
}
