import P2PQNoise
import P2PQWire

/// Where a link writes its records. `TCPConnection` conforms (the shell adds that); tests use
/// a byte array.
public protocol LinkOutput {
    /// Lets `body` write up to `capacity` bytes in place; `body` returns how many it wrote.
    mutating func write(reservingCapacity capacity: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int)
}

/// The AEAD a Noise link runs. Protocol version 2 negotiates it (docs/protocol.md §2,
/// "Cipher offer"); a version 1 handshake names none, so both ends must run the same one.
public enum LinkCipher: String, Sendable, Hashable, CaseIterable {
    /// ChaCha20-Poly1305: fast everywhere, the choice unless both ends have AES instructions.
    case chaChaPoly = "ChaChaPoly"
    /// AES-256-GCM: several times faster where the CPU has AES and carry-less multiply
    /// instructions (x86-64 AES-NI/VAES, ARMv8 crypto extensions), slower where it has not.
    case aesGCM = "AESGCM"

    /// `Noise_XXpsk0_25519_<cipher>_SHA256`.
    public var noiseProtocolName: String { "Noise_XXpsk0_25519_\(rawValue)_SHA256" }

    /// The cipher's byte in a cipher offer.
    var offerCode: UInt8 {
        switch self {
        case .chaChaPoly: 1
        case .aesGCM: 2
        }
    }

    init?(offerCode: UInt8) {
        switch offerCode {
        case 1: self = .chaChaPoly
        case 2: self = .aesGCM
        default: return nil
        }
    }
}

/// Which link ciphers a node offers. Detecting the CPU's AES instructions is the caller's
/// business (the node does it once at start); the session only sees the answer.
public enum LinkCipherChoice: Sendable, Hashable {
    /// AES-256-GCM with a peer that also reports AES instructions, ChaCha20-Poly1305 otherwise.
    /// A version 1 link (which names no cipher) runs ChaCha20-Poly1305, version 1's default.
    case automatic(aesInstructions: Bool)
    /// Only this cipher, also on version 1 links; a peer that cannot run it is refused with
    /// ``LinkError/noCommonCipher(offered:peerOffered:)``.
    case forced(LinkCipher)

    /// The ciphers this node offers, most preferred first.
    public var offered: [LinkCipher] {
        switch self {
        case .automatic(let aes): aes ? [.aesGCM, .chaChaPoly] : [.chaChaPoly, .aesGCM]
        case .forced(let cipher): [cipher]
        }
    }

    /// The cipher of a version 1 handshake.
    var version1Cipher: LinkCipher {
        switch self {
        case .automatic: .chaChaPoly
        case .forced(let cipher): cipher
        }
    }

    /// The rule both ends apply to the two offers (the result does not depend on which offer
    /// is whose): the cipher both put first, else the first of ChaCha20-Poly1305, AES-256-GCM
    /// that both offer, else none.
    public static func choose(_ a: [LinkCipher], _ b: [LinkCipher]) -> LinkCipher? {
        if let first = a.first, first == b.first { return first }
        return [LinkCipher.chaChaPoly, .aesGCM].first { a.contains($0) && b.contains($0) }
    }
}

/// How a link is secured.
public enum LinkSecurity: Sendable {
    /// `Noise_XXpsk0_25519_ChaChaPoly_SHA256` (or AESGCM, see ``LinkCipher``) with the cluster
    /// key as the pre-shared key: the default and the only mode allowed off loopback.
    case noise(ClusterKey)
    /// No handshake cryptography and plaintext records: for loopback benchmarks only. Peers
    /// are not authenticated; the claimed PeerID is taken on trust.
    case insecure
}

/// What a link reports while it receives.
public enum LinkEvent {
    /// The handshake finished: the peer's PeerID (proved by its static key under Noise) and
    /// the protocol version both sides will speak.
    case established(remote: PeerID, version: UInt16)
    /// A message arrived. The body is valid only during the callback.
    case message(MessageType, UnsafeRawBufferPointer)
}

/// Why a link failed. Every case closes the connection; the shell logs the description.
public enum LinkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The first handshake message did not authenticate under our cluster key: the peer has
    /// another key (or, on a version 1 link, another link cipher). Detected before any
    /// Diffie-Hellman.
    case wrongClusterKey
    /// A later handshake message was malformed or failed authentication.
    case handshakeFailed(String)
    /// The peer's protocol versions do not overlap ours.
    case noCommonVersion(peerMinimum: UInt16, peerMaximum: UInt16)
    /// The two cipher offers have no cipher in common (one end forces a cipher the other does
    /// not offer), or a version 1 peer runs another cipher than the one this end forces.
    case noCommonCipher(offered: [LinkCipher], peerOffered: [LinkCipher])
    /// One side is in insecure mode and the other is not, or the peer sent something that is
    /// not a p2pq handshake at all.
    case notAP2PQPeer(String)
    /// The record or message framing was violated.
    case framing(WireError)
    /// A transport record failed authentication (tampering, or a desynchronised stream).
    case recordAuthenticationFailed
    /// The send or receive nonce is about to run out: the link must be re-established.
    case nonceExhausted
    /// `seal` before the handshake finished.
    case notEstablished

    public var description: String {
        switch self {
        case .wrongClusterKey: return "handshake refused: the peer does not hold our cluster key (or, speaking protocol version 1, runs another link cipher)"
        case .handshakeFailed(let why): return "handshake failed: \(why)"
        case .noCommonVersion(let lo, let hi):
            return "no common protocol version: peer speaks \(lo)...\(hi), we speak \(WireProtocol.supportedVersions.lowerBound)...\(WireProtocol.supportedVersions.upperBound)"
        case .noCommonCipher(let ours, let theirs):
            return "no common link cipher: we offer \(ours.map(\.rawValue).joined(separator: ", ")), the peer offers \(theirs.map(\.rawValue).joined(separator: ", ")) (see --link-cipher)"
        case .notAP2PQPeer(let why): return "not a p2pq peer: \(why)"
        case .framing(let error): return "framing error: \(error)"
        case .recordAuthenticationFailed: return "a record failed authentication"
        case .nonceExhausted: return "the link's nonce space is exhausted"
        case .notEstablished: return "the link is not established"
        }
    }
}

/// One end of a peer link as a plain value: the handshake, then record encryption and message
/// framing. Bytes from the socket go in through ``receive(_:output:onEvent:)``; handshake
/// replies come out through `output`, messages through `onEvent`. ``seal(_:into:)`` turns a
/// batch of encoded messages into records.
///
/// Wire format (docs/protocol.md): every record is a big-endian u16 length and a body. During
/// the handshake a body is one Noise handshake message or a cleartext cipher offer; afterwards
/// it is a Noise transport message (ciphertext plus 16-byte tag) whose plaintexts,
/// concatenated, carry the message stream. Many messages share a record, and a message may
/// span records.
///
/// The initiator opens with a version 1 first message that names its versions. A version 1
/// responder carries on with version 1; a version 2 responder answers with its cipher offer,
/// the initiator sends its own, and a fresh handshake runs under the cipher both compute from
/// the two offers, with both offers in its prologue (so a rewritten offer fails it).
///
/// Both directions rekey (Noise `REKEY`) every `rekeyInterval` records (default ``LinkSession/defaultRekeyInterval``); the nonce counts are
/// identical on both ends, so no signal is needed. A link closes before its nonce could wrap.
public struct LinkSession: Sendable {
    public enum Role: Sendable { case initiator, responder }
    public enum Phase: Sendable, Equatable { case handshaking, established, failed }

    /// Hashed into a version 1 handshake: a peer of another protocol cannot complete it.
    static let prologue = Array("p2pq-link/1".utf8)
    /// Starts a version 2 handshake's prologue; the first message and both offers follow.
    static let prologue2 = Array("p2pq-link/2".utf8)
    static let magic = Array("P2PQ".utf8)
    static let insecureMagic = Array("P2PQ-INSECURE".utf8)
    /// Starts a cipher offer.
    static let offerMagic = Array("P2PQ-OFFER".utf8)
    /// Most ciphers an offer may list.
    static let maxOfferedCiphers = 16
    /// A version 1 second handshake message is always this long (e, encrypted s, encrypted
    /// 2-byte payload); an offer is always shorter, which is how an initiator tells them apart.
    static let version1SecondMessageLength = 32 + (32 + 16) + (2 + 16)
    /// Records between rekeys in each direction.
    public static let defaultRekeyInterval: UInt64 = 1 << 20
    /// Plaintext bytes per sealed record: 64 KiB minus the 2-byte length and the 16-byte tag,
    /// so a full record is exactly one of the reactor's 64 KiB outbound chunks. A record costs
    /// a fixed few EVP calls on top of its bytes (about a microsecond with OpenSSL); 16 KiB
    /// records made that 5-10 % of a 1 KiB W1 stream's CPU and 20-30 % of the Noise link
    /// bench's (docs/benchmarks.md). Small messages still go out in small records: a record
    /// holds what is queued when the link flushes.
    public static let defaultRecordPlaintextSize = 64 * 1024 - 2 - CipherState.tagLength

    /// Where a Noise handshake stands.
    private enum NoiseStage: Sendable {
        /// Initiator, before ``start(output:)``.
        case idle
        /// Initiator: the version 1 first message went out (`probe` is its handshake, `first`
        /// its bytes). A version 1 responder answers with message 2, a version 2 one with its
        /// offer.
        case probed(probe: HandshakeState, first: [UInt8])
        /// Responder: waiting for the first message.
        case awaitingFirst
        /// Responder: answered a version 2 initiator's first message (`first`) with `offer`;
        /// waiting for the initiator's offer.
        case offered(first: [UInt8], offer: [UInt8])
        /// The handshake whose keys the link will use; `version2` when it follows the offers.
        case running(HandshakeState, version2: Bool)
        /// Keys are in place, or the session failed, or the link is insecure.
        case finished
    }

    public let role: Role
    public private(set) var phase: Phase = .handshaking
    public private(set) var remotePeerID: PeerID?
    public private(set) var version: UInt16 = 0
    public let localPeerID: PeerID
    /// The ciphers this end offers.
    public let cipherChoice: LinkCipherChoice
    /// The protocol versions this end speaks (``WireProtocol/supportedVersions`` unless
    /// narrowed, e.g. to run as a version 1 node in interoperability tests).
    public let versions: ClosedRange<UInt16>
    /// The AEAD the link runs: known once the handshake has settled it; nil while it has not
    /// and on insecure links.
    public private(set) var cipher: LinkCipher?

    private let security: LinkSecurity
    private let identity: NodeIdentity
    private var handshakeKeys: HandshakeKeySource
    private var stage: NoiseStage
    private var sender: CipherState?
    private var receiver: CipherState?
    private var records = RecordDecoder()
    private var messages: MessageDecoder
    private let rekeyInterval: UInt64
    private let recordPlaintextSize: Int
    /// Decrypted record plaintext (one record at a time).
    private var plaintext: [UInt8] = []
    /// A failure raised inside a decoder callback, which can only throw `WireError`.
    private var pendingError: LinkError?

    /// Records sealed and opened so far (for tests and metrics).
    public private(set) var recordsSent: UInt64 = 0
    public private(set) var recordsReceived: UInt64 = 0
    /// Whole handshake messages received and accepted so far. A connection that has sent
    /// none is stalled (or not a peer): the shell may close it sooner than the handshake timeout.
    public private(set) var handshakeMessagesReceived = 0

    /// - Parameters:
    ///   - cipher: Which ciphers to offer (``LinkCipherChoice``); the caller detects AES
    ///     instructions.
    ///   - versions: The protocol versions to speak; clamped to ``WireProtocol/supportedVersions``.
    ///   - handshakeKeys: Where the handshakes' ephemeral keys come from (the system's secure
    ///     random source unless a test or simulation replays a handshake from a seed).
    public init(
        role: Role,
        security: LinkSecurity,
        identity: NodeIdentity,
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize,
        rekeyInterval: UInt64 = LinkSession.defaultRekeyInterval,
        recordPlaintextSize: Int = LinkSession.defaultRecordPlaintextSize,
        cipher: LinkCipherChoice = .automatic(aesInstructions: false),
        versions: ClosedRange<UInt16> = WireProtocol.supportedVersions,
        handshakeKeys: HandshakeKeySource = .system
    ) throws(LinkError) {
        self.role = role
        self.handshakeKeys = handshakeKeys
        self.cipherChoice = cipher
        self.versions = versions.clamped(to: WireProtocol.supportedVersions)
        self.security = security
        self.identity = identity
        self.localPeerID = identity.peerID
        self.rekeyInterval = max(1, rekeyInterval)
        self.recordPlaintextSize = min(max(1, recordPlaintextSize), CipherState.maxPlaintextLength)
        do {
            messages = try MessageDecoder(maxFrameSize: maxFrameSize)
        } catch {
            throw .framing(error)
        }
        switch security {
        case .insecure: stage = .finished
        case .noise: stage = role == .initiator ? .idle : .awaitingFirst
        }
        // Fail now rather than mid-handshake if the key or identity cannot make a handshake.
        if case .noise = security { _ = try makeHandshake(cipher.version1Cipher, prologue: Self.prologue, drawingKey: false) }
    }

    // MARK: Handshake

    /// The initiator's first handshake record. Call once, before anything is received.
    public mutating func start(output: inout some LinkOutput) throws(LinkError) {
        precondition(role == .initiator, "only the initiator starts")
        switch security {
        case .insecure:
            var body = Self.insecureMagic
            appendU16(&body, versions.lowerBound)
            appendU16(&body, versions.upperBound)
            body += localPeerID.bytes
            writeRecord(body, to: &output)
        case .noise:
            guard case .idle = stage else { preconditionFailure("start called twice") }
            // A version 1 first message, whichever version we speak: a version 1 responder
            // understands it, and its payload tells a version 2 responder to offer ciphers.
            do {
                var probe = try makeHandshake(cipherChoice.version1Cipher, prologue: Self.prologue)
                let first = try probe.writeMessage(payload: versionPayload())
                writeRecord(first, to: &output)
                stage = .probed(probe: probe, first: first)
            } catch let error as LinkError {
                throw fail(error)
            } catch {
                throw fail(.handshakeFailed("\(error)"))
            }
        }
    }

    /// Feeds bytes read from the socket. Handshake replies are written to `output`; the
    /// handshake's end and every message are reported through `onEvent`, in order.
    public mutating func receive(
        _ bytes: UnsafeRawBufferPointer,
        output: inout some LinkOutput,
        onEvent: (LinkEvent) -> Void
    ) throws(LinkError) {
        guard phase != .failed else { throw pendingError ?? .notEstablished }
        // The record decoder is moved out while it calls back into `self` (exclusivity), and
        // swapped rather than copied so its reassembly buffer is not duplicated.
        var decoder = records
        records = RecordDecoder()
        defer { records = decoder }
        do {
            try decoder.feed(bytes) { (record) throws(WireError) in
                if let error = self.handleRecord(record, output: &output, onEvent: onEvent) {
                    self.pendingError = error
                    // Abort the feed; the real error is `pendingError`.
                    throw WireError.malformed(field: "record", reason: "\(error)")
                }
            }
        } catch {
            let failure = pendingError ?? .framing(error)
            throw fail(failure)
        }
    }

    private mutating func handleRecord(
        _ record: UnsafeRawBufferPointer,
        output: inout some LinkOutput,
        onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        if phase == .established { return openRecord(record, onEvent: onEvent) }
        let error: LinkError?
        switch security {
        case .insecure: error = insecureHandshake(record, output: &output, onEvent: onEvent)
        case .noise: error = noiseHandshake(Array(record), output: &output, onEvent: onEvent)
        }
        if error == nil { handshakeMessagesReceived += 1 }
        return error
    }

    private mutating func noiseHandshake(
        _ record: [UInt8],
        output: inout some LinkOutput,
        onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        switch stage {
        case .idle, .finished:
            return .handshakeFailed("unexpected handshake message")
        case .awaitingFirst:
            return receiveFirst(record, output: &output)
        case .probed(let probe, let first):
            if versions.upperBound >= 2, record.count < Self.version1SecondMessageLength,
               record.starts(with: Self.offerMagic) {
                return receiveResponderOffer(record, first: first, output: &output)
            }
            return receiveVersion1Second(record, probe: probe, output: &output, onEvent: onEvent)
        case .offered(let first, let offer):
            return receiveInitiatorOffer(record, first: first, offer: offer)
        case .running(var handshake, let version2):
            let index = handshake.messageIndex
            let payload: [UInt8]
            do {
                payload = try handshake.readMessage(record)
            } catch .authenticationFailed where index == 0 {
                // The first message already proved the cluster key: only the prologue differs.
                return .handshakeFailed("the cipher offers were altered in transit (version 2 first message did not authenticate)")
            } catch {
                return .handshakeFailed("\(error)")
            }
            switch (role, index) {
            case (.responder, 0):
                // -> psk, e, after the offers: the initiator's magic and versions, again.
                guard let (low, high) = parseVersionPayload(payload) else {
                    return .handshakeFailed("bad first handshake payload")
                }
                guard let chosen = chooseVersion(low: low, high: high), chosen >= 2 else {
                    return .noCommonVersion(peerMinimum: low, peerMaximum: high)
                }
                version = chosen
                return answerVersion(chosen, handshake, version2: version2, output: &output)
            case (.initiator, 1):
                // <- e, ee, s, es: the version the responder chose (2 or more after offers).
                guard payload.count == 2 else { return .handshakeFailed("bad second handshake payload") }
                let chosen = readU16(payload, 0)
                guard versions.contains(chosen), chosen >= 2 || !version2 else {
                    return .noCommonVersion(peerMinimum: chosen, peerMaximum: chosen)
                }
                version = chosen
                return finishInitiator(handshake, output: &output, onEvent: onEvent)
            case (.responder, 2):
                guard payload.isEmpty else { return .handshakeFailed("unexpected third handshake payload") }
                return finishHandshake(handshake, onEvent: onEvent)
            default:
                return .handshakeFailed("unexpected handshake message \(index)")
            }
        }
    }

    /// Responder: the first message is always in version 1 form. Its cipher is not named, so
    /// a version 2 responder tries each; a version 1 one only its own (as version 1 did).
    private mutating func receiveFirst(_ record: [UInt8], output: inout some LinkOutput) -> LinkError? {
        let own = cipherChoice.version1Cipher
        let candidates = versions.upperBound >= 2 ? [own] + LinkCipher.allCases.filter { $0 != own } : [own]
        for candidate in candidates {
            var handshake: HandshakeState
            do {
                handshake = try makeHandshake(candidate, prologue: Self.prologue)
            } catch {
                return error
            }
            let payload: [UInt8]
            do {
                payload = try handshake.readMessage(record)
            } catch .authenticationFailed {
                continue
            } catch {
                return .notAP2PQPeer("first handshake message: \(error)")
            }
            guard let (low, high) = parseVersionPayload(payload) else {
                return .notAP2PQPeer("bad first handshake payload")
            }
            if high >= 2 && versions.upperBound >= 2 {
                // A version 2 initiator: the cipher of this message does not matter; offer ours.
                let offer = makeOffer()
                writeRecord(offer, to: &output)
                stage = .offered(first: record, offer: offer)
                return nil
            }
            // A version 1 link runs the one cipher version 1 knows of, which must be allowed here.
            if case .forced(let forced) = cipherChoice, forced != candidate {
                return .noCommonCipher(offered: [forced], peerOffered: [candidate])
            }
            guard let chosen = chooseVersion(low: low, high: high) else {
                return .noCommonVersion(peerMinimum: low, peerMaximum: high)
            }
            version = chosen
            cipher = candidate
            return answerVersion(chosen, handshake, version2: false, output: &output)
        }
        return .wrongClusterKey
    }

    /// Initiator: a version 1 responder's second message.
    private mutating func receiveVersion1Second(
        _ record: [UInt8], probe: HandshakeState, output: inout some LinkOutput, onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        var handshake = probe
        let payload: [UInt8]
        do {
            payload = try handshake.readMessage(record)
        } catch {
            return .handshakeFailed("\(error)")
        }
        guard payload.count == 2 else { return .handshakeFailed("bad second handshake payload") }
        let chosen = readU16(payload, 0)
        // Version 2 and later are reached only through the offers.
        guard chosen == 1, versions.contains(chosen) else {
            return .noCommonVersion(peerMinimum: chosen, peerMaximum: chosen)
        }
        version = chosen
        cipher = cipherChoice.version1Cipher
        return finishInitiator(handshake, output: &output, onEvent: onEvent)
    }

    /// Initiator: a version 2 responder's offer. Sends ours and the first message of the
    /// handshake the link will use.
    private mutating func receiveResponderOffer(
        _ record: [UInt8], first: [UInt8], output: inout some LinkOutput
    ) -> LinkError? {
        guard let peer = Self.parseOffer(record) else { return .handshakeFailed("malformed cipher offer") }
        guard peer.high >= 2, let top = chooseVersion(low: peer.low, high: peer.high), top >= 2 else {
            return .noCommonVersion(peerMinimum: peer.low, peerMaximum: peer.high)
        }
        let offer = makeOffer()
        guard let chosen = LinkCipherChoice.choose(cipherChoice.offered, peer.ciphers) else {
            // Still send our offer, so the responder can say why too.
            writeRecord(offer, to: &output)
            return .noCommonCipher(offered: cipherChoice.offered, peerOffered: peer.ciphers)
        }
        do {
            var handshake = try makeHandshake(chosen, prologue: Self.version2Prologue(first: first, initiatorOffer: offer, responderOffer: record))
            let message = try handshake.writeMessage(payload: versionPayload())
            writeRecord(offer, to: &output)
            writeRecord(message, to: &output)
            cipher = chosen
            stage = .running(handshake, version2: true)
            return nil
        } catch let error as LinkError {
            return error
        } catch {
            return .handshakeFailed("\(error)")
        }
    }

    /// Responder: the initiator's offer, after ours. The handshake it settles comes next.
    private mutating func receiveInitiatorOffer(_ record: [UInt8], first: [UInt8], offer: [UInt8]) -> LinkError? {
        guard let peer = Self.parseOffer(record) else { return .handshakeFailed("malformed cipher offer") }
        guard let chosen = LinkCipherChoice.choose(peer.ciphers, cipherChoice.offered) else {
            return .noCommonCipher(offered: cipherChoice.offered, peerOffered: peer.ciphers)
        }
        do {
            let handshake = try makeHandshake(chosen, prologue: Self.version2Prologue(first: first, initiatorOffer: record, responderOffer: offer))
            cipher = chosen
            stage = .running(handshake, version2: true)
            return nil
        } catch {
            return error
        }
    }

    /// Initiator: writes the third message and finishes.
    private mutating func finishInitiator(
        _ handshake: HandshakeState, output: inout some LinkOutput, onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        var handshake = handshake
        do {
            writeRecord(try handshake.writeMessage(payload: []), to: &output)
        } catch {
            return .handshakeFailed("\(error)")
        }
        return finishHandshake(handshake, onEvent: onEvent)
    }

    private mutating func finishHandshake(_ handshake: HandshakeState, onEvent: (LinkEvent) -> Void) -> LinkError? {
        guard handshake.isComplete, let remoteStatic = handshake.remoteStaticKey else {
            return .handshakeFailed("handshake incomplete")
        }
        do {
            let ciphers = try handshake.transportCiphers()
            sender = ciphers.send
            receiver = ciphers.receive
        } catch {
            return .handshakeFailed("\(error)")
        }
        stage = .finished
        let remote = PeerID(publicKey: remoteStatic)
        remotePeerID = remote
        phase = .established
        onEvent(.established(remote: remote, version: version))
        return nil
    }

    /// A handshake under `cipher`; its ephemeral key comes from ``handshakeKeys`` (not drawn
    /// for one only built to check the configuration).
    private mutating func makeHandshake(_ cipher: LinkCipher, prologue: [UInt8], drawingKey: Bool = true) throws(LinkError) -> HandshakeState {
        guard case .noise(let key) = security else { preconditionFailure("no handshake on an insecure link") }
        do {
            return try HandshakeState(
                protocolName: cipher.noiseProtocolName,
                role: role == .initiator ? .initiator : .responder,
                prologue: prologue,
                localStatic: identity.keyPair,
                localEphemeral: drawingKey ? handshakeKeys.next() : nil,
                psks: [key.bytes]
            )
        } catch {
            throw .handshakeFailed("\(error)")
        }
    }

    /// The first message's payload: magic and the versions this end speaks.
    private func versionPayload() -> [UInt8] {
        var payload = Self.magic
        appendU16(&payload, versions.lowerBound)
        appendU16(&payload, versions.upperBound)
        return payload
    }

    private func parseVersionPayload(_ payload: [UInt8]) -> (low: UInt16, high: UInt16)? {
        guard payload.count == 8, payload.starts(with: Self.magic) else { return nil }
        return (readU16(payload, 4), readU16(payload, 6))
    }

    /// This end's cipher offer: magic, versions, count, then one byte per cipher, most
    /// preferred first.
    private func makeOffer() -> [UInt8] {
        var offer = Self.offerMagic
        appendU16(&offer, versions.lowerBound)
        appendU16(&offer, versions.upperBound)
        let ciphers = cipherChoice.offered
        offer.append(UInt8(ciphers.count))
        offer += ciphers.map(\.offerCode)
        return offer
    }

    /// Decodes an offer; ciphers this end does not know are skipped (a later version may
    /// offer more), repeats count once.
    static func parseOffer(_ bytes: [UInt8]) -> (low: UInt16, high: UInt16, ciphers: [LinkCipher])? {
        let header = offerMagic.count + 5
        guard bytes.count > header, bytes.starts(with: offerMagic) else { return nil }
        let count = Int(bytes[header - 1])
        guard (1...maxOfferedCiphers).contains(count), bytes.count == header + count else { return nil }
        let low = readU16(bytes, offerMagic.count), high = readU16(bytes, offerMagic.count + 2)
        guard low <= high else { return nil }
        var ciphers: [LinkCipher] = []
        for code in bytes[header...] {
            if let cipher = LinkCipher(offerCode: code), !ciphers.contains(cipher) { ciphers.append(cipher) }
        }
        return (low, high, ciphers)
    }

    /// Binds what was exchanged in the clear (the first message and both offers, byte for
    /// byte as sent and received) into the handshake the link will use.
    static func version2Prologue(first: [UInt8], initiatorOffer: [UInt8], responderOffer: [UInt8]) -> [UInt8] {
        var prologue = prologue2
        for part in [first, initiatorOffer, responderOffer] {
            appendU16(&prologue, UInt16(part.count))
            prologue += part
        }
        return prologue
    }

    private mutating func insecureHandshake(
        _ record: UnsafeRawBufferPointer,
        output: inout some LinkOutput,
        onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        let bytes = Array(record)
        let magic = Self.insecureMagic
        guard bytes.count >= magic.count, Array(bytes.prefix(magic.count)) == magic else {
            return .notAP2PQPeer("expected an insecure-mode handshake (is the peer using a cluster key?)")
        }
        var offset = magic.count
        switch role {
        case .responder:
            guard bytes.count == offset + 4 + 32 else { return .notAP2PQPeer("bad insecure hello") }
            let low = readU16(bytes, offset), high = readU16(bytes, offset + 2)
            offset += 4
            guard let chosen = chooseVersion(low: low, high: high) else {
                return .noCommonVersion(peerMinimum: low, peerMaximum: high)
            }
            version = chosen
            var reply = magic
            appendU16(&reply, chosen)
            reply += localPeerID.bytes
            writeRecord(reply, to: &output)
        case .initiator:
            guard bytes.count == offset + 2 + 32 else { return .notAP2PQPeer("bad insecure reply") }
            let chosen = readU16(bytes, offset)
            offset += 2
            guard versions.contains(chosen) else {
                return .noCommonVersion(peerMinimum: chosen, peerMaximum: chosen)
            }
            version = chosen
        }
        guard let remote = PeerID(bytes: bytes[offset...]) else { return .notAP2PQPeer("bad peer id") }
        remotePeerID = remote
        phase = .established
        onEvent(.established(remote: remote, version: version))
        return nil
    }

    func chooseVersion(low: UInt16, high: UInt16) -> UInt16? {
        let top = min(high, versions.upperBound)
        return top >= max(low, versions.lowerBound) ? top : nil
    }

    // MARK: Transport

    private mutating func openRecord(_ record: UnsafeRawBufferPointer, onEvent: (LinkEvent) -> Void) -> LinkError? {
        recordsReceived &+= 1
        guard var cipher = receiver else {
            // Insecure: the record is plaintext.
            return feedMessages(record, onEvent: onEvent)
        }
        guard cipher.remainingMessages > 1 else { return .nonceExhausted }
        if plaintext.count < record.count { plaintext = [UInt8](repeating: 0, count: CipherState.maxMessageLength) }
        let count: Int
        do {
            count = try plaintext.withUnsafeMutableBytes { (out) throws(NoiseError) -> Int in
                try cipher.decrypt(ciphertext: record, ad: UnsafeRawBufferPointer(start: nil, count: 0), into: out)
            }
        } catch {
            return .recordAuthenticationFailed
        }
        if cipher.nonce % rekeyInterval == 0 {
            do { try cipher.rekey() } catch { return .nonceExhausted }
        }
        receiver = cipher
        return plaintext.withUnsafeBytes { feedMessages(UnsafeRawBufferPointer(rebasing: $0.prefix(count)), onEvent: onEvent) }
    }

    private mutating func feedMessages(_ bytes: UnsafeRawBufferPointer, onEvent: (LinkEvent) -> Void) -> LinkError? {
        do {
            try messages.feed(bytes) { (type, body) throws(WireError) in onEvent(.message(type, body)) }
        } catch {
            return .framing(error)
        }
        return nil
    }

    /// Seals `plaintext` (encoded messages) into records written to `output`: encrypted in
    /// place in the output buffer, `recordPlaintextSize` plaintext bytes per record at most.
    public mutating func seal(_ plaintext: UnsafeRawBufferPointer, into output: inout some LinkOutput) throws(LinkError) {
        guard phase == .established else { throw .notEstablished }
        var rest = plaintext
        let tag = sender == nil ? 0 : CipherState.tagLength
        let maxChunk = min(recordPlaintextSize, WireProtocol.maxRecordBodySize - tag)
        while !rest.isEmpty {
            let chunk = UnsafeRawBufferPointer(rebasing: rest.prefix(maxChunk))
            rest = UnsafeRawBufferPointer(rebasing: rest.dropFirst(chunk.count))
            let bodyLength = chunk.count + tag
            var failure: LinkError?
            if var cipher = sender {
                guard cipher.remainingMessages > 1 else { throw fail(.nonceExhausted) }
                output.write(reservingCapacity: 2 + bodyLength) { buffer in
                    buffer.storeBytes(of: UInt16(bodyLength).bigEndian, toByteOffset: 0, as: UInt16.self)
                    do {
                        _ = try cipher.encrypt(plaintext: chunk, ad: UnsafeRawBufferPointer(start: nil, count: 0),
                                               into: UnsafeMutableRawBufferPointer(rebasing: buffer[2...]))
                    } catch {
                        failure = .nonceExhausted
                        return 0
                    }
                    return 2 + bodyLength
                }
                if let failure { throw fail(failure) }
                if cipher.nonce % rekeyInterval == 0 {
                    do { try cipher.rekey() } catch { throw fail(.nonceExhausted) }
                }
                sender = cipher
            } else {
                output.write(reservingCapacity: 2 + bodyLength) { buffer in
                    buffer.storeBytes(of: UInt16(bodyLength).bigEndian, toByteOffset: 0, as: UInt16.self)
                    UnsafeMutableRawBufferPointer(rebasing: buffer[2...]).copyMemory(from: chunk)
                    return 2 + bodyLength
                }
            }
            recordsSent &+= 1
        }
    }

    // MARK: Helpers

    private mutating func fail(_ error: LinkError) -> LinkError {
        phase = .failed
        pendingError = error
        return error
    }

    /// The responder's second message carries the version it chose; the handshake then runs on.
    private mutating func answerVersion(
        _ chosen: UInt16, _ handshake: HandshakeState, version2: Bool, output: inout some LinkOutput
    ) -> LinkError? {
        var handshake = handshake
        var reply: [UInt8] = []
        appendU16(&reply, chosen)
        do {
            writeRecord(try handshake.writeMessage(payload: reply), to: &output)
        } catch {
            return .handshakeFailed("\(error)")
        }
        stage = .running(handshake, version2: version2)
        return nil
    }

    private func writeRecord(_ body: [UInt8], to output: inout some LinkOutput) {
        output.write(reservingCapacity: 2 + body.count) { buffer in
            buffer.storeBytes(of: UInt16(body.count).bigEndian, toByteOffset: 0, as: UInt16.self)
            body.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[2...]).copyMemory(from: $0) }
            return 2 + body.count
        }
    }
}

@inline(__always)
func appendU16(_ bytes: inout [UInt8], _ value: UInt16) {
    bytes.append(UInt8(value >> 8))
    bytes.append(UInt8(value & 0xFF))
}

@inline(__always)
func readU16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
}

/// A `LinkOutput` that appends to a byte array (tests, handshake tooling).
public struct ByteArrayOutput: LinkOutput {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func write(reservingCapacity capacity: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: capacity))
        let written = bytes.withUnsafeMutableBytes { body(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
        bytes.removeLast(capacity - written)
    }
}
