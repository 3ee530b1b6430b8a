import CP2PQAEAD
import Crypto
import Synchronization
#if P2PQ_OPENSSL
import CP2PQOpenSSL
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// MARK: - Primitive selectors

/// The Diffie-Hellman function of a Noise protocol name.
///
/// Only `25519` exists in swift-crypto; `448` parses but is reported as
/// ``NoiseError/unsupportedPrimitive(_:)``.
public enum NoiseDHFunction: String, Sendable, Hashable {
    /// X25519 (RFC 7748).
    case curve25519 = "25519"

    /// `DHLEN`: length of public keys and DH outputs in bytes.
    public var dhLength: Int { 32 }
}

/// The AEAD cipher of a Noise protocol name.
public enum NoiseCipherFunction: String, Sendable, Hashable {
    /// ChaCha20-Poly1305 (RFC 8439), little-endian nonce counter.
    case chaChaPoly = "ChaChaPoly"
    /// AES-256-GCM, big-endian nonce counter.
    case aesGCM = "AESGCM"
}

/// The hash function of a Noise protocol name.
///
/// `BLAKE2s`/`BLAKE2b` parse but are reported as ``NoiseError/unsupportedPrimitive(_:)``
/// because swift-crypto has no BLAKE2.
public enum NoiseHashFunction: String, Sendable, Hashable {
    /// SHA-256, HASHLEN 32.
    case sha256 = "SHA256"
    /// SHA-512, HASHLEN 64 (keys are truncated to 32 bytes).
    case sha512 = "SHA512"

    /// `HASHLEN` in bytes.
    public var hashLength: Int {
        switch self {
        case .sha256: 32
        case .sha512: 64
        }
    }
}

// MARK: - Keys

/// A Curve25519 key pair for use as a Noise static (`s`) or ephemeral (`e`) key.
///
/// Wraps swift-crypto's private key so the secret stays in its zeroing storage; the
/// public half is cached as bytes because every handshake hashes or transmits it.
public struct NoiseKeyPair: @unchecked Sendable {
    // @unchecked: swift-crypto < 4 lacks Sendable annotations; the key is immutable.
    let privateKey: Curve25519.KeyAgreement.PrivateKey

    /// The 32-byte raw public key.
    public let publicKey: [UInt8]

    /// Wraps an existing swift-crypto private key.
    public init(_ privateKey: Curve25519.KeyAgreement.PrivateKey) {
        self.privateKey = privateKey
        self.publicKey = Array(privateKey.publicKey.rawRepresentation)
    }

    /// Builds a key pair from a 32-byte raw private key (as stored on disk or in test vectors).
    public init(privateKey bytes: [UInt8]) throws(NoiseError) {
        guard bytes.count == 32 else {
            throw .invalidKeyLength(.localStatic, expected: 32, actual: bytes.count)
        }
        do {
            self.init(try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes))
        } catch {
            throw .cryptoFailure("invalid Curve25519 private key: \(error)")
        }
    }

    /// Generates a fresh random key pair.
    public static func generate() -> NoiseKeyPair {
        NoiseKeyPair(Curve25519.KeyAgreement.PrivateKey())
    }

    /// The raw private key, for persisting a static identity. Handle with care.
    public var privateKeyBytes: [UInt8] { Array(privateKey.rawRepresentation) }
}

// MARK: - DH

extension NoiseDHFunction {
    /// DH(key_pair, public_key). Rejects an all-zero result: the spec (§12.1) allows it, and a
    /// low-order peer key contributes nothing secret, so refusing it fails the handshake early.
    func agree(_ keyPair: NoiseKeyPair, _ publicKey: [UInt8], role: NoiseKeyRole) throws(NoiseError) -> [UInt8] {
        guard publicKey.count == dhLength else {
            throw .invalidKeyLength(role, expected: dhLength, actual: publicKey.count)
        }
        let shared: [UInt8]
        do {
            let peer = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: publicKey)
            let secret = try keyPair.privateKey.sharedSecretFromKeyAgreement(with: peer)
            shared = secret.withUnsafeBytes { Array($0) }
        } catch {
            throw .invalidPublicKey(role)
        }
        // Constant-time OR so the check does not leak where a non-zero byte is.
        guard shared.reduce(0, { $0 | $1 }) != 0 else { throw .invalidPublicKey(role) }
        return shared
    }
}

// MARK: - AEAD

/// A transport key: swift-crypto's `SymmetricKey` plus, where BoringSSL is reachable, a
/// BoringSSL AEAD context initialised once per key (not once per message), and for
/// ChaCha20-Poly1305, where the package is built with OpenSSL (`P2PQ_OPENSSL`), an OpenSSL
/// context, which takes precedence.
///
/// swift-crypto's `seal`/`open` return freshly allocated `Data` and copy the message twice
/// on the way (once into the sealed box's combined buffer, once out of it); at link speed
/// that bookkeeping costs as much as the cipher. The contexts seal and open straight into
/// the caller's buffer instead. All paths produce identical bytes (tests check it).
final class AEADKey: @unchecked Sendable {
    // @unchecked: immutable after init; BoringSSL allows concurrent seal/open on one context,
    // and the OpenSSL context, which keeps per-message state, is used under its mutex.
    let key: SymmetricKey
    let context: OpaquePointer?
    #if P2PQ_OPENSSL
    /// OpenSSL's ChaCha20-Poly1305 context, or nil; used only under `openSSLLock`.
    let openSSL: OpaquePointer?
    let openSSLLock = Mutex(())
    #endif

    init(
        cipher: NoiseCipherFunction, bytes: some ContiguousBytes, direct: Bool = AEADKey.directAvailable,
        openSSL useOpenSSL: Bool = AEADKey.openSSLAvailable
    ) {
        key = SymmetricKey(data: bytes)
        context = direct ? bytes.withUnsafeBytes { raw in
            p2pq_aead_new(cipher.boringSSLCipher, raw.bindMemory(to: UInt8.self).baseAddress!, raw.count)
        } : nil
        #if P2PQ_OPENSSL
        openSSL = useOpenSSL && cipher == .chaChaPoly ? bytes.withUnsafeBytes { raw -> OpaquePointer? in
            guard raw.count == 32 else { return nil }
            return p2pq_ossl_chacha_new(raw.bindMemory(to: UInt8.self).baseAddress!)
        } : nil
        #endif
    }

    deinit {
        p2pq_aead_free(context)
        #if P2PQ_OPENSSL
        if let openSSL { p2pq_ossl_chacha_free(openSSL) }
        #endif
    }

    /// Whether ChaCha20-Poly1305 keys use OpenSSL: the package was built with it, and
    /// `P2PQ_AEAD_OPENSSL=0` is not set (the benchmarks' way to compare with BoringSSL).
    static let openSSLAvailable: Bool = {
        #if P2PQ_OPENSSL
        ProcessInfo.processInfo.environment["P2PQ_AEAD_OPENSSL"] != "0"
            && ProcessInfo.processInfo.environment["P2PQ_AEAD_SWIFT_CRYPTO"] != "1"
        #else
        false
        #endif
    }()

    /// Messages shorter than this go to BoringSSL even when the key has an OpenSSL context, so
    /// only large link records (a full one is 65,518 bytes of plaintext) use OpenSSL. OpenSSL's EVP
    /// calls cost about a microsecond more per message (`p2pq bench cipher`: 79 against
    /// 233 MB/s at 100 bytes, 570 against 821 at 1100). In a tight loop its faster cipher wins
    /// that back from about 2 KiB (1227 against 1149 MB/s; 1952 against 1477 at 8 KiB). But
    /// with that 2 KiB threshold, W2's records of a few KiB (many calls per record) made the
    /// remote-call bench 10-15 % slower than on BoringSSL, and 8 KiB still cost about 8 %.
    /// Full records, a W1 stream's, gain in both places. Both libraries compute the same function,
    /// so each message may take either.
    static let openSSLMinimum = 16_000

    /// Whether this key seals and opens through OpenSSL (messages of ``openSSLMinimum`` bytes
    /// or more).
    var usesOpenSSL: Bool {
        #if P2PQ_OPENSSL
        openSSL != nil
        #else
        false
        #endif
    }

    /// Whether seal/open go straight to BoringSSL (Linux with swift-crypto's vendored copy).
    /// `P2PQ_AEAD_SWIFT_CRYPTO=1` in the environment forces swift-crypto's API (an escape
    /// hatch, and how the benchmarks measure the difference).
    static let directAvailable = p2pq_aead_available() != 0
        && ProcessInfo.processInfo.environment["P2PQ_AEAD_SWIFT_CRYPTO"] != "1"
}

extension NoiseCipherFunction {
    /// Authentication tag length for both supported AEADs.
    static let tagLength = 16

    fileprivate var boringSSLCipher: Int32 {
        switch self {
        case .chaChaPoly: Int32(P2PQ_AEAD_CHACHA20_POLY1305)
        case .aesGCM: Int32(P2PQ_AEAD_AES_256_GCM)
        }
    }

    /// ENCRYPT(k, n, ad, plaintext) writing `plaintext.count + 16` bytes to `output`.
    ///
    /// `output` may start where `plaintext` starts (in place) or not overlap it at all.
    func seal(
        key: AEADKey, nonce: UInt64,
        ad: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) {
        precondition(output.count >= plaintext.count + Self.tagLength)
        #if P2PQ_OPENSSL
        if let openSSL = key.openSSL, plaintext.count >= AEADKey.openSSLMinimum,
           Self.directSafe(UnsafeRawBufferPointer(output), plaintext) {
            let ok = withNonceBytes(nonce) { n in
                withNonNull(plaintext) { pt in
                    withNonNull(ad) { a in
                        key.openSSLLock.withLock { _ in
                            p2pq_ossl_chacha_seal(openSSL, output.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                  n, pt, plaintext.count, a, ad.count)
                        }
                    }
                }
            }
            guard ok == 1 else { throw .cryptoFailure("AEAD seal failed") }
            return
        }
        #endif
        if let context = key.context, Self.directSafe(UnsafeRawBufferPointer(output), plaintext) {
            let ok = withNonceBytes(nonce) { n in
                withNonNull(plaintext) { pt in
                    withNonNull(ad) { a in
                        p2pq_aead_seal(context, output.baseAddress!.assumingMemoryBound(to: UInt8.self), output.count,
                                       n, pt, plaintext.count, a, ad.count)
                    }
                }
            }
            guard ok == 1 else { throw .cryptoFailure("AEAD seal failed") }
            return
        }
        try sealWithSwiftCrypto(key: key.key, nonce: nonce, ad: ad, plaintext: plaintext, into: output)
    }

    /// DECRYPT(k, n, ad, ciphertext||tag) writing `ciphertext.count - 16` bytes to `output`.
    ///
    /// `output` may start where `ciphertext` starts (in place) or not overlap it at all.
    func open(
        key: AEADKey, nonce: UInt64,
        ad: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) {
        let bodyLength = ciphertext.count - Self.tagLength
        precondition(bodyLength >= 0 && output.count >= bodyLength)
        #if P2PQ_OPENSSL
        if let openSSL = key.openSSL, bodyLength >= AEADKey.openSSLMinimum,
           Self.directSafe(UnsafeRawBufferPointer(output), ciphertext) {
            let ok = withNonceBytes(nonce) { n in
                withNonNull(ad) { a in
                    withNonNull(UnsafeRawBufferPointer(output)) { out in
                        key.openSSLLock.withLock { _ in
                            p2pq_ossl_chacha_open(openSSL, UnsafeMutablePointer(mutating: out), n,
                                                  ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                  ciphertext.count, a, ad.count)
                        }
                    }
                }
            }
            // Any failure here means the tag did not verify; callers treat it as hostile input.
            guard ok == 1 else { throw .authenticationFailed }
            return
        }
        #endif
        if let context = key.context, Self.directSafe(UnsafeRawBufferPointer(output), ciphertext) {
            let ok = withNonceBytes(nonce) { n in
                withNonNull(ad) { a in
                    withNonNull(UnsafeRawBufferPointer(output)) { out in
                        p2pq_aead_open(context, UnsafeMutablePointer(mutating: out), output.count, n,
                                       ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self), ciphertext.count,
                                       a, ad.count)
                    }
                }
            }
            // Any failure here means the tag did not verify; callers treat it as hostile input.
            guard ok == 1 else { throw .authenticationFailed }
            return
        }
        try openWithSwiftCrypto(key: key.key, nonce: nonce, ad: ad, ciphertext: ciphertext, into: output)
    }

    /// BoringSSL accepts `out == in` or disjoint buffers, nothing in between.
    private static func directSafe(_ output: UnsafeRawBufferPointer, _ input: UnsafeRawBufferPointer) -> Bool {
        guard let out = output.baseAddress, let inp = input.baseAddress, !output.isEmpty, !input.isEmpty else {
            return true
        }
        return out == inp || out + output.count <= inp || inp + input.count <= out
    }

    /// swift-crypto's allocating API: the fallback where BoringSSL is not reachable, and the
    /// reference the direct path is tested against.
    func sealWithSwiftCrypto(
        key: SymmetricKey, nonce: UInt64,
        ad: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) {
        precondition(output.count >= plaintext.count + Self.tagLength)
        do {
            switch self {
            case .chaChaPoly:
                let box = try withNonceBytes(nonce) { bytes in
                    try ChaChaPoly.seal(plaintext, using: key, nonce: ChaChaPoly.Nonce(data: bytes), authenticating: ad)
                }
                copy(box.ciphertext, box.tag, into: output)
            case .aesGCM:
                let box = try withNonceBytes(nonce) { bytes in
                    try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(data: bytes), authenticating: ad)
                }
                copy(box.ciphertext, box.tag, into: output)
            }
        } catch {
            throw .cryptoFailure("AEAD seal failed: \(error)")
        }
    }

    func openWithSwiftCrypto(
        key: SymmetricKey, nonce: UInt64,
        ad: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) {
        let bodyLength = ciphertext.count - Self.tagLength
        precondition(bodyLength >= 0 && output.count >= bodyLength)
        let body = UnsafeRawBufferPointer(rebasing: ciphertext[..<bodyLength])
        let tag = UnsafeRawBufferPointer(rebasing: ciphertext[bodyLength...])
        let plaintext: Data
        do {
            switch self {
            case .chaChaPoly:
                plaintext = try withNonceBytes(nonce) { bytes in
                    let box = try ChaChaPoly.SealedBox(nonce: ChaChaPoly.Nonce(data: bytes), ciphertext: body, tag: tag)
                    return try ChaChaPoly.open(box, using: key, authenticating: ad)
                }
            case .aesGCM:
                plaintext = try withNonceBytes(nonce) { bytes in
                    let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: bytes), ciphertext: body, tag: tag)
                    return try AES.GCM.open(box, using: key, authenticating: ad)
                }
            }
        } catch {
            throw .authenticationFailed
        }
        _ = plaintext.copyBytes(to: output)
    }

    /// Builds the 96-bit nonce on the stack: 32 zero bits then the counter, little-endian for
    /// ChaChaPoly and big-endian for AESGCM (spec §12.3, §12.4).
    private func withNonceBytes<R>(_ n: UInt64, _ body: (UnsafePointer<UInt8>) throws -> R) rethrows -> R {
        let low = UInt32(truncatingIfNeeded: n)
        let high = UInt32(truncatingIfNeeded: n >> 32)
        var words: (UInt32, UInt32, UInt32)
        switch self {
        case .chaChaPoly: words = (0, low.littleEndian, high.littleEndian)
        case .aesGCM: words = (0, high.bigEndian, low.bigEndian)
        }
        return try withUnsafeBytes(of: &words) { try body($0.bindMemory(to: UInt8.self).baseAddress!) }
    }

    private func withNonceBytes<R>(_ n: UInt64, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withNonceBytes(n) { (pointer: UnsafePointer<UInt8>) in try body(UnsafeRawBufferPointer(start: pointer, count: 12)) }
    }

    private func copy(_ ciphertext: Data, _ tag: Data, into output: UnsafeMutableRawBufferPointer) {
        let written = ciphertext.copyBytes(to: output)
        _ = tag.copyBytes(to: UnsafeMutableRawBufferPointer(rebasing: output[written...]))
    }
}

/// A valid pointer for a possibly empty buffer (an empty Swift buffer may have no address;
/// C wants one anyway).
@inline(__always)
private func withNonNull<R>(_ buffer: UnsafeRawBufferPointer, _ body: (UnsafePointer<UInt8>) -> R) -> R {
    if let base = buffer.baseAddress { return body(base.assumingMemoryBound(to: UInt8.self)) }
    var byte: UInt8 = 0
    return withUnsafePointer(to: &byte) { body($0) }
}

// MARK: - Hash, HMAC, HKDF

extension NoiseHashFunction {
    /// HASH(a || b) without concatenating: MixHash runs on every token.
    func hash(_ a: [UInt8], _ b: UnsafeRawBufferPointer) -> [UInt8] {
        switch self {
        case .sha256: Self.digest(SHA256.self, a, b)
        case .sha512: Self.digest(SHA512.self, a, b)
        }
    }

    func hash(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { hash([], $0) }
    }

    private static func digest<H: HashFunction>(_: H.Type, _ a: [UInt8], _ b: UnsafeRawBufferPointer) -> [UInt8] {
        var hasher = H()
        hasher.update(data: a)
        hasher.update(bufferPointer: b)
        return Array(hasher.finalize())
    }

    /// HMAC-HASH(key, a || b).
    func hmac(key: [UInt8], _ a: [UInt8], _ b: [UInt8] = []) -> [UInt8] {
        switch self {
        case .sha256: Self.mac(SHA256.self, key, a, b)
        case .sha512: Self.mac(SHA512.self, key, a, b)
        }
    }

    private static func mac<H: HashFunction>(_: H.Type, _ key: [UInt8], _ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        var mac = HMAC<H>(key: SymmetricKey(data: key))
        mac.update(data: a)
        mac.update(data: b)
        return Array(mac.finalize())
    }

    /// Noise HKDF (spec §4.3): two or three HASHLEN outputs chained from `chainingKey`.
    func hkdf(chainingKey: [UInt8], input: [UInt8], outputs: Int) -> [[UInt8]] {
        precondition(outputs == 2 || outputs == 3)
        let tempKey = hmac(key: chainingKey, input)
        var result: [[UInt8]] = []
        var previous: [UInt8] = []
        for index in 1...outputs {
            previous = hmac(key: tempKey, previous, [UInt8(index)])
            result.append(previous)
        }
        return result
    }
}
