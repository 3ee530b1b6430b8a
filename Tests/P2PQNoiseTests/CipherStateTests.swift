import Crypto
import Foundation
import Testing
@testable import P2PQNoise

@Suite("CipherState")
struct CipherStateTests {
    static let key = (0..<32).map { UInt8($0) }

    @Test("Nonce 2^64-1 is never used: exhaustion throws before wrap", arguments: [NoiseCipherFunction.chaChaPoly, .aesGCM])
    func nonceExhaustion(cipher: NoiseCipherFunction) throws {
        var sender = CipherState(cipher: cipher, key: Self.key, nonce: UInt64.max - 2)
        var receiver = CipherState(cipher: cipher, key: Self.key, nonce: UInt64.max - 2)
        #expect(sender.remainingMessages == 2)
        for value in [UInt8(1), 2] {
            #expect(try receiver.decrypt(sender.encrypt([value])) == [value])
        }
        #expect(sender.nonce == UInt64.max)
        #expect(sender.remainingMessages == 0)
        #expect(throws: NoiseError.nonceExhausted) { _ = try sender.encrypt([3]) }
        #expect(throws: NoiseError.nonceExhausted) { _ = try receiver.decrypt([UInt8](repeating: 0, count: 17)) }
        // Still exhausted, not wrapped to 0.
        #expect(sender.nonce == UInt64.max)
        #expect(throws: NoiseError.nonceExhausted) { _ = try sender.encrypt([]) }
    }

    @Test("Nonce near the limit is encoded in all 64 bits (differs from nonce 0)")
    func highNonceEncoding() throws {
        var low = CipherState(cipher: .chaChaPoly, key: Self.key, nonce: 0)
        var high = CipherState(cipher: .chaChaPoly, key: Self.key, nonce: 1 << 40)
        #expect(try low.encrypt([0, 0, 0]) != high.encrypt([0, 0, 0]))
        var reference = CipherState(cipher: .chaChaPoly, key: Self.key, nonce: 1 << 40)
        var other = CipherState(cipher: .chaChaPoly, key: Self.key, nonce: 1 << 40)
        #expect(try other.decrypt(reference.encrypt([5])) == [5])
    }

    @Test("rekey() = first 32 bytes of ENCRYPT(k, 2^64-1, \"\", zeros), nonce unchanged")
    func rekeyMatchesSpec() throws {
        var state = CipherState(cipher: .chaChaPoly, key: Self.key, nonce: 5)
        try state.rekey()
        #expect(state.nonce == 5)

        // Independent computation with swift-crypto directly: nonce = 4 zero bytes + LE64(2^64-1).
        let nonce = try ChaChaPoly.Nonce(data: [0, 0, 0, 0] + [UInt8](repeating: 0xFF, count: 8))
        let box = try ChaChaPoly.seal([UInt8](repeating: 0, count: 32), using: SymmetricKey(data: Self.key), nonce: nonce, authenticating: [UInt8]())
        let expectedKey = Array(box.ciphertext)
        #expect(expectedKey.count == 32)
        var reference = CipherState(cipher: .chaChaPoly, key: expectedKey, nonce: 5)
        #expect(try state.encrypt([1, 2, 3], ad: [9]) == reference.encrypt([1, 2, 3], ad: [9]))
    }

    @Test("Both sides rekeying in step keep talking; a one-sided rekey breaks the channel")
    func rekeyInStep() throws {
        var a = CipherState(cipher: .aesGCM, key: Self.key)
        var b = CipherState(cipher: .aesGCM, key: Self.key)
        #expect(try b.decrypt(a.encrypt([1])) == [1])
        try a.rekey()
        try b.rekey()
        #expect(try b.decrypt(a.encrypt([2])) == [2])
        try a.rekey()
        #expect(throws: NoiseError.authenticationFailed) { _ = try b.decrypt(a.encrypt([3])) }
    }

    @Test("Buffer API matches the array API, works in place, and reports small buffers")
    func bufferAPI() throws {
        var arrayState = CipherState(cipher: .chaChaPoly, key: Self.key)
        var bufferState = CipherState(cipher: .chaChaPoly, key: Self.key)
        let plaintext = Array("reactor frame".utf8)
        let ad: [UInt8] = [1, 2]
        let expected = try arrayState.encrypt(plaintext, ad: ad)

        var buffer = [UInt8](repeating: 0, count: 64)
        let written = try buffer.withUnsafeMutableBytes { out in
            try plaintext.withUnsafeBytes { pt in
                try ad.withUnsafeBytes { adBytes in
                    try bufferState.encrypt(plaintext: pt, ad: adBytes, into: out)
                }
            }
        }
        #expect(written == plaintext.count + 16)
        #expect(Array(buffer[..<written]) == expected)

        // Decrypt in place: ciphertext and output share the buffer.
        var receiver = CipherState(cipher: .chaChaPoly, key: Self.key)
        let plainCount = try buffer.withUnsafeMutableBytes { raw in
            try ad.withUnsafeBytes { adBytes in
                try receiver.decrypt(ciphertext: UnsafeRawBufferPointer(rebasing: raw[..<written]), ad: adBytes, into: raw)
            }
        }
        #expect(Array(buffer[..<plainCount]) == plaintext)

        var small = [UInt8](repeating: 0, count: plaintext.count + 15)
        #expect(throws: NoiseError.bufferTooSmall(required: plaintext.count + 16)) {
            _ = try small.withUnsafeMutableBytes { out in
                try plaintext.withUnsafeBytes { pt in
                    try bufferState.encrypt(plaintext: pt, ad: UnsafeRawBufferPointer(start: nil, count: 0), into: out)
                }
            }
        }
        #expect(bufferState.nonce == 1, "a rejected call does not consume a nonce")
    }

    @Test("Transport plaintext limit is 65535 - 16")
    func plaintextLimit() throws {
        var state = CipherState(cipher: .chaChaPoly, key: Self.key)
        #expect(try state.encrypt([UInt8](repeating: 0, count: CipherState.maxPlaintextLength)).count == 65535)
        #expect(throws: NoiseError.messageTooLong) { _ = try state.encrypt([UInt8](repeating: 0, count: CipherState.maxPlaintextLength + 1)) }
        #expect(throws: NoiseError.messageTooLong) { _ = try state.decrypt([UInt8](repeating: 0, count: 65536)) }
    }

    #if os(Linux)
    @Test("On Linux, seal/open go straight to swift-crypto's BoringSSL (no silent fallback)")
    func directPathIsActive() {
        #expect(AEADKey.directAvailable || ProcessInfo.processInfo.environment["P2PQ_AEAD_SWIFT_CRYPTO"] == "1")
        #expect(CipherState(cipher: .chaChaPoly, key: Self.key).usesDirectAEAD == AEADKey.directAvailable)
    }
    #endif

    @Test("Direct BoringSSL path = swift-crypto's API, byte for byte, across lengths, nonces, AD and rekeys",
          arguments: [NoiseCipherFunction.chaChaPoly, .aesGCM])
    func directMatchesSwiftCrypto(cipher: NoiseCipherFunction) throws {
        var direct = CipherState(cipher: cipher, key: Self.key, nonce: 0xFFFF_FFF0, directAEAD: true)
        var reference = CipherState(cipher: cipher, key: Self.key, nonce: 0xFFFF_FFF0, directAEAD: false)
        var directOpen = CipherState(cipher: cipher, key: Self.key, nonce: 0xFFFF_FFF0, directAEAD: true)
        var referenceOpen = CipherState(cipher: cipher, key: Self.key, nonce: 0xFFFF_FFF0, directAEAD: false)
        // Crosses the 2^32 boundary of the nonce's halves.
        for (index, length) in [0, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, 16384, CipherState.maxPlaintextLength].enumerated() {
            let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
            let ad: [UInt8] = index % 2 == 0 ? [] : [UInt8(index), 7, 9]
            let sealed = try direct.encrypt(plaintext, ad: ad)
            #expect(sealed == (try reference.encrypt(plaintext, ad: ad)), "length \(length)")
            #expect(try directOpen.decrypt(sealed, ad: ad) == plaintext)
            #expect(try referenceOpen.decrypt(sealed, ad: ad) == plaintext)
            if index % 4 == 3 {
                try direct.rekey(); try reference.rekey(); try directOpen.rekey(); try referenceOpen.rekey()
            }
        }
    }

    #if P2PQ_OPENSSL_TESTS
    @Test("Built with OpenSSL: ChaCha20-Poly1305 keys use it (no silent fallback), AES-GCM keys do not")
    func openSSLPathIsActive() {
        let environment = ProcessInfo.processInfo.environment
        #expect(AEADKey.openSSLAvailable || environment["P2PQ_AEAD_OPENSSL"] == "0" || environment["P2PQ_AEAD_SWIFT_CRYPTO"] == "1")
        #expect(CipherState(cipher: .chaChaPoly, key: Self.key).usesOpenSSL == AEADKey.openSSLAvailable)
        #expect(!CipherState(cipher: .aesGCM, key: Self.key).usesOpenSSL)
        #expect(!CipherState(cipher: .chaChaPoly, key: Self.key, openSSL: false).usesOpenSSL)
    }
    #endif

    @Test("OpenSSL and BoringSSL open what the other sealed, on both sides of the size where the choice changes",
          arguments: [AEADKey.openSSLMinimum - 1, AEADKey.openSSLMinimum, 16_366])
    func openSSLAndBoringSSLAgree(length: Int) throws {
        var openSSL = CipherState(cipher: .chaChaPoly, key: Self.key, openSSL: true)
        var boring = CipherState(cipher: .chaChaPoly, key: Self.key, openSSL: false)
        var openSSLReceiver = CipherState(cipher: .chaChaPoly, key: Self.key, openSSL: true)
        var boringReceiver = CipherState(cipher: .chaChaPoly, key: Self.key, openSSL: false)
        let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let ad: [UInt8] = [9, 8, 7]
        let a = try openSSL.encrypt(plaintext, ad: ad)
        let b = try boring.encrypt(plaintext, ad: ad)
        #expect(a == b)
        #expect(try boringReceiver.decrypt(a, ad: ad) == plaintext)
        #expect(try openSSLReceiver.decrypt(b, ad: ad) == plaintext)
        // Wrong AD: rejected by both.
        #expect(throws: NoiseError.authenticationFailed) { _ = try openSSLReceiver.decrypt(try openSSL.encrypt(plaintext, ad: ad), ad: []) }
    }

    @Test("Direct path: in-place seal and open, and any flipped bit is rejected without consuming a nonce",
          arguments: [NoiseCipherFunction.chaChaPoly, .aesGCM], [300, 16_366])
    func directInPlaceAndTamper(cipher: NoiseCipherFunction, length: Int) throws {
        var sender = CipherState(cipher: cipher, key: Self.key, directAEAD: true)
        var reference = CipherState(cipher: cipher, key: Self.key, directAEAD: false)
        var receiver = CipherState(cipher: cipher, key: Self.key, directAEAD: true)
        let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0) }
        var buffer = plaintext + [UInt8](repeating: 0, count: 16)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let written = try buffer.withUnsafeMutableBytes { raw in
            try sender.encrypt(plaintext: UnsafeRawBufferPointer(rebasing: raw[..<plaintext.count]), ad: none, into: raw)
        }
        #expect(written == plaintext.count + 16)
        #expect(buffer == (try reference.encrypt(plaintext)))

        for position in [0, 150, plaintext.count, plaintext.count + 15] {
            var forged = buffer
            forged[position] ^= 0x01
            #expect(throws: NoiseError.authenticationFailed) { _ = try receiver.decrypt(forged) }
            #expect(receiver.nonce == 0)
        }
        let count = try buffer.withUnsafeMutableBytes { raw in
            try receiver.decrypt(ciphertext: UnsafeRawBufferPointer(raw), ad: none, into: raw)
        }
        #expect(Array(buffer[..<count]) == plaintext)
        #expect(receiver.nonce == 1)
    }

    @Test("Partly overlapping buffers still work (through the copying path)")
    func overlappingBuffers() throws {
        var sender = CipherState(cipher: .chaChaPoly, key: Self.key, directAEAD: true)
        var reference = CipherState(cipher: .chaChaPoly, key: Self.key, directAEAD: false)
        let plaintext = (0..<100).map { UInt8($0) }
        var buffer = [UInt8](repeating: 0, count: 8) + plaintext + [UInt8](repeating: 0, count: 16)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        // Output starts 8 bytes before the plaintext: overlapping, not identical.
        _ = try buffer.withUnsafeMutableBytes { raw in
            try sender.encrypt(plaintext: UnsafeRawBufferPointer(rebasing: raw[8..<108]), ad: none, into: raw)
        }
        #expect(Array(buffer[..<116]) == (try reference.encrypt(plaintext)))
    }

    @Test("Without a key, encryption is the identity and uses no nonce (spec EncryptWithAd)")
    func emptyKey() throws {
        var state = CipherState(cipher: .chaChaPoly)
        #expect(!state.hasKey)
        #expect(try state.encrypt([1, 2, 3]) == [1, 2, 3])
        #expect(try state.decrypt([4, 5]) == [4, 5])
        #expect(state.nonce == 0)
    }
}

@Suite("Protocol names")
struct ProtocolNameTests {
    @Test("The project's protocol parses into XX with psk before e")
    func projectProtocol() throws {
        let proto = try NoiseProtocol(name: "Noise_XXpsk0_25519_ChaChaPoly_SHA256")
        #expect(proto == NoiseProtocol.xxPSK0)
        #expect(proto.pattern.baseName == "XX")
        #expect(proto.pattern.modifiers == ["psk0"])
        #expect(proto.pattern.messages == [[.psk, .e], [.e, .ee, .s, .es], [.s, .se]])
        #expect(proto.pattern.pskCount == 1)
        #expect(proto.dh == .curve25519 && proto.cipher == .chaChaPoly && proto.hash == .sha256)
    }

    @Test("Multiple PSK modifiers are applied in order at their positions")
    func multiplePSKs() throws {
        let pattern = try HandshakePattern.named("XXpsk0+psk3")
        #expect(pattern.messages == [[.psk, .e], [.e, .ee, .s, .es], [.s, .se, .psk]])
        #expect(try HandshakePattern.named("NNpsk2").messages == [[.e], [.e, .ee, .psk]])
        #expect(try HandshakePattern.named("IKpsk1").messages == [[.e, .es, .s, .ss, .psk], [.e, .ee, .se]])
        #expect(try HandshakePattern.named("Npsk0").messages == [[.psk, .e, .es]])
        #expect(try HandshakePattern.named("XXpsk0+psk1").pskCount == 2)
        let k = try HandshakePattern.named("K")
        #expect(k.isOneWay && k.initiatorPreMessage == [.s] && k.responderPreMessage == [.s])
    }

    @Test("Malformed and unsupported names give precise errors")
    func errors() {
        #expect(throws: NoiseError.invalidProtocolName("Noise_XX_25519_ChaChaPoly")) { _ = try NoiseProtocol(name: "Noise_XX_25519_ChaChaPoly") }
        #expect(throws: NoiseError.invalidProtocolName("Nois_XX_25519_ChaChaPoly_SHA256")) { _ = try NoiseProtocol(name: "Nois_XX_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.invalidProtocolName("Noise__25519_ChaChaPoly_SHA256")) { _ = try NoiseProtocol(name: "Noise__25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedPattern("ZZ")) { _ = try NoiseProtocol(name: "Noise_ZZ_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedPattern("xx")) { _ = try NoiseProtocol(name: "Noise_xx_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedModifier("psk4")) { _ = try NoiseProtocol(name: "Noise_XXpsk4_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedModifier("psk01")) { _ = try NoiseProtocol(name: "Noise_XXpsk01_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedModifier("psk0")) { _ = try NoiseProtocol(name: "Noise_XXpsk0+psk0_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedModifier("fallback")) { _ = try NoiseProtocol(name: "Noise_XXfallback_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedModifier("")) { _ = try NoiseProtocol(name: "Noise_XXpsk0+_25519_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedPrimitive("448")) { _ = try NoiseProtocol(name: "Noise_XX_448_ChaChaPoly_SHA256") }
        #expect(throws: NoiseError.unsupportedPrimitive("BLAKE2s")) { _ = try NoiseProtocol(name: "Noise_XX_25519_ChaChaPoly_BLAKE2s") }
        #expect(throws: NoiseError.unsupportedPrimitive("AESGCM256")) { _ = try NoiseProtocol(name: "Noise_XX_25519_AESGCM256_SHA256") }
    }
}
