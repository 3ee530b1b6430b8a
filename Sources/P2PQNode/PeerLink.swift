import Logging
import P2PQConnectionManager
import P2PQLink
import P2PQNodeMachine
import P2PQReactor
import P2PQWire

extension TCPConnection: LinkOutput {}

/// The I/O of one peer connection: feeds socket bytes to its `LinkSession` (the Noise
/// handshake and the records; crypto stays in the shell) and the session's events to the
/// ``NodeMachine``, which keeps the link's stages; performs what the machine decides for the
/// link (send, close, how), and seals outgoing messages once per loop turn.
final class PeerLink: TCPConnectionHandler {
    typealias Stage = LinkMachine.Stage

    let id: LinkID
    /// Where the machine keeps this link's stages (every message hands it back).
    let handle: LinkHandle
    let direction: LinkDirection
    /// For outbound links, the address dialed (for the log of dial failures).
    let dialedAddress: SocketAddress?
    unowned let node: NodeCore
    var connection: TCPConnection!
    var session: LinkSession
    /// The stage the machine keeps for this link (`closed` once it forgot it).
    var stage: Stage { node.machine.stage(of: handle) ?? .closed }
    /// The link's stages (a copy, for queries).
    private var stages: LinkMachine? { node.machine.stages(of: handle) }
    /// The peer id the handshake authenticated.
    var remotePeerID: PeerID? { stages?.handshakePeerID }
    /// The peer's operations endpoint (`host:port`), if it sent one on this link.
    var remoteOperations: String? { stages?.operationsAddress }
    /// Plaintext messages waiting to be sealed at the end of the turn.
    private var staging: [UInt8] = []
    private var sealScheduled = false
    /// A goodbye is staged: close once it is sealed into the outbound queue.
    private var closeAfterSeal = false
    /// Bytes read from and queued to the socket (records, framing and handshake included).
    private(set) var bytesIn = 0
    private(set) var bytesOut = 0

    init(handle: LinkHandle, direction: LinkDirection, dialedAddress: SocketAddress?, node: NodeCore, session: LinkSession) {
        id = handle.id
        self.handle = handle
        self.direction = direction
        self.dialedAddress = dialedAddress
        self.node = node
        self.session = session
    }

    var logger: Logger { node.logger }

    /// Closes the connection as the machine decided (``NodeAction/closeConnection(_:how:reason:level:)``).
    func close(_ closing: LinkMachine.Closing, reason: String, level: Logger.Level?) {
        if let level { logger.log(level: level, "closing link to \(remoteDescription): \(reason)") }
        switch closing {
        case .failed(let duringHandshake):
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
            connection.close()
        }
    }

    // MARK: Sending

    /// Queues any framed message (upper layers' messages implement `WireMessage`). Returns
    /// false, logging why, if the link is not open or the message cannot be encoded.
    @discardableResult
    func sendMessage(_ message: some WireMessage) -> Bool {
        guard node.machine.canSend(on: handle) else { return false }
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

    /// Closes the link because of an error (the machine decides how, and logs why).
    func fail(_ reason: String) {
        node.perform(node.machine.linkFailed(id, reason: reason, now: node.now))
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
                    self.node.perform(self.node.machine.linkEstablished(self.id, peer: remote, version: version,
                                                                        remoteHost: connection.remoteAddress.host,
                                                                        now: self.node.now))
                case .message(let type, let body):
                    // One clock read per message: this is every message's path.
                    let now = self.node.now
                    switch self.node.machine.received(type, body, on: self.handle, now: now) {
                    case .deliver(let peer):
                        self.node.deliver(type, body, from: peer, on: self)
                    case .handled(let actions):
                        if !actions.isEmpty { self.node.perform(actions) }
                    }
                }
            }
        } catch {
            fail("\(error)")
            return
        }
        if stalled && session.handshakeMessagesReceived > 0 && stage != .closed {
            node.perform(node.machine.handshakeProgressed(id, now: node.now))
        }
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
        node.linkClosed(self, end: end, description: "\(reason)")
    }
}
