/// The Noise `SymmetricState` (spec §5.2): chaining key, handshake hash and the handshake
/// `CipherState`. Internal because callers only ever need it through `HandshakeState`.
struct SymmetricState: Sendable {
    let hashFunction: NoiseHashFunction
    var cipherState: CipherState
    /// Chaining key `ck`.
    private(set) var chainingKey: [UInt8]
    /// Handshake hash `h`.
    private(set) var handshakeHash: [UInt8]

    /// InitializeSymmetric(protocol_name).
    init(protocol proto: NoiseProtocol) {
        hashFunction = proto.hash
        let nameBytes = Array(proto.name.utf8)
        if nameBytes.count <= proto.hash.hashLength {
            // Short names are zero-padded rather than hashed (spec §5.2).
            handshakeHash = nameBytes + [UInt8](repeating: 0, count: proto.hash.hashLength - nameBytes.count)
        } else {
            handshakeHash = proto.hash.hash(nameBytes)
        }
        chainingKey = handshakeHash
        cipherState = CipherState(cipher: proto.cipher)
    }

    var hasKey: Bool { cipherState.hasKey }

    /// Noise keys are 32 bytes even when HASHLEN is 64, so HKDF outputs are truncated.
    private static func truncatedKey(_ bytes: [UInt8]) -> [UInt8] { Array(bytes.prefix(32)) }

    mutating func mixKey(_ inputKeyMaterial: [UInt8]) {
        let out = hashFunction.hkdf(chainingKey: chainingKey, input: inputKeyMaterial, outputs: 2)
        chainingKey = out[0]
        // A fresh key always restarts the nonce at zero.
        cipherState = CipherState(cipher: cipherState.cipher, key: Self.truncatedKey(out[1]))
    }

    mutating func mixHash(_ data: [UInt8]) {
        data.withUnsafeBytes { mixHash($0) }
    }

    mutating func mixHash(_ data: UnsafeRawBufferPointer) {
        handshakeHash = hashFunction.hash(handshakeHash, data)
    }

    mutating func mixHash(_ data: ArraySlice<UInt8>) {
        data.withUnsafeBytes { mixHash($0) }
    }

    /// Used by `psk` tokens: binds the PSK into both the key and the transcript.
    mutating func mixKeyAndHash(_ inputKeyMaterial: [UInt8]) {
        let out = hashFunction.hkdf(chainingKey: chainingKey, input: inputKeyMaterial, outputs: 3)
        chainingKey = out[0]
        mixHash(out[1])
        cipherState = CipherState(cipher: cipherState.cipher, key: Self.truncatedKey(out[2]))
    }

    /// Encrypts with `h` as associated data, then hashes the ciphertext into `h`.
    mutating func encryptAndHash(_ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let ciphertext = try cipherState.encrypt(plaintext, ad: handshakeHash)
        mixHash(ciphertext)
        return ciphertext
    }

    /// Decrypts with `h` as associated data; `h` absorbs the ciphertext only on success.
    mutating func decryptAndHash(_ ciphertext: ArraySlice<UInt8>) throws(NoiseError) -> [UInt8] {
        let plaintext = try cipherState.decrypt(ciphertext, ad: handshakeHash)
        mixHash(ciphertext)
        return plaintext
    }

    /// Split(): the two transport cipher states, initiator-to-responder first.
    func split() -> (CipherState, CipherState) {
        let out = hashFunction.hkdf(chainingKey: chainingKey, input: [], outputs: 2)
        return (
            CipherState(cipher: cipherState.cipher, key: Self.truncatedKey(out[0])),
            CipherState(cipher: cipherState.cipher, key: Self.truncatedKey(out[1]))
        )
    }
}
