import Foundation
import P2PQLink
import P2PQWire
import Testing

/// Splits a byte stream into its records (u16 length, body).
func records(_ bytes: [UInt8]) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var offset = 0
    while offset + 2 <= bytes.count {
        let length = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
        result.append(Array(bytes[(offset + 2)..<(offset + 2 + length)]))
        offset += 2 + length
    }
    return result
}

func record(_ body: [UInt8]) -> [UInt8] { [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body }

/// An offer as the wire carries it: "P2PQ-OFFER", versions, count, cipher codes.
func offer(_ codes: [UInt8], low: UInt16 = 1, high: UInt16 = 2) -> [UInt8] {
    Array("P2PQ-OFFER".utf8) + [UInt8(low >> 8), UInt8(low & 0xFF), UInt8(high >> 8), UInt8(high & 0xFF), UInt8(codes.count)] + codes
}

func isOffer(_ body: [UInt8]) -> Bool { body.starts(with: Array("P2PQ-OFFER".utf8)) }

@Suite("Link cipher negotiation (protocol version 2)")
struct CipherNegotiationTests {
    let key = ClusterKey.generate()

    @Test("Two version 2 ends pick AES-GCM when both report AES instructions, ChaCha20-Poly1305 when either lacks them",
          arguments: [(true, true, LinkCipher.aesGCM), (true, false, .chaChaPoly), (false, true, .chaChaPoly), (false, false, .chaChaPoly)])
    func automaticChoice(initiatorAES: Bool, responderAES: Bool, expected: LinkCipher) throws {
        var rng = SplitMix64(seed: 21)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorCipher: .automatic(aesInstructions: initiatorAES),
                            responderCipher: .automatic(aesInstructions: responderAES))
        var offers: [[UInt8]] = []
        try pair.handshake(rng: &rng) { _, bytes in
            offers += records(bytes).filter(isOffer)
            return bytes
        }
        #expect(offers.count == 2, "both ends send an offer")
        #expect(pair.initiator.version == 2 && pair.responder.version == 2)
        #expect(pair.initiator.cipher == expected && pair.responder.cipher == expected)
        try expectTraffic(&pair, rng: &rng)
    }

    @Test("A forced cipher is run with a peer that offers it, and refused with a clear error by one that does not")
    func forcedCipher() throws {
        var rng = SplitMix64(seed: 23)
        // Forced AES-GCM with a peer without AES instructions (which offers it second).
        var aes = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                           initiatorCipher: .forced(.aesGCM), responderCipher: .automatic(aesInstructions: false))
        try aes.handshake(rng: &rng)
        #expect(aes.initiator.cipher == .aesGCM && aes.responder.cipher == .aesGCM)
        // Forced ChaCha20-Poly1305 with a peer that has AES instructions.
        var chacha = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                              initiatorCipher: .automatic(aesInstructions: true), responderCipher: .forced(.chaChaPoly))
        try chacha.handshake(rng: &rng)
        #expect(chacha.initiator.cipher == .chaChaPoly && chacha.responder.cipher == .chaChaPoly)
        try expectTraffic(&chacha, rng: &rng)

        // Both forced, differently: both ends fail, and say why.
        var clash = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                             initiatorCipher: .forced(.chaChaPoly), responderCipher: .forced(.aesGCM))
        var first = ByteArrayOutput()
        try clash.initiator.start(output: &first)
        let responderOffer = try clash.deliver(first.bytes, toResponder: true, rng: &rng)
        #expect(throws: LinkError.noCommonCipher(offered: [.chaChaPoly], peerOffered: [.aesGCM])) {
            _ = try clash.deliver(responderOffer, toResponder: false, rng: &rng)
        }
        // The initiator still sent its offer, so the responder can tell its operator too.
        var initiatorOffer = ByteArrayOutput()
        initiatorOffer.bytes = record(offer([1]))
        #expect(throws: LinkError.noCommonCipher(offered: [.aesGCM], peerOffered: [.chaChaPoly])) {
            _ = try clash.deliver(initiatorOffer.bytes, toResponder: true, rng: &rng)
        }
        #expect(clash.initiator.phase == .failed && clash.responder.phase == .failed)
        #expect(LinkError.noCommonCipher(offered: [.chaChaPoly], peerOffered: [.aesGCM]).description
            == "no common link cipher: we offer ChaChaPoly, the peer offers AESGCM (see --link-cipher)")
    }

    @Test("A version 1 initiator links to a version 2 responder, on version 1 and its cipher",
          arguments: [(LinkCipher.chaChaPoly, LinkCipherChoice.automatic(aesInstructions: true)),
                      (.aesGCM, .automatic(aesInstructions: false)),
                      (.aesGCM, .forced(.aesGCM))])
    func version1Initiator(cipher: LinkCipher, responder: LinkCipherChoice) throws {
        var rng = SplitMix64(seed: 25)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorCipher: .forced(cipher), responderCipher: responder,
                            initiatorVersions: 1...1)
        var sawOffer = false
        try pair.handshake(rng: &rng) { _, bytes in
            sawOffer = sawOffer || records(bytes).contains(where: isOffer)
            return bytes
        }
        #expect(!sawOffer, "nothing a version 1 peer does not know went on the wire")
        #expect(pair.initiator.version == 1 && pair.responder.version == 1)
        #expect(pair.initiator.cipher == cipher && pair.responder.cipher == cipher)
        try expectTraffic(&pair, rng: &rng)
    }

    @Test("A version 2 initiator links to a version 1 responder, on version 1")
    func version1Responder() throws {
        var rng = SplitMix64(seed: 27)
        for cipher in LinkCipher.allCases {
            // A version 2 initiator with AES instructions still opens with ChaCha20-Poly1305
            // (version 1's default) unless forced.
            let choice: LinkCipherChoice = cipher == .aesGCM ? .forced(.aesGCM) : .automatic(aesInstructions: true)
            var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                                initiatorCipher: choice, responderCipher: .forced(cipher), responderVersions: 1...1)
            try pair.handshake(rng: &rng)
            #expect(pair.initiator.version == 1 && pair.responder.version == 1)
            #expect(pair.initiator.cipher == cipher && pair.responder.cipher == cipher)
            try expectTraffic(&pair, rng: &rng)
        }
    }

    @Test("A version 2 end that forces a cipher refuses a version 1 peer running the other")
    func version1OtherCipher() throws {
        var rng = SplitMix64(seed: 29)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorCipher: .forced(.aesGCM), responderCipher: .forced(.chaChaPoly),
                            initiatorVersions: 1...1)
        var first = ByteArrayOutput()
        try pair.initiator.start(output: &first)
        #expect(throws: LinkError.noCommonCipher(offered: [.chaChaPoly], peerOffered: [.aesGCM])) {
            _ = try pair.deliver(first.bytes, toResponder: true, rng: &rng)
        }
    }

    /// The rewrites a man in the middle (without the cluster key) might try on the offers of
    /// two ends with AES instructions, each aimed at ChaCha20-Poly1305.
    enum Rewrite: String, CaseIterable, CustomStringConvertible {
        case responderDropsAES, responderSwapsOrder, initiatorDropsAES, initiatorSwapsOrder, bothConsistently
        var description: String { rawValue }

        func apply(toResponder: Bool, _ body: [UInt8]) -> [UInt8] {
            let chachaOnly = offer([1]), swapped = offer([1, 2])
            switch self {
            case .responderDropsAES: return toResponder ? body : chachaOnly
            case .responderSwapsOrder: return toResponder ? body : swapped
            case .initiatorDropsAES: return toResponder ? chachaOnly : body
            case .initiatorSwapsOrder: return toResponder ? swapped : body
            // Both ends then compute ChaCha20-Poly1305 and agree on it: only the prologue
            // (each end's true offer) tells them apart.
            case .bothConsistently: return chachaOnly
            }
        }
    }

    @Test("A man in the middle who rewrites a cipher offer makes the handshake fail", arguments: Rewrite.allCases)
    func tamperedOffer(rewrite: Rewrite) throws {
        var rng = SplitMix64(seed: 31)
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorCipher: .automatic(aesInstructions: true),
                            responderCipher: .automatic(aesInstructions: true))
        var rewritten = 0
        let tamper = { (toResponder: Bool, bytes: [UInt8]) -> [UInt8] in
            records(bytes).flatMap { body -> [UInt8] in
                guard isOffer(body) else { return record(body) }
                let changed = rewrite.apply(toResponder: toResponder, body)
                if changed != body { rewritten += 1 }
                return record(changed)
            }
        }
        do {
            try pair.handshake(rng: &rng, rewrite: tamper)
            Issue.record("the handshake succeeded with a rewritten offer (\(String(describing: pair.initiator.cipher)))")
        } catch let error as LinkError {
            guard case .handshakeFailed(let why) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(why.contains("altered"), "\(why)")
        }
        #expect(rewritten >= 1)
        #expect(pair.responder.phase == .failed)
        #expect(pair.initiator.phase != .established && pair.responder.phase != .established)
        #expect(pair.initiatorEvents.isEmpty && pair.responderEvents.isEmpty)
    }

    @Test("Malformed offers are refused; unknown cipher codes are skipped")
    func offerParsing() throws {
        var rng = SplitMix64(seed: 35)
        let bad: [[UInt8]] = [
            offer([]),                                   // no cipher
            offer([1, 2]).dropLast(),                    // count says 2, one follows
            offer([1]) + [2],                            // trailing byte
            offer([1], low: 2, high: 1),                 // versions reversed
            offer([1], low: 1, high: 1),                 // version 1 does not offer
            offer([9]),                                  // nothing known
            offer(Array(repeating: 1, count: 17)),       // too many
        ]
        for body in bad {
            var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key))
            var first = ByteArrayOutput()
            try pair.initiator.start(output: &first)
            _ = try pair.deliver(first.bytes, toResponder: true, rng: &rng)
            #expect(throws: LinkError.self, "\(body)") { _ = try pair.deliver(record(body), toResponder: false, rng: &rng) }
            #expect(pair.initiator.phase == .failed)
        }
        // An offer listing a cipher this version does not know, then AES-GCM: AES-GCM is chosen.
        var pair = try Pair(initiatorSecurity: .noise(key), responderSecurity: .noise(key),
                            initiatorCipher: .automatic(aesInstructions: true))
        var first = ByteArrayOutput()
        try pair.initiator.start(output: &first)
        _ = try pair.deliver(first.bytes, toResponder: true, rng: &rng)
        let reply = try pair.deliver(record(offer([77, 2, 1], low: 1, high: 5)), toResponder: false, rng: &rng)
        #expect(pair.initiator.cipher == .aesGCM)
        #expect(records(reply).count == 2, "the initiator's offer and its version 2 first message")
    }

    @Test("The choice rule is the same whichever offer is whose")
    func choiceRuleIsSymmetric() {
        let offers: [[LinkCipher]] = [[.aesGCM, .chaChaPoly], [.chaChaPoly, .aesGCM], [.aesGCM], [.chaChaPoly]]
        for a in offers {
            for b in offers {
                #expect(LinkCipherChoice.choose(a, b) == LinkCipherChoice.choose(b, a), "\(a) \(b)")
            }
        }
        #expect(LinkCipherChoice.choose([.aesGCM, .chaChaPoly], [.aesGCM, .chaChaPoly]) == .aesGCM)
        #expect(LinkCipherChoice.choose([.aesGCM, .chaChaPoly], [.chaChaPoly, .aesGCM]) == .chaChaPoly)
        #expect(LinkCipherChoice.choose([.aesGCM], [.chaChaPoly, .aesGCM]) == .aesGCM)
        #expect(LinkCipherChoice.choose([.aesGCM], [.chaChaPoly]) == nil)
    }

    /// Messages cross both ways on an established pair.
    func expectTraffic(_ pair: inout Pair, rng: inout SplitMix64) throws {
        var toResponder = ByteArrayOutput(), toInitiator = ByteArrayOutput()
        try frame(.ping, [1, 2, 3]).withUnsafeBytes { try pair.initiator.seal($0, into: &toResponder) }
        try frame(.pong, [4, 5]).withUnsafeBytes { try pair.responder.seal($0, into: &toInitiator) }
        _ = try pair.deliver(toResponder.bytes, toResponder: true, rng: &rng)
        _ = try pair.deliver(toInitiator.bytes, toResponder: false, rng: &rng)
        #expect(pair.responderMessages.last == [MessageType.ping.rawValue, 1, 2, 3])
        #expect(pair.initiatorMessages.last == [MessageType.pong.rawValue, 4, 5])
    }
}

@Suite("Link fuzz corpus")
struct LinkCorpusTests {
    @Test("The link fuzz seeds reach the cipher offers: responders answer one with theirs, initiators answer one with theirs")
    func seedsReachOffers() throws {
        // The fuzz target's fixed keys (Sources/P2PQLinkFuzz/main.swift).
        let key = ClusterKey(bytes: Array(repeating: 0x42, count: 32))!
        let identity = try NodeIdentity(fileContents: "p2pq-identity-v1 " + String(repeating: "11", count: 32))
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/corpus/link").standardized
        var responders = 0, initiators = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: directory.path) {
            let data = try [UInt8](Data(contentsOf: directory.appendingPathComponent(name)))
            guard data.count > 3, data[0] & 2 == 0 else { continue }
            let role: LinkSession.Role = data[0] & 1 == 0 ? .responder : .initiator
            var session = try LinkSession(role: role, security: .noise(key), identity: identity, maxFrameSize: 4096,
                                          cipher: .automatic(aesInstructions: data[0] & 4 != 0))
            var output = ByteArrayOutput()
            if role == .initiator { try session.start(output: &output) }
            let sentBefore = records(output.bytes).filter(isOffer).count
            // Only the first record: what answers it is what the seed is for.
            let length = Int(data[1]) << 8 | Int(data[2])
            guard data.count >= 3 + length else { continue }
            try? Array(data[1..<(3 + length)]).withUnsafeBytes { try session.receive($0, output: &output) { _ in } }
            guard records(output.bytes).filter(isOffer).count > sentBefore else { continue }
            if role == .responder { responders += 1 } else { initiators += 1 }
        }
        #expect(responders >= 3, "seeds whose version 2 first message a responder answers with its offer")
        #expect(initiators >= 3, "seeds whose offer an initiator answers with its own")
    }
}
