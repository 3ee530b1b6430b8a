import P2PQNoise
import P2PQWire

/// Where a link writes its records. `TCPConnection` conforms (the shell adds that); tests use
/// a byte array.
public protocol LinkOutput {
    /// Lets `body` write up to `capacity` bytes in place; `body` returns how many it wrote.
    mutating func write(reservingCapacity capacity: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int)
}

/// The AEAD a Noise link runs. Both ends must use the same one: it is part of the Noise
/// protocol name, so peers with different ciphers fail the handshake at its first message
/// (reported as ``LinkError/wrongClusterKey``, which says so).
public enum LinkCipher: String, Sendable, Hashable, CaseIterable {
    /// ChaCha20-Poly1305: the default, fast everywhere.
    case chaChaPoly = "ChaChaPoly"
    /// AES-256-GCM: several times faster where the CPU has AES and carry-less multiply
    /// instructions (x86-64 AES-NI/VAES, ARMv8 crypto extensions), slower where it has not.
    case aesGCM = "AESGCM"

    /// `Noise_XXpsk0_25519_<cipher>_SHA256`.
    public var noiseProtocolName: String { "Noise_XXpsk0_25519_\(rawValue)_SHA256" }
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
    /// another key, or another link cipher (or speaks insecure mode). Detected before any
    /// Diffie-Hellman.
    case wrongClusterKey
    /// A later handshake message was malformed or failed authentication.
    case handshakeFailed(String)
    /// The peer's protocol versions do not overlap ours.
    case noCommonVersion(peerMinimum: UInt16, peerMaximum: UInt16)
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
        case .wrongClusterKey: return "handshake refused: the peer does not hold our cluster key (or runs another link cipher)"
        case .handshakeFailed(let why): return "handshake failed: \(why)"
        case .noCommonVersion(let lo, let hi):
            return "no common protocol version: peer speaks \(lo)...\(hi), we speak \(WireProtocol.supportedVersions.lowerBound)...\(WireProtocol.supportedVersions.upperBound)"
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
/// the handshake a body is one Noise handshake message; afterwards it is a Noise transport
/// message (ciphertext plus 16-byte tag) whose plaintexts, concatenated, carry the message
/// stream. Many messages share a record, and a message may span records.
///
/// Both directions rekey (Noise `REKEY`) every `rekeyInterval` records (default ``LinkSession/defaultRekeyInterval``); the nonce counts are
/// identical on both ends, so no signal is needed. A link closes before its nonce could wrap.
public struct LinkSession: Sendable {
    public enum Role: Sendable { case initiator, responder }
    public enum Phase: Sendable, Equatable { case handshaking, established, failed }

    /// Hashed into the handshake: a peer of another protocol cannot complete it.
    static let prologue = Array("p2pq-link/1".utf8)
    static let magic = Array("P2PQ".utf8)
    static let insecureMagic = Array("P2PQ-INSECURE".utf8)
    /// Records between rekeys in each direction.
    public static let defaultRekeyInterval: UInt64 = 1 << 20
    /// Plaintext bytes per sealed record: 64 KiB minus the 2-byte length and the 16-byte tag,
    /// so a full record is exactly one of the reactor's 64 KiB outbound chunks. A record costs
    /// a fixed few EVP calls on top of its bytes (about a microsecond with OpenSSL); 16 KiB
    /// records made that 5-10 % of a 1 KiB W1 stream's CPU and 20-30 % of the Noise link
    /// bench's (docs/benchmarks.md). Small messages still go out in small records: a record
    /// holds what is queued when the link flushes.
    public static let defaultRecordPlaintextSize = 64 * 1024 - 2 - CipherState.tagLength

    public let role: Role
    public private(set) var phase: Phase = .handshaking
    public private(set) var remotePeerID: PeerID?
    public private(set) var version: UInt16 = 0
    public let localPeerID: PeerID
    /// The AEAD of a Noise link (both ends must agree).
    public let cipher: LinkCipher

    private let security: LinkSecurity
    private var handshake: HandshakeState?
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

    public init(
        role: Role,
        security: LinkSecurity,
        identity: NodeIdentity,
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize,
        rekeyInterval: UInt64 = LinkSession.defaultRekeyInterval,
        recordPlaintextSize: Int = LinkSession.defaultRecordPlaintextSize,
        cipher: LinkCipher = .chaChaPoly
    ) throws(LinkError) {
        self.role = role
        self.cipher = cipher
        self.security = security
        self.localPeerID = identity.peerID
        self.rekeyInterval = max(1, rekeyInterval)
        self.recordPlaintextSize = min(max(1, recordPlaintextSize), CipherState.maxPlaintextLength)
        do {
            messages = try MessageDecoder(maxFrameSize: maxFrameSize)
        } catch {
            throw .framing(error)
        }
        if case .noise(let key) = security {
            do {
                handshake = try HandshakeState(
                    protocolName: cipher.noiseProtocolName,
                    role: role == .initiator ? .initiator : .responder,
                    prologue: Self.prologue,
                    localStatic: identity.keyPair,
                    psks: [key.bytes]
                )
            } catch {
                throw .handshakeFailed("\(error)")
            }
        }
    }

    // MARK: Handshake

    /// The initiator's first handshake record. Call once, before anything is received.
    public mutating func start(output: inout some LinkOutput) throws(LinkError) {
        precondition(role == .initiator, "only the initiator starts")
        var payload = Self.magic
        appendU16(&payload, WireProtocol.supportedVersions.lowerBound)
        appendU16(&payload, WireProtocol.supportedVersions.upperBound)
        switch security {
        case .insecure:
            var body = Self.insecureMagic
            appendU16(&body, WireProtocol.supportedVersions.lowerBound)
            appendU16(&body, WireProtocol.supportedVersions.upperBound)
            body += localPeerID.bytes
            writeRecord(body, to: &output)
        case .noise:
            let message: [UInt8]
            do {
                message = try handshake!.writeMessage(payload: payload)
            } catch {
                throw fail(.handshakeFailed("\(error)"))
            }
            writeRecord(message, to: &output)
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
        case .noise: error = noiseHandshake(record, output: &output, onEvent: onEvent)
        }
        if error == nil { handshakeMessagesReceived += 1 }
        return error
    }

    private mutating func noiseHandshake(
        _ record: UnsafeRawBufferPointer,
        output: inout some LinkOutput,
        onEvent: (LinkEvent) -> Void
    ) -> LinkError? {
        let index = handshake!.messageIndex
        let payload: [UInt8]
        do {
            payload = try handshake!.readMessage(Array(record))
        } catch .authenticationFailed where index == 0 {
            return .wrongClusterKey
        } catch {
            return index == 0 ? .notAP2PQPeer("first handshake message: \(error)") : .handshakeFailed("\(error)")
        }
        switch (role, index) {
        case (.responder, 0):
            // -> psk, e: the initiator's magic and version range.
            guard payload.count == 8, Array(payload.prefix(4)) == Self.magic else {
                return .notAP2PQPeer("bad first handshake payload")
            }
            let low = readU16(payload, 4), high = readU16(payload, 6)
            guard let chosen = Self.chooseVersion(low: low, high: high) else {
                return .noCommonVersion(peerMinimum: low, peerMaximum: high)
            }
            version = chosen
            var reply: [UInt8] = []
            appendU16(&reply, chosen)
            do {
                writeRecord(try handshake!.writeMessage(payload: reply), to: &output)
            } catch {
                return .handshakeFailed("\(error)")
            }
        case (.initiator, 1):
            // <- e, ee, s, es: the version the responder chose.
            guard payload.count == 2 else { return .handshakeFailed("bad second handshake payload") }
            let chosen = readU16(payload, 0)
            guard WireProtocol.supportedVersions.contains(chosen) else {
                return .noCommonVersion(peerMinimum: chosen, peerMaximum: chosen)
            }
            version = chosen
            do {
                writeRecord(try handshake!.writeMessage(payload: []), to: &output)
            } catch {
                return .handshakeFailed("\(error)")
            }
            return finishHandshake(onEvent: onEvent)
        case (.responder, 2):
            guard payload.isEmpty else { return .handshakeFailed("unexpected third handshake payload") }
            return finishHandshake(onEvent: onEvent)
        default:
            return .handshakeFailed("unexpected handshake message \(index)")
        }
        return nil
    }

    private mutating func finishHandshake(onEvent: (LinkEvent) -> Void) -> LinkError? {
        guard let handshake, handshake.isComplete, let remoteStatic = handshake.remoteStaticKey else {
            return .handshakeFailed("handshake incomplete")
        }
        do {
            let ciphers = try handshake.transportCiphers()
            sender = ciphers.send
            receiver = ciphers.receive
        } catch {
            return .handshakeFailed("\(error)")
        }
        self.handshake = nil
        let remote = PeerID(publicKey: remoteStatic)
        remotePeerID = remote
        phase = .established
        onEvent(.established(remote: remote, version: version))
        return nil
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
            guard let chosen = Self.chooseVersion(low: low, high: high) else {
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
            guard WireProtocol.supportedVersions.contains(chosen) else {
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

    static func chooseVersion(low: UInt16, high: UInt16) -> UInt16? {
        let ours = WireProtocol.supportedVersions
        let top = min(high, ours.upperBound)
        return top >= max(low, ours.lowerBound) ? top : nil
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
