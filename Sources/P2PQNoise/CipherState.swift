import Crypto

/// A Noise `CipherState` (spec §5.1): an AEAD key plus a 64-bit message counter.
///
/// After a handshake, `HandshakeState.split()` yields one `CipherState` per direction.
/// Each encrypt/decrypt consumes one nonce; nonce `2^64-1` is reserved for ``rekey()``, so
/// once ``nonce`` reaches `UInt64.max` every call throws ``NoiseError/nonceExhausted``
/// instead of wrapping and reusing a nonce. A link layer should watch ``nonce`` and rekey
/// or close well before that.
///
/// Transport messages are limited to 65535 bytes including the 16-byte tag, so a
/// plaintext may be at most ``maxPlaintextLength`` bytes.
public struct CipherState: Sendable {
    /// Bytes of authentication tag appended to every ciphertext.
    public static let tagLength = 16
    /// Largest Noise message, handshake or transport (spec §3).
    public static let maxMessageLength = 65535
    /// Largest plaintext that fits one transport message.
    public static let maxPlaintextLength = maxMessageLength - tagLength
    /// The nonce value reserved for ``rekey()`` and never used for messages.
    public static let reservedNonce = UInt64.max

    /// The AEAD in use.
    public let cipher: NoiseCipherFunction
    private var key: AEADKey?

    /// The nonce the next encrypt/decrypt will use, which equals the number of messages
    /// processed so far. Exposed so a link layer can rekey or close at a threshold.
    public private(set) var nonce: UInt64

    /// An empty cipher state (no key yet), as at the start of a handshake.
    init(cipher: NoiseCipherFunction) {
        self.cipher = cipher
        self.key = nil
        self.nonce = 0
    }

    /// Testing/internal initializer: sets the key and an arbitrary starting nonce, e.g. near
    /// the limit to exercise exhaustion without 2^64 operations.
    /// `directAEAD: false` forces swift-crypto's allocating API, which tests use as the
    /// reference for the direct BoringSSL and OpenSSL paths; `openSSL: false` keeps a direct
    /// state on BoringSSL.
    init(
        cipher: NoiseCipherFunction, key: [UInt8], nonce: UInt64 = 0, directAEAD: Bool = AEADKey.directAvailable,
        openSSL: Bool = AEADKey.openSSLAvailable
    ) {
        precondition(key.count == 32, "Noise cipher keys are 32 bytes")
        self.cipher = cipher
        self.key = AEADKey(cipher: cipher, bytes: key, direct: directAEAD, openSSL: directAEAD && openSSL)
        self.nonce = nonce
    }

    /// Whether a key is set. Before the first `MixKey` of a handshake, encryption is the identity.
    public var hasKey: Bool { key != nil }

    /// Whether this state seals and opens through BoringSSL directly (see `AEADKey`).
    var usesDirectAEAD: Bool { key?.context != nil }

    /// Whether this state's full-record messages go through OpenSSL (see `AEADKey`).
    var usesOpenSSL: Bool { key?.usesOpenSSL ?? false }

    /// How many more messages this state may process before ``NoiseError/nonceExhausted``.
    public var remainingMessages: UInt64 { Self.reservedNonce - nonce }

    // MARK: Buffer-based (allocation-free) API

    /// Encrypts `plaintext` with `ad` into `output`, returning the bytes written
    /// (`plaintext.count + 16` with a key, `plaintext.count` without).
    ///
    /// `output` may alias `plaintext`: in place (both at the same address) is as fast as
    /// disjoint buffers; any other overlap takes a slower copying path. The caller's buffer is
    /// never resized or retained, and on Linux nothing is allocated.
    ///
    /// - Throws: ``NoiseError/nonceExhausted``, ``NoiseError/messageTooLong``,
    ///   ``NoiseError/bufferTooSmall(required:)``.
    public mutating func encrypt(
        plaintext: UnsafeRawBufferPointer,
        ad: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) -> Int {
        guard let key else {
            // Spec: EncryptWithAd without a key returns the plaintext unchanged.
            guard output.count >= plaintext.count else { throw .bufferTooSmall(required: plaintext.count) }
            if plaintext.count > 0 {
                output.baseAddress!.copyMemory(from: plaintext.baseAddress!, byteCount: plaintext.count)
            }
            return plaintext.count
        }
        guard nonce < Self.reservedNonce else { throw .nonceExhausted }
        guard plaintext.count <= Self.maxPlaintextLength else { throw .messageTooLong }
        let required = plaintext.count + Self.tagLength
        guard output.count >= required else { throw .bufferTooSmall(required: required) }
        try cipher.seal(key: key, nonce: nonce, ad: ad, plaintext: plaintext, into: output)
        nonce += 1
        return required
    }

    /// Decrypts `ciphertext` (body followed by the 16-byte tag) with `ad` into `output`,
    /// returning the plaintext length. `output` may alias `ciphertext` (as for encryption,
    /// in place is fast, other overlaps copy).
    ///
    /// On failure the nonce is not advanced (spec §5.1), so a forged message does not
    /// desynchronise the channel; the link layer should still treat it as fatal.
    ///
    /// - Throws: ``NoiseError/authenticationFailed``, ``NoiseError/messageTooShort``,
    ///   ``NoiseError/messageTooLong``, ``NoiseError/nonceExhausted``,
    ///   ``NoiseError/bufferTooSmall(required:)``.
    public mutating func decrypt(
        ciphertext: UnsafeRawBufferPointer,
        ad: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) throws(NoiseError) -> Int {
        guard let key else {
            guard output.count >= ciphertext.count else { throw .bufferTooSmall(required: ciphertext.count) }
            if ciphertext.count > 0 {
                output.baseAddress!.copyMemory(from: ciphertext.baseAddress!, byteCount: ciphertext.count)
            }
            return ciphertext.count
        }
        guard nonce < Self.reservedNonce else { throw .nonceExhausted }
        guard ciphertext.count <= Self.maxMessageLength else { throw .messageTooLong }
        guard ciphertext.count >= Self.tagLength else { throw .messageTooShort }
        let required = ciphertext.count - Self.tagLength
        guard output.count >= required else { throw .bufferTooSmall(required: required) }
        try cipher.open(key: key, nonce: nonce, ad: ad, ciphertext: ciphertext, into: output)
        nonce += 1
        return required
    }

    // MARK: Array convenience API

    /// Encrypts `plaintext` with associated data `ad`, returning ciphertext and tag.
    public mutating func encrypt(_ plaintext: [UInt8], ad: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        let capacity = plaintext.count + (hasKey ? Self.tagLength : 0)
        var failure: NoiseError?
        let result = [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
            do throws(NoiseError) {
                count = try withBytes(plaintext) { (pt) throws(NoiseError) in
                    try withBytes(ad) { (adBytes) throws(NoiseError) in
                        try encrypt(plaintext: pt, ad: adBytes, into: UnsafeMutableRawBufferPointer(buffer))
                    }
                }
            } catch {
                failure = error
                count = 0
            }
        }
        if let failure { throw failure }
        return result
    }

    /// Decrypts `ciphertext` (including its tag) with associated data `ad`.
    public mutating func decrypt(_ ciphertext: [UInt8], ad: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        try decrypt(ciphertext[...], ad: ad)
    }

    /// Decrypts a slice, so handshake parsing can avoid copying the tail of a message.
    public mutating func decrypt(_ ciphertext: ArraySlice<UInt8>, ad: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        let capacity = hasKey ? max(ciphertext.count - Self.tagLength, 0) : ciphertext.count
        var failure: NoiseError?
        let result = [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
            do throws(NoiseError) {
                count = try withBytes(ciphertext) { (ct) throws(NoiseError) in
                    try withBytes(ad) { (adBytes) throws(NoiseError) in
                        try decrypt(ciphertext: ct, ad: adBytes, into: UnsafeMutableRawBufferPointer(buffer))
                    }
                }
            } catch {
                failure = error
                count = 0
            }
        }
        if let failure { throw failure }
        return result
    }

    // MARK: Rekey

    /// Replaces the key with `REKEY(k)` = the first 32 bytes of
    /// `ENCRYPT(k, 2^64-1, "", 32 zero bytes)` (spec §4.2, §11.3).
    ///
    /// The nonce is deliberately left unchanged, as the spec requires: rekeying adds
    /// forward secrecy but does not extend the 2^64-1 message budget. Both peers must
    /// rekey at the same point in the stream. Without a key this does nothing.
    public mutating func rekey() throws(NoiseError) {
        guard let key else { return }
        let zeros = [UInt8](repeating: 0, count: 32)
        var output = [UInt8](repeating: 0, count: 32 + Self.tagLength)
        let result: Result<Void, NoiseError> = zeros.withUnsafeBytes { pt in
            output.withUnsafeMutableBytes { out in
                Result { () throws(NoiseError) in
                    try cipher.seal(key: key, nonce: Self.reservedNonce, ad: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: pt, into: out)
                }
            }
        }
        try result.get()
        self.key = AEADKey(cipher: cipher, bytes: output[0..<32], direct: key.context != nil)
    }
}

// The standard library's `withUnsafeBytes` is untyped `rethrows`; these keep `NoiseError` typed.
@inline(__always)
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(NoiseError) -> R) throws(NoiseError) -> R {
    let result: Result<R, NoiseError> = bytes.withUnsafeBytes { pointer in Result { () throws(NoiseError) in try body(pointer) } }
    return try result.get()
}

@inline(__always)
func withBytes<R>(_ bytes: ArraySlice<UInt8>, _ body: (UnsafeRawBufferPointer) throws(NoiseError) -> R) throws(NoiseError) -> R {
    let result: Result<R, NoiseError> = bytes.withUnsafeBytes { pointer in Result { () throws(NoiseError) in try body(pointer) } }
    return try result.get()
}
