/// Which key a ``NoiseError`` is talking about.
public enum NoiseKeyRole: String, Sendable, Hashable, CustomStringConvertible {
    /// This party's static key pair (`s`).
    case localStatic
    /// This party's ephemeral key pair (`e`).
    case localEphemeral
    /// The peer's static public key (`rs`).
    case remoteStatic
    /// The peer's ephemeral public key (`re`).
    case remoteEphemeral
    /// A pre-shared symmetric key consumed by a `psk` token.
    case psk

    public var description: String { rawValue }
}

/// Every failure the Noise engine can report.
///
/// The cases are deliberately fine-grained so a link layer can tell a peer that is
/// merely wrong (``authenticationFailed``) from a local programming error
/// (``notMyTurn``, ``missingKey(_:)``) without parsing strings.
public enum NoiseError: Error, Sendable, Hashable {
    /// The protocol name does not have the `Noise_<pattern>_<dh>_<cipher>_<hash>` shape.
    case invalidProtocolName(String)
    /// The handshake pattern (base name) is not one this engine knows.
    case unsupportedPattern(String)
    /// A pattern modifier (e.g. `fallback`, or `psk9` on a 3-message pattern) is unknown or inapplicable.
    case unsupportedModifier(String)
    /// A primitive is valid Noise but swift-crypto lacks it (`448`, `BLAKE2s`, `BLAKE2b`).
    case unsupportedPrimitive(String)
    /// The pattern needs a key that was not supplied.
    case missingKey(NoiseKeyRole)
    /// A key was supplied that the pattern will receive on the wire instead (e.g. `rs` in `XX`).
    case unexpectedKey(NoiseKeyRole)
    /// A supplied key (or one received on the wire) has the wrong length.
    case invalidKeyLength(NoiseKeyRole, expected: Int, actual: Int)
    /// More PSKs were supplied than the pattern has `psk` tokens.
    case unusedPSKs(expected: Int, supplied: Int)
    /// The peer's public key yields an all-zero shared secret (a low-order point), which we reject.
    case invalidPublicKey(NoiseKeyRole)
    /// AEAD tag check failed: wrong key (e.g. wrong PSK), tampering, or out-of-order/replayed data.
    case authenticationFailed
    /// Input is shorter than the tokens and authentication tag it must contain.
    case messageTooShort
    /// A Noise message may not exceed 65535 bytes (spec §3).
    case messageTooLong
    /// The caller-provided output buffer cannot hold the result.
    case bufferTooSmall(required: Int)
    /// `writeMessage` was called when the peer should send, or `readMessage` when we should.
    case notMyTurn
    /// The handshake has already finished; use the transport ciphers from `split()`.
    case handshakeComplete
    /// `split()` (or the handshake hash) was requested before the last handshake message.
    case handshakeIncomplete
    /// The cipher's 64-bit nonce reached 2^64-1, which is reserved; the session must be rekeyed or closed.
    case nonceExhausted
    /// The underlying crypto library failed for a reason other than authentication.
    case cryptoFailure(String)
}
