import P2PQConnectionManager
import P2PQWire

/// The link stages after the Noise handshake, as a plain value: the hello each side sends
/// first, the check that the hello's peer id is the handshake's, pings answered with pongs,
/// goodbyes, and the handshake deadline. ``NodeMachine`` keeps one per link, feeds it the
/// session's events with `now` and turns the ``LinkAction``s it answers into its own.
public struct LinkMachine: Sendable {
    /// Where a link is.
    public enum Stage: Sendable, Hashable {
        /// The Noise handshake is running.
        case handshaking
        /// The handshake is done and our hello sent; the peer's hello has not come yet.
        case awaitingHello
        /// Both hellos are through: the link carries every layer's messages.
        case ready
        /// The connection closed.
        case closed
    }

    /// What this node says in its hello (the version is the one the handshake settles).
    public struct LocalHello: Sendable, Hashable {
        /// This node's peer id.
        public var peerID: PeerID
        /// The host peers should dial back.
        public var listenHost: String
        /// The port peers should dial back (0: this node accepts no links).
        public var listenPort: UInt16
        /// This process's incarnation.
        public var incarnation: UInt64
        /// The feature bits this node announces (§5).
        public var features: UInt64

        public init(peerID: PeerID, listenHost: String, listenPort: UInt16, incarnation: UInt64, features: UInt64) {
            self.peerID = peerID
            self.listenHost = listenHost
            self.listenPort = listenPort
            self.incarnation = incarnation
            self.features = features
        }
    }

    /// What the peer's hello told, once the link is ready.
    public struct RemoteHello: Sendable, Hashable {
        /// The peer's id (the one its handshake authenticated).
        public var peerID: PeerID
        /// The protocol version of the link.
        public var version: UInt16
        /// Changes on every restart of the peer.
        public var incarnation: UInt64
        /// The hello's feature bits (§5).
        public var features: UInt64
        /// Where the peer accepts links: the host it advertised (or, when it sent none, the
        /// host this connection is with).
        public var listenHost: String
        /// The port the peer accepts links on; 0 when it accepts none.
        public var listenPort: UInt16

        public init(peerID: PeerID, version: UInt16, incarnation: UInt64, features: UInt64, listenHost: String, listenPort: UInt16) {
            self.peerID = peerID
            self.version = version
            self.incarnation = incarnation
            self.features = features
            self.listenHost = listenHost
            self.listenPort = listenPort
        }
    }

    /// How a link closes.
    public enum Closing: Sendable, Hashable {
        /// At once, because of an error: `duringHandshake` when it never got past the Noise
        /// handshake (the node counts and reports those as rejected links).
        case failed(duringHandshake: Bool)
        /// Once the goodbye just sent is sealed into the connection's output.
        case afterGoodbye
        /// Once what is queued is written (no goodbye: the link has no session to say it).
        case afterFlush
        /// The peer said goodbye: once what is queued is written, as closed by the peer.
        case peerSaidGoodbye
        /// At once, quietly: the node's admission control gave up on a handshake.
        case dropped
    }

    public private(set) var stage: Stage = .handshaking
    /// The peer's hello, once the link is ready.
    public private(set) var remote: RemoteHello?
    /// The peer id the handshake authenticated (the hello must claim the same).
    public private(set) var handshakePeerID: PeerID?
    /// Why the link is closing or closed, once a close was decided.
    public private(set) var closeReason: String?
    /// The peer said goodbye as leaving or shutting down: it left, it did not fail.
    public private(set) var peerLeft = false
    /// The peer closed the link with a goodbye other than leaving (``closesAlive(_:)``): it was
    /// alive, so the close is no evidence against it.
    public private(set) var peerClosed = false
    /// The peer closed the link as a duplicate of another link to this node that it keeps:
    /// that link comes up here too (if it has not yet), and what was in flight may have
    /// arrived.
    public private(set) var peerClosedAsDuplicate = false
    /// The peer's operations endpoint (`host:port`, an IPv6 literal in brackets), if it sent
    /// a usable one.
    public private(set) var operationsAddress: String?
    /// The round trip of the last ping answered (ns), 0 before any.
    public private(set) var lastRoundTrip: UInt64 = 0
    private var lastPingNonce: UInt64?
    private let local: LocalHello
    private let handshakeTimeout: UInt64
    /// How the timeouts are told in close reasons (the shell's rendering of the durations).
    private let handshakeTimeoutDescription: String
    private let keepaliveTimeoutDescription: String
    /// The host this link's connection is with.
    private var remoteHost = ""
    /// The protocol version the handshake settled.
    private var version: UInt16 = 0

    /// - Parameters:
    ///   - local: this node's hello.
    ///   - handshakeTimeout: ns from ``opened(now:)`` by which both hellos must be through.
    ///   - timeoutDescription: the timeout as the close reason tells it.
    ///   - keepaliveTimeoutDescription: the connection manager's keepalive timeout, likewise.
    public init(local: LocalHello, handshakeTimeout: UInt64, timeoutDescription: String, keepaliveTimeoutDescription: String = "") {
        self.local = local
        self.handshakeTimeout = handshakeTimeout
        handshakeTimeoutDescription = timeoutDescription
        self.keepaliveTimeoutDescription = keepaliveTimeoutDescription
    }

    /// Whether messages may be sent (our hello is out and the link is not closed).
    public var canSend: Bool { stage == .awaitingHello || stage == .ready }

    // MARK: Inputs

    /// The connection was made (or is being dialed): the handshake and the hellos have until
    /// `now` + the handshake timeout.
    public mutating func opened(now: UInt64) -> [LinkAction] {
        [.armTimer(at: now &+ handshakeTimeout)]
    }

    /// The handshake deadline passed.
    public mutating func tick(now: UInt64) -> [LinkAction] {
        guard stage == .handshaking || stage == .awaitingHello else { return [] }
        return fail("no handshake within \(handshakeTimeoutDescription)")
    }

    /// The Noise handshake authenticated `peer` and settled `version`; `remoteHost` is the
    /// host the connection is with. Sends our hello, in the version the handshake settled (a
    /// version 1 peer refuses a hello with a higher one).
    public mutating func established(peer: PeerID, version: UInt16, remoteHost: String, now: UInt64) -> [LinkAction] {
        guard stage == .handshaking else { return [] }
        handshakePeerID = peer
        self.remoteHost = remoteHost
        stage = .awaitingHello
        self.version = version
        return [.send(.hello(Hello(protocolVersion: version, peerID: local.peerID, listenPort: local.listenPort,
                                   listenHost: local.listenHost, incarnation: local.incarnation, features: local.features)))]
    }

    /// A message arrived on the link. The body is only read here, never kept.
    public mutating func received(_ type: MessageType, _ body: UnsafeRawBufferPointer, now: UInt64) -> LinkReceipt {
        switch stage {
        case .handshaking, .closed:
            return .handled([])
        case .awaitingHello:
            return .handled(receivedHello(type, body))
        case .ready:
            // Link messages are 0x01-0x0F; everything above belongs to the layers above.
            guard type.rawValue < 0x10 else { return .deliver }
            let message: LinkMessage
            do {
                message = try LinkMessage.decode(type: type, body: body)
            } catch {
                return .handled([.heard] + fail("bad \(type) message: \(error)"))
            }
            return .handled([.heard] + receivedLinkMessage(message, now: now))
        }
    }

    /// The node asks for a keepalive ping, with `nonce`.
    public mutating func ping(nonce: UInt64, now: UInt64) -> [LinkAction] {
        guard canSend else { return [] }
        lastPingNonce = nonce
        return [.send(.ping(nonce: nonce, sentAt: now))]
    }

    /// The node ends the link with a goodbye (`reason`, `detail`); before our hello is out
    /// there is no session to say it, and the link just closes once its output is written.
    public mutating func leave(_ reason: GoodbyeReason, detail: String) -> [LinkAction] {
        guard stage != .closed else { return [] }
        closeReason = "goodbye (\(reason)): \(detail)"
        guard canSend else { return [.close(.afterFlush)] }
        return [.send(.goodbye(reason: reason, detail: detail)), .close(.afterGoodbye)]
    }

    /// The link must close because of `reason` (an error the shell or another layer found).
    public mutating func fail(_ reason: String) -> [LinkAction] {
        guard stage != .closed else { return [] }
        closeReason = reason
        return [.close(.failed(duringHandshake: stage == .handshaking))]
    }

    /// The node's admission control closes a link still in its handshake (stalled, or
    /// evicted for a newer connection) because of `reason`.
    public mutating func drop(_ reason: String) -> [LinkAction] {
        guard stage != .closed else { return [] }
        closeReason = reason
        return [.close(.dropped)]
    }

    /// The connection manager closes the link: with a goodbye that says why, or, for a silent
    /// peer, as a failure.
    public mutating func close(_ reason: LinkCloseReason) -> [LinkAction] {
        let detail: String
        switch reason {
        case .duplicate: detail = "duplicate link"
        case .leaving: detail = "node stopping"
        case .selfConnection: detail = "self connection"
        case .tooManyPeers: detail = "too many peers"
        case .keepaliveTimeout: return fail("silent for \(keepaliveTimeoutDescription)")
        }
        return leave(Self.goodbye(for: reason) ?? .protocolError, detail: detail)
    }

    /// The goodbye a link closed by the connection manager for `reason` says; nil for a close
    /// without one (a silent peer).
    public static func goodbye(for reason: LinkCloseReason) -> GoodbyeReason? {
        switch reason {
        case .duplicate: .duplicateLink
        case .leaving: .leaving
        case .selfConnection, .tooManyPeers: .protocolError
        case .keepaliveTimeout: nil
        }
    }

    /// Whether a goodbye for `reason` means the peer left (``peerLeft``).
    public static func leaves(_ reason: GoodbyeReason) -> Bool { reason == .leaving || reason == .shuttingDown }

    /// Whether a goodbye for `reason` closes a link whose peer stays alive (``peerClosed``): a
    /// refusal (a protocol error, such as "too many peers") or a duplicate. A duplicate's
    /// goodbye usually arrives on the link this node drops too, and the manager ignores it; but
    /// when the link the peer keeps was refused here (two nodes dialed each other while this
    /// one was full), it closes this node's only link to a live peer, which must not be
    /// probed: in a partial mesh no helper has a link to it either, and the probe would fail.
    public static func closesAlive(_ reason: GoodbyeReason) -> Bool { reason == .protocolError || reason == .duplicateLink }

    /// This node stops. A ready link is the connection manager's to close; one past the
    /// handshake whose hello has not come may already be ready on the peer's side (it has our
    /// hello), so it gets a goodbye too, or the peer would take the close for a failure; one
    /// still handshaking has none to say.
    public mutating func nodeStopping() -> [LinkAction] {
        switch stage {
        case .ready, .closed: return []
        case .awaitingHello: return leave(.leaving, detail: "node stopping")
        case .handshaking: return fail("node stopping")
        }
    }

    /// How the connection under a link ended, as the socket layer tells it.
    public enum ConnectionEnd: Sendable, Hashable {
        /// The dial failed (`error` describes why).
        case connectFailed(error: String)
        /// The peer closed it.
        case peerClosed
        /// The peer reset it.
        case reset
        /// Anything else (closed here, a socket error, the reactor stopping).
        case other
    }

    /// What ``closed(_:description:outbound:)`` reports.
    public struct Ended: Sendable, Hashable {
        /// The stage the link was in.
        public var previous: Stage
        /// Why it ended: the reason a close was decided for, else what the end suggests.
        public var reason: String
        /// It ended in the handshake with no close decided here (worth a debug line).
        public var beforeHandshake: Bool

        public init(previous: Stage, reason: String, beforeHandshake: Bool) {
            self.previous = previous
            self.reason = reason
            self.beforeHandshake = beforeHandshake
        }
    }

    /// The connection closed: `end` and its `description` as the socket layer tells them;
    /// `outbound` when this side dialed.
    public mutating func closed(_ end: ConnectionEnd, description: String, outbound: Bool) -> Ended {
        let previous = stage
        stage = .closed
        guard previous == .handshaking, closeReason == nil else {
            return Ended(previous: previous, reason: closeReason ?? description, beforeHandshake: false)
        }
        let reason: String
        switch end {
        case .connectFailed(let error): reason = error
        case .peerClosed where outbound, .reset where outbound:
            // A responder refuses a wrong key or cipher by closing, without a word.
            reason = "closed by the peer during the handshake (another cluster key or link cipher?)"
        default: reason = "closed during handshake: \(description)"
        }
        return Ended(previous: previous, reason: reason, beforeHandshake: true)
    }

    // MARK: Receiving

    private mutating func receivedHello(_ type: MessageType, _ body: UnsafeRawBufferPointer) -> [LinkAction] {
        guard type == .hello else { return fail("expected hello, got \(type)") }
        let message: LinkMessage
        do {
            message = try LinkMessage.decode(type: type, body: body)
        } catch {
            return fail("bad hello: \(error)")
        }
        guard case .hello(let hello) = message else { return [] }
        // As a version 1 peer would refuse a higher one, whatever the versions we speak.
        guard hello.protocolVersion == version else {
            return fail("hello of protocol version \(hello.protocolVersion) on a version \(version) link")
        }
        guard hello.peerID == handshakePeerID else {
            // Peer ids as the logs show them: the first 12 hex digits.
            let short = { (id: PeerID?) in id.map { String($0.description.prefix(12)) } ?? "?" }
            return fail("claimed PeerID \(short(hello.peerID)) does not match its static key (\(short(handshakePeerID)))")
        }
        let facts = RemoteHello(peerID: hello.peerID, version: hello.protocolVersion, incarnation: hello.incarnation,
                                features: hello.features,
                                listenHost: hello.listenHost.isEmpty ? remoteHost : hello.listenHost,
                                listenPort: hello.listenPort)
        remote = facts
        stage = .ready
        return [.cancelTimer, .up(facts)]
    }

    private mutating func receivedLinkMessage(_ message: LinkMessage, now: UInt64) -> [LinkAction] {
        switch message {
        case .ping(let nonce, let sentAt):
            return [.send(.pong(nonce: nonce, sentAt: sentAt))]
        case .pong(let nonce, let sentAt):
            // `sentAt` is our own clock when the pong answers our last ping.
            if nonce == lastPingNonce, now >= sentAt { lastRoundTrip = now - sentAt }
            return []
        case .goodbye(let reason, let detail):
            peerLeft = Self.leaves(reason)
            peerClosed = Self.closesAlive(reason)
            peerClosedAsDuplicate = reason == .duplicateLink
            closeReason = "peer said goodbye (\(reason)): \(detail)"
            return [.close(.peerSaidGoodbye)]
        case .peers(let entries):
            return [.peersReceived(entries)]
        case .operations(let host, let port):
            // An unspecified or empty host means the address this link came from.
            let usable = !(host.isEmpty || host == "0.0.0.0" || host == "::" || host == "[::]")
            let name = usable ? host : remoteHost
            // A host name or an IP literal only: it becomes part of a URL.
            guard name.utf8.allSatisfy(Self.isHostByte) else {
                return [.note("ignored an operations address with unusable characters")]
            }
            operationsAddress = name.contains(":") && !name.hasPrefix("[") ? "[\(name)]:\(port)" : "\(name):\(port)"
            return []
        case .hello:
            return fail("a second hello")
        }
    }

    private static func isHostByte(_ byte: UInt8) -> Bool {
        guard byte < 0x80 else { return false }
        let character = Character(UnicodeScalar(byte))
        return character.isLetter || character.isNumber || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: ":")
    }
}

/// What ``LinkMachine`` answers to a received message.
public enum LinkReceipt: Sendable, Equatable {
    /// A message of the layers above (type 0x10 and up) on a ready link: the peer was heard;
    /// hand the body on. (No array here: this is every message's path.)
    case deliver
    /// A link message (or one before the link is ready), handled by these actions.
    case handled([LinkAction])
}

/// What the shell does for ``LinkMachine``.
public enum LinkAction: Sendable, Equatable {
    /// Queue a link message (sealed with the rest of the turn's output).
    case send(LinkMessage)
    /// Arm the link's one timer at `at` (monotonic ns); it fires ``LinkMachine/tick(now:)``.
    case armTimer(at: UInt64)
    /// Disarm the link's timer.
    case cancelTimer
    /// The peer's hello checked out: the link is ready.
    case up(LinkMachine.RemoteHello)
    /// The peer was heard from (keepalive accounting).
    case heard
    /// The peer sent addresses of other peers.
    case peersReceived([PeerAddress])
    /// Close the link as `Closing` says; ``LinkMachine/closeReason`` says why.
    case close(LinkMachine.Closing)
    /// Something worth a debug line, nothing to do.
    case note(String)
}
