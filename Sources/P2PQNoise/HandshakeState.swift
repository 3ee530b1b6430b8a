/// Which side of the handshake this party plays.
public enum NoiseRole: Sendable, Hashable {
    /// Sends the first handshake message.
    case initiator
    /// Waits for the first handshake message.
    case responder
}

/// A Noise `HandshakeState` (spec §5.3): a plain value that turns payloads into handshake
/// messages and back, with no I/O of its own.
///
/// Typical use:
/// ```swift
/// var hs = try HandshakeState(protocol: .xxPSK0, role: .initiator,
///                             localStatic: identity, psks: [clusterKey])
/// let m1 = try hs.writeMessage(payload: [])      // -> peer
/// _ = try hs.readMessage(m2)                     // <- peer
/// let m3 = try hs.writeMessage(payload: hello)   // -> peer
/// let (send, receive) = try hs.transportCiphers()
/// ```
///
/// Every mutating call is transactional: if it throws, the state is exactly as it was
/// before the call, so a responder may drop a forged message and keep waiting for a real
/// one. Per spec §5.3 a caller will usually abort the handshake on error instead.
public struct HandshakeState: Sendable {
    /// The parsed protocol (pattern and primitives).
    public let noiseProtocol: NoiseProtocol
    /// Whether this party is the initiator or the responder.
    public let role: NoiseRole

    private var symmetric: SymmetricState
    private let localStatic: NoiseKeyPair?
    private var localEphemeral: NoiseKeyPair?
    /// The peer's static public key: supplied up front for pre-message patterns, learned
    /// from the handshake otherwise (after the message carrying it has been read).
    public private(set) var remoteStaticKey: [UInt8]?
    /// The peer's ephemeral public key, once received.
    public private(set) var remoteEphemeralKey: [UInt8]?
    private let psks: [[UInt8]]
    private var nextPSK = 0
    /// Index of the next handshake message to write or read.
    public private(set) var messageIndex = 0

    /// How many Diffie-Hellman operations this party has performed, kept even across a
    /// failed (rolled-back) call. Internal: tests use it to prove a wrong PSK is rejected
    /// before any DH work.
    private(set) var dhOperationCount = 0

    /// Creates a handshake from a protocol name such as `Noise_XXpsk0_25519_ChaChaPoly_SHA256`.
    public init(
        protocolName: String,
        role: NoiseRole,
        prologue: [UInt8] = [],
        localStatic: NoiseKeyPair? = nil,
        localEphemeral: NoiseKeyPair? = nil,
        remoteStatic: [UInt8]? = nil,
        psks: [[UInt8]] = []
    ) throws(NoiseError) {
        try self.init(
            protocol: NoiseProtocol(name: protocolName), role: role, prologue: prologue,
            localStatic: localStatic, localEphemeral: localEphemeral,
            remoteStatic: remoteStatic, psks: psks
        )
    }

    /// Creates a handshake (spec `Initialize`).
    ///
    /// - Parameters:
    ///   - noiseProtocol: The pattern, PSK modifiers, DH, cipher and hash to run.
    ///   - role: Initiator or responder.
    ///   - prologue: Data both sides must agree on; it is hashed, never sent.
    ///   - localStatic: `s`; required when the pattern sends it, uses it in a DH, or
    ///     has it in a pre-message.
    ///   - localEphemeral: `e`; leave `nil` in production so a fresh key is generated when
    ///     the `e` token is written. Injecting it exists for deterministic test vectors.
    ///   - remoteStatic: `rs`; required exactly when the peer's static key is a pre-message
    ///     (e.g. the responder key in `IK`, `NK`, `XK`), rejected when the peer will send it.
    ///   - psks: One 32-byte key per `psk` token, consumed in order.
    /// - Throws: ``NoiseError/missingKey(_:)``, ``NoiseError/unexpectedKey(_:)``,
    ///   ``NoiseError/invalidKeyLength(_:expected:actual:)``, ``NoiseError/unusedPSKs(expected:supplied:)``.
    public init(
        protocol noiseProtocol: NoiseProtocol,
        role: NoiseRole,
        prologue: [UInt8] = [],
        localStatic: NoiseKeyPair? = nil,
        localEphemeral: NoiseKeyPair? = nil,
        remoteStatic: [UInt8]? = nil,
        psks: [[UInt8]] = []
    ) throws(NoiseError) {
        let pattern = noiseProtocol.pattern
        let isInitiator = role == .initiator
        let myPre = isInitiator ? pattern.initiatorPreMessage : pattern.responderPreMessage
        let peerPre = isInitiator ? pattern.responderPreMessage : pattern.initiatorPreMessage
        let myTokens = pattern.messages.enumerated()
            .filter { ($0.offset % 2 == 0) == isInitiator }
            .flatMap(\.element)
        let peerTokens = pattern.messages.enumerated()
            .filter { ($0.offset % 2 == 0) != isInitiator }
            .flatMap(\.element)
        let allTokens = pattern.messages.flatMap { $0 }

        // Local static is needed if we announce it or any DH token uses it.
        let usesLocalStatic = myPre.contains(.s) || myTokens.contains(.s) || allTokens.contains { token in
            token == .ss || (token == .es && !isInitiator) || (token == .se && isInitiator)
        }
        if usesLocalStatic && localStatic == nil { throw .missingKey(.localStatic) }

        if peerPre.contains(.s) {
            guard let remoteStatic else { throw .missingKey(.remoteStatic) }
            guard remoteStatic.count == noiseProtocol.dh.dhLength else {
                throw .invalidKeyLength(.remoteStatic, expected: noiseProtocol.dh.dhLength, actual: remoteStatic.count)
            }
        } else if remoteStatic != nil && peerTokens.contains(.s) {
            // A pinned key would be silently overwritten by the one on the wire.
            throw .unexpectedKey(.remoteStatic)
        }
        // Ephemeral pre-messages only occur in `fallback`, which is not supported.
        precondition(!myPre.contains(.e) && !peerPre.contains(.e))

        if psks.count < pattern.pskCount { throw .missingKey(.psk) }
        if psks.count > pattern.pskCount { throw .unusedPSKs(expected: pattern.pskCount, supplied: psks.count) }
        for psk in psks where psk.count != 32 {
            throw .invalidKeyLength(.psk, expected: 32, actual: psk.count)
        }

        self.noiseProtocol = noiseProtocol
        self.role = role
        self.localStatic = localStatic
        self.localEphemeral = localEphemeral
        self.remoteStaticKey = remoteStatic
        self.psks = psks

        symmetric = SymmetricState(protocol: noiseProtocol)
        symmetric.mixHash(prologue)
        // Pre-messages are hashed initiator first, whoever we are (spec §5.3).
        for (preTokens, isMine) in [(pattern.initiatorPreMessage, isInitiator), (pattern.responderPreMessage, !isInitiator)] {
            for token in preTokens where token == .s {
                let key = isMine ? localStatic!.publicKey : remoteStatic!
                symmetric.mixHash(key)
            }
        }
    }

    // MARK: State queries

    /// The handshake pattern in use.
    public var pattern: HandshakePattern { noiseProtocol.pattern }

    /// True once every handshake message has been written or read; then call ``split()``.
    public var isComplete: Bool { messageIndex >= pattern.messages.count }

    /// True when the next handshake message is ours to write.
    public var isMyTurnToWrite: Bool {
        !isComplete && (messageIndex % 2 == 0) == (role == .initiator)
    }

    /// The handshake hash `h`. After the last message it is a channel binding value that
    /// both parties share (spec §11.2); before that it is only a transcript snapshot.
    public var handshakeHash: [UInt8] { symmetric.handshakeHash }

    /// This party's static public key, if it has one.
    public var localStaticPublicKey: [UInt8]? { localStatic?.publicKey }

    private var isPSKHandshake: Bool { pattern.pskCount > 0 }

    // MARK: Messages

    /// Builds the next handshake message carrying `payload` (spec `WriteMessage`).
    ///
    /// Tokens are processed in pattern order, then the payload is encrypted (or sent in
    /// clear before any key exists, e.g. `NN` message 1).
    ///
    /// - Throws: ``NoiseError/notMyTurn``, ``NoiseError/handshakeComplete``,
    ///   ``NoiseError/messageTooLong`` (over 65535 bytes), ``NoiseError/missingKey(_:)``,
    ///   ``NoiseError/invalidPublicKey(_:)``.
    public mutating func writeMessage(payload: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        guard !isComplete else { throw .handshakeComplete }
        guard isMyTurnToWrite else { throw .notMyTurn }
        guard payload.count <= CipherState.maxMessageLength else { throw .messageTooLong }
        var work = self
        defer { dhOperationCount = work.dhOperationCount }
        let message = try work.performWrite(payload: payload)
        self = work
        return message
    }

    /// Consumes the peer's next handshake message and returns its decrypted payload (spec
    /// `ReadMessage`).
    ///
    /// Tokens are processed strictly in pattern order, and the payload is authenticated
    /// with whatever key the tokens so far have produced. That ordering is what makes
    /// PSK-first patterns cheap to defend: in `XXpsk0` message 1 is `psk, e` — the PSK and
    /// the initiator's ephemeral key are mixed into the key (no Diffie-Hellman token at
    /// all), so its payload is AEAD-encrypted under a PSK-derived key. A responder holding
    /// a different PSK fails that tag check and this method throws
    /// ``NoiseError/authenticationFailed`` having performed **zero** DH operations; an
    /// unauthenticated peer cannot make it spend asymmetric crypto. (Even an empty payload
    /// carries a 16-byte tag, so the check always happens.)
    ///
    /// - Throws: ``NoiseError/authenticationFailed`` (wrong PSK/static key, tampering),
    ///   ``NoiseError/messageTooShort``, ``NoiseError/messageTooLong``,
    ///   ``NoiseError/notMyTurn``, ``NoiseError/handshakeComplete``,
    ///   ``NoiseError/invalidPublicKey(_:)``. On error the state is unchanged.
    public mutating func readMessage(_ message: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard !isComplete else { throw .handshakeComplete }
        guard !isMyTurnToWrite else { throw .notMyTurn }
        guard message.count <= CipherState.maxMessageLength else { throw .messageTooLong }
        var work = self
        defer { dhOperationCount = work.dhOperationCount }
        let payload = try work.performRead(message: message)
        self = work
        return payload
    }

    /// Spec `Split()`: the transport cipher states, `initiatorToResponder` first.
    ///
    /// For one-way patterns only `initiatorToResponder` may be used.
    /// - Throws: ``NoiseError/handshakeIncomplete`` before the last message.
    public func split() throws(NoiseError) -> (initiatorToResponder: CipherState, responderToInitiator: CipherState) {
        guard isComplete else { throw .handshakeIncomplete }
        let (c1, c2) = symmetric.split()
        return (c1, c2)
    }

    /// ``split()`` oriented for this party: `send` encrypts outgoing, `receive` decrypts incoming.
    public func transportCiphers() throws(NoiseError) -> (send: CipherState, receive: CipherState) {
        let (c1, c2) = try split()
        return role == .initiator ? (c1, c2) : (c2, c1)
    }

    // MARK: Token processing

    private mutating func performWrite(payload: [UInt8]) throws(NoiseError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + 3 * (noiseProtocol.dh.dhLength + CipherState.tagLength))
        for token in pattern.messages[messageIndex] {
            switch token {
            case .e:
                let ephemeral = localEphemeral ?? NoiseKeyPair.generate()
                localEphemeral = ephemeral
                out += ephemeral.publicKey
                symmetric.mixHash(ephemeral.publicKey)
                // PSK handshakes also key on `e` so the PSK-derived key is never reused (spec §9.2).
                if isPSKHandshake { symmetric.mixKey(ephemeral.publicKey) }
            case .s:
                guard let localStatic else { throw .missingKey(.localStatic) }
                out += try symmetric.encryptAndHash(localStatic.publicKey)
            case .ee, .es, .se, .ss:
                try mixDH(token)
            case .psk:
                try mixNextPSK()
            }
        }
        out += try symmetric.encryptAndHash(payload)
        guard out.count <= CipherState.maxMessageLength else { throw .messageTooLong }
        messageIndex += 1
        return out
    }

    private mutating func performRead(message: [UInt8]) throws(NoiseError) -> [UInt8] {
        let dhLength = noiseProtocol.dh.dhLength
        var cursor = message.startIndex
        func take(_ count: Int) throws(NoiseError) -> ArraySlice<UInt8> {
            guard message.endIndex - cursor >= count else { throw .messageTooShort }
            defer { cursor += count }
            return message[cursor..<cursor + count]
        }
        for token in pattern.messages[messageIndex] {
            switch token {
            case .e:
                let ephemeral = Array(try take(dhLength))
                remoteEphemeralKey = ephemeral
                symmetric.mixHash(ephemeral)
                if isPSKHandshake { symmetric.mixKey(ephemeral) }
            case .s:
                let length = dhLength + (symmetric.hasKey ? CipherState.tagLength : 0)
                remoteStaticKey = try symmetric.decryptAndHash(take(length))
            case .ee, .es, .se, .ss:
                try mixDH(token)
            case .psk:
                try mixNextPSK()
            }
        }
        let rest = message[cursor...]
        if symmetric.hasKey && rest.count < CipherState.tagLength { throw .messageTooShort }
        let payload = try symmetric.decryptAndHash(rest)
        messageIndex += 1
        return payload
    }

    /// Runs the DH a token names; which key is ours depends on role (spec §5.3).
    private mutating func mixDH(_ token: NoiseToken) throws(NoiseError) {
        let isInitiator = role == .initiator
        let useLocalStatic: Bool
        let useRemoteStatic: Bool
        switch token {
        case .ee: (useLocalStatic, useRemoteStatic) = (false, false)
        case .ss: (useLocalStatic, useRemoteStatic) = (true, true)
        case .es: (useLocalStatic, useRemoteStatic) = (!isInitiator, isInitiator)
        case .se: (useLocalStatic, useRemoteStatic) = (isInitiator, !isInitiator)
        case .e, .s, .psk: preconditionFailure("not a DH token")
        }
        guard let local = useLocalStatic ? localStatic : localEphemeral else {
            throw .missingKey(useLocalStatic ? .localStatic : .localEphemeral)
        }
        let remoteRole: NoiseKeyRole = useRemoteStatic ? .remoteStatic : .remoteEphemeral
        guard let remote = useRemoteStatic ? remoteStaticKey : remoteEphemeralKey else {
            throw .missingKey(remoteRole)
        }
        dhOperationCount += 1
        symmetric.mixKey(try noiseProtocol.dh.agree(local, remote, role: remoteRole))
    }

    private mutating func mixNextPSK() throws(NoiseError) {
        guard nextPSK < psks.count else { throw .missingKey(.psk) }
        symmetric.mixKeyAndHash(psks[nextPSK])
        nextPSK += 1
    }
}
