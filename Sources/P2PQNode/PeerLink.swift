import Logging
import P2PQConnectionManager
import P2PQLink
import P2PQReactor
import P2PQWire

extension TCPConnection: LinkOutput {}

/// The shell around one peer connection: feeds socket bytes to its `LinkSession`, turns link
/// events into node inputs, and seals outgoing messages once per loop turn.
final class PeerLink: TCPConnectionHandler {
    enum Stage { case handshaking, awaitingHello, ready, closed }

    let id: LinkID
    let direction: LinkDirection
    /// For outbound links, the address dialed (reported back to the connection manager).
    let dialedAddress: SocketAddress?
    unowned let node: NodeCore
    var connection: TCPConnection!
    var session: LinkSession
    /// The protocol version the handshake chose (read while `session` is busy receiving).
    private var linkVersion: UInt16 = 0
    private(set) var stage: Stage = .handshaking
    private(set) var remotePeerID: PeerID?
    /// The address the peer advertised in its hello.
    private(set) var advertisedAddress: SocketAddress?
    /// The incarnation the peer announced in its hello (its process start).
    private(set) var remoteIncarnation: UInt64 = 0
    /// The feature bits of the peer's hello (§5).
    private(set) var remoteFeatures: UInt64 = 0
    /// The peer's operations endpoint (`host:port`), if it sent one on this link.
    private(set) var remoteOperations: String?
    /// The peer said goodbye: it is leaving, not failing.
    private(set) var peerLeft = false
    /// Plaintext messages waiting to be sealed at the end of the turn.
    private var staging: [UInt8] = []
    private var sealScheduled = false
    /// A goodbye is staged: close once it is sealed into the outbound queue.
    private var closeAfterSeal = false
    private var handshakeTimer: TimerID?
    private var closeReason: String?
    /// Bytes read from and queued to the socket (records, framing and handshake included).
    private(set) var bytesIn = 0
    private(set) var bytesOut = 0

    init(id: LinkID, direction: LinkDirection, dialedAddress: SocketAddress?, node: NodeCore, session: LinkSession) {
        self.id = id
        self.direction = direction
        self.dialedAddress = dialedAddress
        self.node = node
        self.session = session
    }

    var logger: Logger { node.logger }

    func armHandshakeTimer(_ timeout: Duration) {
        handshakeTimer = node.reactor.schedule(after: timeout) { [weak self] in
            guard let self, self.stage == .handshaking || self.stage == .awaitingHello else { return }
            self.handshakeTimer = nil
            self.fail("no handshake within \(timeout)")
        }
    }

    // MARK: Sending

    /// Queues a link message; it is sealed with everything else queued this turn.
    func send(_ message: LinkMessage) {
        sendMessage(message)
    }

    /// Queues any framed message (upper layers' messages implement `WireMessage`). Returns
    /// false, logging why, if the link is not open or the message cannot be encoded.
    @discardableResult
    func sendMessage(_ message: some WireMessage) -> Bool {
        guard stage == .awaitingHello || stage == .ready else { return false }
        do {
            try MessageEncoder.encode(message, into: &staging, maxFrameSize: node.configuration.maxFrameSize)
        } catch {
            logger.error("dropping an unencodable \(message.messageType) message: \(error)")
            return false
        }
        scheduleSeal()
        return true
    }

    /// Seals what is staged and starts writing it now (see `TCPConnection.flushNow`). Not from
    /// within this link's receive path: the session is being used there.
    func flushNow() {
        guard stage == .ready, connection.state == .active else { return }
        sealNow()
        connection.flushNow()
    }

    /// Bytes staged for sealing this turn (upper layers use it to bound a turn's output).
    var stagedBytes: Int { staging.count }

    private func scheduleSeal() {
        guard !sealScheduled else { return }
        sealScheduled = true
        node.reactor.deferToEndOfTurn { [weak self] in self?.sealNow() }
    }

    /// Encrypts the staged messages into records in the connection's outbound queue.
    func sealNow() {
        sealScheduled = false
        guard !staging.isEmpty, stage != .closed, connection.state == .active else {
            staging.removeAll(keepingCapacity: true)
            if closeAfterSeal { connection.close(afterFlush: true) }
            return
        }
        var output: TCPConnection = connection
        let queuedBefore = connection.queuedByteCount
        defer { bytesOut &+= max(0, connection.queuedByteCount - queuedBefore) }
        do {
            try staging.withUnsafeBytes { try session.seal($0, into: &output) }
        } catch {
            staging.removeAll(keepingCapacity: true)
            fail("sealing failed: \(error)")
            return
        }
        // Keep a modest buffer for the next turn; give back a large one.
        if staging.capacity > 1 << 20 { staging = [] } else { staging.removeAll(keepingCapacity: true) }
        if closeAfterSeal { connection.close(afterFlush: true) }
    }

    /// Says goodbye, then closes once the goodbye is written.
    ///
    /// The goodbye is sealed at the end of the turn like any message: this may run inside
    /// `session.receive` (a duplicate found while a hello is processed), where the session
    /// must not be touched again.
    func leave(_ reason: GoodbyeReason, detail: String) {
        guard stage != .closed else { return }
        closeReason = "goodbye (\(reason)): \(detail)"
        if stage == .ready || stage == .awaitingHello {
            send(.goodbye(reason: reason, detail: detail))
            closeAfterSeal = true
        } else {
            connection.close(afterFlush: true)
        }
    }

    /// Closes a link still in its handshake that the node's admission control gave up on
    /// (stalled, or evicted for a newer connection). Quiet: the admission report counts it.
    func drop(_ reason: String) {
        guard stage != .closed else { return }
        closeReason = reason
        logger.debug("closing link to \(remoteDescription): \(reason)")
        connection.close()
    }

    /// Closes the link because of an error, logging why.
    func fail(_ reason: String) {
        guard stage != .closed else { return }
        closeReason = reason
        // A flood of failing inbound handshakes costs a few lines and a summary, not a line each.
        if stage == .handshaking && direction == .inbound && !node.handshakeFailed(self) {
            logger.debug("closing link to \(remoteDescription): \(reason)")
        } else {
            logger.notice("closing link to \(remoteDescription): \(reason)")
        }
        if stage == .handshaking {
            node.emit(.linkRejected(remote: connection.remoteAddress, reason: reason))
        }
        connection.close()
    }

    var remoteDescription: String {
        if let remotePeerID { return "\(remotePeerID.short) (\(connection.remoteAddress))" }
        return "\(connection.remoteAddress)"
    }

    // MARK: TCPConnectionHandler

    func connectionDidBecomeActive(_ connection: TCPConnection) {
        guard direction == .outbound else { return }
        var output: TCPConnection = connection
        do {
            try session.start(output: &output)
        } catch {
            fail("\(error)")
        }
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        guard stage != .closed else { return }
        bytesIn &+= bytes.count
        var output: TCPConnection = connection
        let stalled = direction == .inbound && session.handshakeMessagesReceived == 0
        do {
            try session.receive(bytes, output: &output) { event in
                guard self.stage != .closed else { return }
                switch event {
                case .established(let remote, let version): self.established(remote, version: version)
                case .message(let type, let body): self.received(type, body)
                }
            }
        } catch {
            fail("\(error)")
            return
        }
        if stalled && session.handshakeMessagesReceived > 0 && stage != .closed { node.handshakeProgressed(self) }
    }

    func connectionDidReadEOF(_ connection: TCPConnection) {
        connection.close(afterFlush: true, reason: .peerClosed)
    }

    func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {
        node.linkWritabilityChanged(self, isWritable: isWritable)
    }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        let previous = stage
        stage = .closed
        if let timer = handshakeTimer {
            node.reactor.cancel(timer)
            handshakeTimer = nil
        }
        var why = closeReason ?? "\(reason)"
        if previous == .handshaking, closeReason == nil {
            switch reason {
            case .connectFailed(let error): why = "\(error)"
            case .peerClosed where direction == .outbound, .reset where direction == .outbound:
                // A responder refuses a wrong key or cipher by closing, without a word.
                why = "closed by the peer during the handshake (another cluster key or link cipher?)"
            default: why = "closed during handshake: \(reason)"
            }
            logger.debug("link to \(remoteDescription) ended before the handshake: \(why)")
        }
        node.linkClosed(self, wasReady: previous == .ready, reason: why)
    }

    // MARK: Link events

    private func established(_ remote: PeerID, version: UInt16) {
        remotePeerID = remote
        linkVersion = version
        stage = .awaitingHello
        let listen = node.advertised
        // The version the handshake settled: a version 1 peer refuses a hello with a higher one.
        send(.hello(Hello(protocolVersion: version, peerID: node.identity.peerID, listenPort: UInt16(listen.port),
                          listenHost: listen.host, incarnation: node.incarnation,
                          features: (QueueShell.helloFeatures | WireProtocol.featureOperationsAddress) & node.configuration.helloFeatureMask)))
    }

    private func received(_ type: MessageType, _ body: UnsafeRawBufferPointer) {
        if stage == .awaitingHello {
            guard type == .hello else {
                fail("expected hello, got \(type)")
                return
            }
            let message: LinkMessage
            do {
                message = try LinkMessage.decode(type: type, body: body)
            } catch {
                fail("bad hello: \(error)")
                return
            }
            guard case .hello(let hello) = message else { return }
            // As a version 1 peer would refuse a higher one, whatever the versions we speak.
            guard hello.protocolVersion == linkVersion else {
                fail("hello of protocol version \(hello.protocolVersion) on a version \(linkVersion) link")
                return
            }
            guard hello.peerID == remotePeerID else {
                fail("claimed PeerID \(hello.peerID.short) does not match its static key (\(remotePeerID?.short ?? "?"))")
                return
            }
            remoteIncarnation = hello.incarnation
            remoteFeatures = hello.features
            if hello.listenPort != 0 {
                let host = hello.listenHost.isEmpty ? connection.remoteAddress.host : hello.listenHost
                advertisedAddress = try? SocketAddress(host: host, port: Int(hello.listenPort))
            }
            if let timer = handshakeTimer {
                node.reactor.cancel(timer)
                handshakeTimer = nil
            }
            stage = .ready
            node.linkReady(self)
            return
        }
        node.heard(self)
        // Link messages are 0x01-0x0F; everything above belongs to upper layers.
        guard type.rawValue < 0x10 else {
            node.deliver(type, body, from: self)
            return
        }
        let message: LinkMessage
        do {
            message = try LinkMessage.decode(type: type, body: body)
        } catch {
            fail("bad \(type) message: \(error)")
            return
        }
        switch message {
        case .ping(let nonce, let sentAt): send(.pong(nonce: nonce, sentAt: sentAt))
        case .pong: break
        case .goodbye(let reason, let detail):
            peerLeft = reason == .leaving || reason == .shuttingDown
            closeReason = "peer said goodbye (\(reason)): \(detail)"
            connection.close(afterFlush: true, reason: .peerClosed)
        case .peers(let entries): node.peersReceived(self, entries)
        case .operations(let host, let port):
            // An unspecified or empty host means the address this link came from.
            let usable = !(host.isEmpty || host == "0.0.0.0" || host == "::" || host == "[::]")
            let name = usable ? host : connection.remoteAddress.host
            // A host name or an IP literal only: it becomes part of a URL.
            guard name.utf8.allSatisfy({ $0 < 0x80 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber
                                                       || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ":")) }) else {
                node.logger.debug("ignored an operations address with unusable characters from \(remoteDescription)")
                return
            }
            remoteOperations = name.contains(":") && !name.hasPrefix("[") ? "[\(name)]:\(port)" : "\(name):\(port)"
        case .hello: fail("a second hello")
        }
    }
}
