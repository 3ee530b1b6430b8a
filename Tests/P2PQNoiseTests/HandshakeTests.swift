import Testing
@testable import P2PQNoise

private func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
}

/// Two parties for `name` with fresh keys; pre-message static keys are shared as needed.
private func makePair(
    _ name: String,
    prologue: [UInt8] = Array("p2pq test".utf8),
    initiatorPSKs: [[UInt8]]? = nil,
    responderPSKs: [[UInt8]]? = nil
) throws -> (initiator: HandshakeState, responder: HandshakeState) {
    let proto = try NoiseProtocol(name: name)
    let pattern = proto.pattern
    let initiatorStatic = NoiseKeyPair.generate()
    let responderStatic = NoiseKeyPair.generate()
    let psks = (0..<pattern.pskCount).map { _ in randomBytes(32) }
    let initiator = try HandshakeState(
        protocol: proto, role: .initiator, prologue: prologue,
        localStatic: initiatorStatic,
        remoteStatic: pattern.responderPreMessage.contains(.s) ? responderStatic.publicKey : nil,
        psks: initiatorPSKs ?? psks
    )
    let responder = try HandshakeState(
        protocol: proto, role: .responder, prologue: prologue,
        localStatic: responderStatic,
        remoteStatic: pattern.initiatorPreMessage.contains(.s) ? initiatorStatic.publicKey : nil,
        psks: responderPSKs ?? psks
    )
    return (initiator, responder)
}

/// Runs all handshake messages, checking each payload arrives intact. Returns the messages sent.
@discardableResult
private func completeHandshake(_ initiator: inout HandshakeState, _ responder: inout HandshakeState) throws -> [[UInt8]] {
    var sent: [[UInt8]] = []
    var index = 0
    while !initiator.isComplete {
        let payload = Array("payload \(index)".utf8)
        let message: [UInt8]
        let received: [UInt8]
        if initiator.isMyTurnToWrite {
            message = try initiator.writeMessage(payload: payload)
            received = try responder.readMessage(message)
        } else {
            message = try responder.writeMessage(payload: payload)
            received = try initiator.readMessage(message)
        }
        #expect(received == payload)
        sent.append(message)
        index += 1
    }
    #expect(responder.isComplete)
    return sent
}

@Suite("Handshake")
struct HandshakeTests {
    static let projectProtocol = "Noise_XXpsk0_25519_ChaChaPoly_SHA256"

    @Test("XXpsk0 round trip with random keys, then transport both ways")
    func xxpsk0RoundTrip() throws {
        let clusterKey = randomBytes(32)
        let initiatorKey = NoiseKeyPair.generate()
        let responderKey = NoiseKeyPair.generate()
        var initiator = try HandshakeState(protocol: .xxPSK0, role: .initiator, prologue: [1, 2, 3],
                                           localStatic: initiatorKey, psks: [clusterKey])
        var responder = try HandshakeState(protocolName: Self.projectProtocol, role: .responder, prologue: [1, 2, 3],
                                           localStatic: responderKey, psks: [clusterKey])

        let m1 = try initiator.writeMessage(payload: [])
        #expect(m1.count == 32 + 16, "XXpsk0 message 1 is e plus an authenticated (empty) payload")
        #expect(try responder.readMessage(m1) == [])
        let m2 = try responder.writeMessage(payload: Array("hello initiator".utf8))
        #expect(try initiator.readMessage(m2) == Array("hello initiator".utf8))
        let m3 = try initiator.writeMessage(payload: Array("hello responder".utf8))
        #expect(try responder.readMessage(m3) == Array("hello responder".utf8))

        #expect(initiator.isComplete && responder.isComplete)
        #expect(initiator.remoteStaticKey == responderKey.publicKey)
        #expect(responder.remoteStaticKey == initiatorKey.publicKey)
        #expect(initiator.handshakeHash == responder.handshakeHash)
        #expect(initiator.handshakeHash.count == 32)

        var (iSend, iReceive) = try initiator.transportCiphers()
        var (rSend, rReceive) = try responder.transportCiphers()
        for round in 0..<50 {
            let up = randomBytes(round * 37)
            let down = randomBytes(round * 11 + 1)
            #expect(try rReceive.decrypt(iSend.encrypt(up, ad: [UInt8(round)]), ad: [UInt8(round)]) == up)
            #expect(try iReceive.decrypt(rSend.encrypt(down)) == down)
        }
        #expect(iSend.nonce == 50 && rReceive.nonce == 50)
        // Directions use different keys: a message cannot be reflected back to its sender.
        let echo = try iSend.encrypt([9, 9, 9])
        #expect(throws: NoiseError.authenticationFailed) { _ = try iReceive.decrypt(echo) }
    }

    @Test("Wrong PSK is rejected at message 1 before any Diffie-Hellman")
    func wrongPSKRejectedAtFirstMessage() throws {
        var initiator = try HandshakeState(protocol: .xxPSK0, role: .initiator,
                                           localStatic: .generate(), psks: [randomBytes(32)])
        var responder = try HandshakeState(protocol: .xxPSK0, role: .responder,
                                           localStatic: .generate(), psks: [randomBytes(32)])
        let m1 = try initiator.writeMessage(payload: Array("join".utf8))
        #expect(throws: NoiseError.authenticationFailed) { _ = try responder.readMessage(m1) }
        #expect(responder.dhOperationCount == 0, "responder must not spend a DH on an unauthenticated peer")
        #expect(responder.messageIndex == 0, "failed read leaves the state untouched")
        #expect(responder.remoteEphemeralKey == nil)
    }

    @Test("DH counter counts: correct PSK passes message 1 with 0 DHs, message 2 costs 2")
    func dhCounterIsReal() throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        let m1 = try initiator.writeMessage(payload: [])
        _ = try responder.readMessage(m1)
        #expect(responder.dhOperationCount == 0)
        _ = try initiator.readMessage(responder.writeMessage(payload: []))
        #expect(responder.dhOperationCount == 2, "ee and es")
        #expect(initiator.dhOperationCount == 2)
    }

    @Test("A responder survives a forged first message and accepts the real one")
    func transactionalRead() throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        let m1 = try initiator.writeMessage(payload: [7])
        var forged = m1
        forged[forged.count - 1] ^= 0x80
        #expect(throws: NoiseError.authenticationFailed) { _ = try responder.readMessage(forged) }
        #expect(try responder.readMessage(m1) == [7])
    }

    @Test("Tampering any handshake byte or transport byte is detected", arguments: 0..<3)
    func tamperedHandshakeMessage(messageToTamper: Int) throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        var index = 0
        while !initiator.isComplete {
            let writerIsInitiator = initiator.isMyTurnToWrite
            var message = writerIsInitiator ? try initiator.writeMessage(payload: [1, 2, 3])
                                            : try responder.writeMessage(payload: [4, 5, 6])
            if index == messageToTamper {
                // Flip a bit in the first byte: the ephemeral key (message 1 and 2) or the
                // encrypted static key (message 3). Both feed the AEAD key or its AD.
                message[0] ^= 0x01
                if writerIsInitiator {
                    #expect(throws: NoiseError.authenticationFailed) { _ = try responder.readMessage(message) }
                } else {
                    #expect(throws: NoiseError.authenticationFailed) { _ = try initiator.readMessage(message) }
                }
                return
            }
            _ = writerIsInitiator ? try responder.readMessage(message) : try initiator.readMessage(message)
            index += 1
        }
        Issue.record("message \(messageToTamper) was never tampered")
    }

    @Test("Tampered transport ciphertext, tag or AD is rejected and does not consume a nonce")
    func tamperedTransport() throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        try completeHandshake(&initiator, &responder)
        var (send, _) = try initiator.transportCiphers()
        var (_, receive) = try responder.transportCiphers()
        let message = try send.encrypt(Array("work item 42".utf8), ad: [0xAA])
        for position in [0, message.count / 2, message.count - 1] {
            var bad = message
            bad[position] ^= 0x40
            #expect(throws: NoiseError.authenticationFailed) { _ = try receive.decrypt(bad, ad: [0xAA]) }
        }
        #expect(throws: NoiseError.authenticationFailed) { _ = try receive.decrypt(message, ad: [0xAB]) }
        #expect(throws: NoiseError.messageTooShort) { _ = try receive.decrypt(Array(message.prefix(15)), ad: [0xAA]) }
        #expect(receive.nonce == 0)
        #expect(try receive.decrypt(message, ad: [0xAA]) == Array("work item 42".utf8))
        // Replaying the same message fails: the receiver's nonce moved on.
        #expect(throws: NoiseError.authenticationFailed) { _ = try receive.decrypt(message, ad: [0xAA]) }
    }

    static let allPatterns: [String] = HandshakePattern.supportedBaseNames.flatMap { base -> [String] in
        let messageCount = (try? HandshakePattern.named(base).messages.count) ?? 0
        var names = ["Noise_\(base)_25519_ChaChaPoly_SHA256"]
        for position in 0...messageCount {
            names.append("Noise_\(base)psk\(position)_25519_ChaChaPoly_SHA256")
        }
        names.append("Noise_\(base)psk0+psk\(messageCount)_25519_AESGCM_SHA512")
        return names
    }

    @Test("Every supported pattern and PSK position completes and agrees", arguments: allPatterns)
    func everyPattern(name: String) throws {
        var (initiator, responder) = try makePair(name)
        try completeHandshake(&initiator, &responder)
        #expect(initiator.handshakeHash == responder.handshakeHash)
        var (iSend, _) = try initiator.transportCiphers()
        var (_, rReceive) = try responder.transportCiphers()
        #expect(try rReceive.decrypt(iSend.encrypt([1, 2, 3])) == [1, 2, 3])
        if !initiator.pattern.isOneWay {
            var (_, iReceive) = try initiator.transportCiphers()
            var (rSend, _) = try responder.transportCiphers()
            #expect(try iReceive.decrypt(rSend.encrypt([4, 5])) == [4, 5])
        }
    }

    @Test("Mismatched PSK fails at every PSK position", arguments: ["NNpsk0", "NNpsk2", "XXpsk1", "XXpsk3", "IKpsk2", "XXpsk0+psk3"])
    func mismatchedPSKFails(pattern: String) throws {
        let name = "Noise_\(pattern)_25519_ChaChaPoly_SHA256"
        let count = try HandshakePattern.named(pattern).pskCount
        let good = (0..<count).map { _ in randomBytes(32) }
        var bad = good
        bad[count - 1] = randomBytes(32)
        var (initiator, responder) = try makePair(name, initiatorPSKs: good, responderPSKs: bad)
        #expect(throws: NoiseError.authenticationFailed) { try completeHandshake(&initiator, &responder) }
    }

    @Test("Mismatched prologue fails")
    func mismatchedPrologue() throws {
        let psk = randomBytes(32)
        var initiator = try HandshakeState(protocol: .xxPSK0, role: .initiator, prologue: [1],
                                           localStatic: .generate(), psks: [psk])
        var responder = try HandshakeState(protocol: .xxPSK0, role: .responder, prologue: [2],
                                           localStatic: .generate(), psks: [psk])
        #expect(throws: NoiseError.authenticationFailed) { _ = try responder.readMessage(initiator.writeMessage()) }
    }

    @Test("Turn order, completion and split misuse are reported precisely")
    func stateErrors() throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        #expect(throws: NoiseError.notMyTurn) { _ = try responder.writeMessage() }
        #expect(throws: NoiseError.notMyTurn) { _ = try initiator.readMessage([UInt8](repeating: 0, count: 48)) }
        #expect(throws: NoiseError.handshakeIncomplete) { _ = try initiator.split() }
        try completeHandshake(&initiator, &responder)
        #expect(throws: NoiseError.handshakeComplete) { _ = try initiator.writeMessage() }
        #expect(throws: NoiseError.handshakeComplete) { _ = try responder.readMessage([]) }
        let (c1, c2) = try initiator.split()
        let (r1, r2) = try responder.split()
        var a = c1, b = r1, c = r2, d = c2
        #expect(try b.decrypt(a.encrypt([1])) == [1])
        #expect(try d.decrypt(c.encrypt([2])) == [2])
    }

    @Test("Message size limits")
    func sizeLimits() throws {
        var (initiator, responder) = try makePair(Self.projectProtocol)
        // 32 (e) + payload + 16 (tag) must fit in 65535.
        #expect(throws: NoiseError.messageTooLong) { _ = try initiator.writeMessage(payload: [UInt8](repeating: 0, count: 65535 - 48 + 1)) }
        #expect(initiator.messageIndex == 0)
        let m1 = try initiator.writeMessage(payload: [UInt8](repeating: 7, count: 65535 - 48))
        #expect(m1.count == 65535)
        #expect(throws: NoiseError.messageTooLong) { _ = try responder.readMessage(m1 + [0]) }
        #expect(throws: NoiseError.messageTooShort) { _ = try responder.readMessage(Array(m1.prefix(31))) }
        #expect(throws: NoiseError.messageTooShort) { _ = try responder.readMessage(Array(m1.prefix(32 + 15))) }
        #expect(try responder.readMessage(m1).count == 65535 - 48)
    }

    @Test("Missing, unexpected and malformed keys are rejected up front")
    func keyValidation() throws {
        #expect(throws: NoiseError.missingKey(.psk)) {
            _ = try HandshakeState(protocol: .xxPSK0, role: .initiator, localStatic: .generate())
        }
        #expect(throws: NoiseError.unusedPSKs(expected: 1, supplied: 2)) {
            _ = try HandshakeState(protocol: .xxPSK0, role: .initiator, localStatic: .generate(), psks: [randomBytes(32), randomBytes(32)])
        }
        #expect(throws: NoiseError.invalidKeyLength(.psk, expected: 32, actual: 16)) {
            _ = try HandshakeState(protocol: .xxPSK0, role: .initiator, localStatic: .generate(), psks: [randomBytes(16)])
        }
        #expect(throws: NoiseError.missingKey(.localStatic)) {
            _ = try HandshakeState(protocol: .xxPSK0, role: .responder, psks: [randomBytes(32)])
        }
        #expect(throws: NoiseError.missingKey(.remoteStatic)) {
            _ = try HandshakeState(protocolName: "Noise_IK_25519_ChaChaPoly_SHA256", role: .initiator, localStatic: .generate())
        }
        #expect(throws: NoiseError.unexpectedKey(.remoteStatic)) {
            _ = try HandshakeState(protocol: .xxPSK0, role: .initiator, localStatic: .generate(),
                                   remoteStatic: NoiseKeyPair.generate().publicKey, psks: [randomBytes(32)])
        }
        #expect(throws: NoiseError.invalidKeyLength(.localStatic, expected: 32, actual: 31)) {
            _ = try NoiseKeyPair(privateKey: randomBytes(31))
        }
        // NN needs no static key at all.
        _ = try HandshakeState(protocolName: "Noise_NN_25519_ChaChaPoly_SHA256", role: .responder)
    }

    @Test("A low-order peer ephemeral key is refused rather than mixed in")
    func lowOrderPointRejected() throws {
        var responder = try HandshakeState(protocolName: "Noise_NN_25519_ChaChaPoly_SHA256", role: .responder)
        // The all-zero u-coordinate is a small-order point: X25519 with it yields zero.
        _ = try responder.readMessage([UInt8](repeating: 0, count: 32))
        #expect(throws: NoiseError.invalidPublicKey(.remoteEphemeral)) { _ = try responder.writeMessage() }
        #expect(responder.messageIndex == 1)
    }

    @Test("Injected ephemeral keys make the handshake deterministic")
    func deterministicWithInjectedEphemerals() throws {
        let psk = randomBytes(32)
        let keys = (0..<4).map { _ in NoiseKeyPair.generate() }
        func run() throws -> [[UInt8]] {
            var initiator = try HandshakeState(protocol: .xxPSK0, role: .initiator, localStatic: keys[0], localEphemeral: keys[1], psks: [psk])
            var responder = try HandshakeState(protocol: .xxPSK0, role: .responder, localStatic: keys[2], localEphemeral: keys[3], psks: [psk])
            return try completeHandshake(&initiator, &responder) + [initiator.handshakeHash]
        }
        #expect(try run() == run())
    }
}
