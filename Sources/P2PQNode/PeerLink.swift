import Logging
import P2PQConnectionManager
import P2PQLink
import P2PQNodeMachine
import P2PQReactor
import P2PQWire

extension TCPConnection: LinkOutput {}

/// The shell around one peer connection: feeds socket bytes to its `LinkSession` and the
/// session's events to its ``LinkMachine``, performs what that answers, and seals outgoing
/// messages once per loop turn.
final class PeerLink: TCPConnectionHandler {
    typealias Stage = LinkMachine.Stage

    let id: LinkID
    let direction: LinkDirection
    /// For outbound links, the address dialed (reported back to the connection manager).
    let dialedAddress: SocketAddress?
    unowned let node: NodeCore
    var connection: TCPConnection!
    var session: LinkSession
    /// The hello, ping and goodbye stages (every decision about the link past the handshake).
    private var link: LinkMachine
    private lazy var timer = ShellTimer(reactor: node.reactor) { [unowned self] in
        self.perform(self.link.tick(now: self.node.now))
    }
    var stage: Stage { link.stage }
    /// The peer id the handshake authenticated.
    var remotePeerID: PeerID? { link.handshakePeerID }
    /// The address the peer advertised in its hello.
    private(set) var advertisedAddress: SocketAddress?
    /// The incarnation the peer announced in its hello (its process start).
    var remoteIncarnation: UInt64 { link.remote?.incarnation ?? 0 }
    /// The feature bits of the peer's hello (§5).
    var remoteFeatures: UInt64 { link.remote?.features ?? 0 }
    /// The peer's operations endpoint (`host:port`), if it sent one on this link.
    var remoteOperations: String? { link.operationsAddress }
    /// The peer said goodbye: it is leaving, not failing.
    var peerLeft: Bool { link.peerLeft }
    var peerClosed: Bool { link.peerClosed }
    /// Plaintext messages waiting to be sealed at the end of the turn.
    private var staging: [UInt8] = []
    private var sealScheduled = false
    /// A goodbye is staged: close once it is sealed into the outbound queue.
    private var closeAfterSeal = false
    /// Bytes read from and queued to the socket (records, framing and handshake included).
    private(set) var bytesIn = 0
    private(set) var bytesOut = 0

    init(id: LinkID, direction: LinkDirection, dialedAddress: SocketAddress?, node: NodeCore, session: LinkSession,
         link: LinkMachine) {
        self.id = id
        self.direction = direction
        self.dialedAddress = dialedAddress
        self.node = node
        self.session = session
        self.link = link
    }

    var logger: Logger { node.logger }

    /// The connection exists: the handshake deadline starts.
    func opened() {
        perform(link.opened(now: node.now))
    }

    // MARK: Actions

    private func perform(_ actions: [LinkAction]) {
        for action in actions { perform(action) }
    }

    private func perform(_ action: LinkAction) {
        switch action {
        case .send(let message): sendMessage(message)
        case .armTimer(let at): timer.arm(at: at)
        case .cancelTimer: timer.cancel()
        case .up(let hello):
            if hello.listenPort != 0 {
                advertisedAddress = try? SocketAddress(host: hello.listenHost, port: Int(hello.listenPort))
            }
            node.linkReady(self)
        case .heard: node.heard(self, now: node.now)
        case .peersReceived(let entries): node.peersReceived(self, entries)
        case .note(let text): logger.debug("\(text) from \(remoteDescription)")
        case .close(let closing): close(closing)
        }
    }

    private func close(_ closing: LinkMachine.Closing) {
        let reason = link.closeReason ?? ""
        switch closing {
        case .failed(let duringHandshake):
            // A flood of failing inbound handshakes costs a few lines and a summary, not a line each.
            if duringHandshake && direction == .inbound && !node.handshakeFailed(self) {
                logger.debug("closing link to \(remoteDescription): \(reason)")
            } else {
                logger.notice("closing link to \(remoteDescription): \(reason)")
            }
            if duringHandshake {
                node.emit(.linkRejected(remote: connection.remoteAddress, reason: reason))
            }
            connection.close()
        case .afterGoodbye:
            // Sealed at the end of the turn like any message: this may run inside
            // `session.receive`, where the session must not be touched again.
            closeAfterSeal = true
        case .afterFlush:
            connection.close(afterFlush: true)
        case .peerSaidGoodbye:
            connection.close(afterFlush: true, reason: .peerClosed)
        case .dropped:
            logger.debug("closing link to \(remoteDescription): \(reason)")
            connection.close()
        }
    }

    // MARK: Sending

    /// Queues a link message; it is sealed with everything else queued this turn.
    func send(_ message: LinkMessage) {
        sendMessage(message)
    }

    /// Sends a keepalive ping with `nonce`.
    func ping(nonce: UInt64) {
        perform(link.ping(nonce: nonce, now: node.now))
    }

    /// Queues any framed message (upper layers' messages implement `WireMessage`). Returns
    /// false, logging why, if the link is not open or the message cannot be encoded.
    @discardableResult
    func sendMessage(_ message: some WireMessage) -> Bool {
        guard link.canSend else { return false }
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

    /// Says goodbye, then closes once the goodbye is written (``LinkMachine/leave(_:detail:)``).
    func leave(_ reason: GoodbyeReason, detail: String) {
        perform(link.leave(reason, detail: detail))
    }

    /// Closes a link still in its handshake that the node's admission control gave up on
    /// (stalled, or evicted for a newer connection). Quiet: the admission report counts it.
    func drop(_ reason: String) {
        perform(link.drop(reason))
    }

    /// Closes the link because of an error, logging why.
    func fail(_ reason: String) {
        perform(link.fail(reason))
    }

    /// The connection manager closes the link (``LinkMachine/close(_:)``).
    func close(_ reason: LinkCloseReason) {
        perform(link.close(reason))
    }

    /// The node stops (``LinkMachine/nodeStopping()``).
    func nodeStopping() {
        perform(link.nodeStopping())
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
                switch event {
                case .established(let remote, let version):
                    self.perform(self.link.established(peer: remote, version: version,
                                                       remoteHost: connection.remoteAddress.host, now: self.node.now))
                case .message(let type, let body):
                    // One clock read per message: this is every message's path.
                    let now = self.node.now
                    switch self.link.received(type, body, now: now) {
                    case .deliver:
                        self.node.heard(self, now: now)
                        self.node.deliver(type, body, from: self)
                    case .handled(let actions):
                        self.perform(actions)
                    }
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
        let end: LinkMachine.ConnectionEnd
        switch reason {
        case .connectFailed(let error): end = .connectFailed(error: "\(error)")
        case .peerClosed: end = .peerClosed
        case .reset: end = .reset
        case .closedLocally, .error, .reactorStopped: end = .other
        }
        let ended = link.closed(end, description: "\(reason)", outbound: direction == .outbound)
        timer.cancel()
        if ended.beforeHandshake {
            logger.debug("link to \(remoteDescription) ended before the handshake: \(ended.reason)")
        }
        node.linkClosed(self, wasReady: ended.previous == .ready, reason: ended.reason)
    }
}
