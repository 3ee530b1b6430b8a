import Dispatch
import Logging
import P2PQConnectionManager
import P2PQLink
import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQReactor
import P2PQRemoteCall
import P2PQWire

/// The node on its reactor thread: owns the listener and the links, feeds the reactor's events
/// to the ``NodeMachine`` (connection manager, membership, the routing of peer events) and
/// performs its actions. Everything here runs on the reactor thread.
final class NodeCore {
    typealias Machine = NodeMachine<SocketAddress>
    typealias Action = NodeAction<SocketAddress>

    let reactor: Reactor
    let configuration: NodeConfiguration
    let identity: NodeIdentity
    let security: LinkSecurity
    var logger: Logger
    /// The clocks, seed, incarnation and handshake keys (``NodeEnvironment``).
    let environment: NodeEnvironment
    /// Distinguishes restarts of the same identity (``NodeEnvironment/incarnation``).
    var incarnation: UInt64 { environment.incarnation }
    /// The node's random choices: a generator of its own for each machine.
    private var random: NodeEnvironment.Random
    /// Split into one source per link.
    private var handshakeKeys: HandshakeKeySource
    /// What peers should dial to reach us.
    private(set) var advertised: SocketAddress
    /// The control plane: connection manager, membership and the routing of peer events.
    var machine: Machine
    /// Which links to keep (queries).
    var manager: Machine.Connections { machine.connections }
    private var listener: TCPListener?
    private var discovery: MDNSDiscovery?
    private var links: [LinkID: PeerLink] = [:]
    private var nextLinkID: UInt64 = 1
    /// Performs the machine's actions; its timers.
    private lazy var driver = ShellDriver<Action>(handle: { [unowned self] in self.handle($0) },
                                                  whenDrained: { [unowned self] in
                                                      self.queues.checkWaiting()
                                                      self.remoteCalls?.wakeStreams()
                                                  })
    /// The machine's timers, made on first arming.
    private var timers: [NodeTimer: ShellTimer] = [:]
    /// Inbound connections waiting for the machine's admission (``NodeAction/admitLink(_:)``).
    private var accepting: [LinkID: TCPConnection] = [:]
    private let events: AsyncStream<NodeEvent>.Continuation
    private(set) var isStopped = false
    /// Counters for swift-metrics, published once a second.
    let metrics: NodeMetrics
    var metricsTimer: TimerID?
    /// The dashboard's rings, sampled with the metrics (once a second).
    lazy var dashboard = DashboardHistory(local: identity.peerID, start: now)
    /// This node's operations endpoint, as told to peers (``Node/advertiseOperations(host:port:)``).
    var operationsAddress: (host: String, port: UInt16)? { machine.operationsAddress }
    /// SWIM membership (once started).
    var membership: MembershipMachine? { machine.isStarted ? machine.membership : nil }
    /// Upper layers' message sink (membership, queue, calls register here later).
    var messageHandler: ((MessageType, UnsafeRawBufferPointer, PeerID) -> Void)?
    /// The named queues (P2PQQueue machines) of this node.
    private(set) lazy var queues = QueueShell(core: self)
    /// Remote calls, once a `RemoteCall` is attached to the node.
    var remoteCalls: RemoteCallShell?
    /// Bootstrap addresses that came from host names: the manager dials the address resolved
    /// at start; each redial resolves the name again.
    private var bootstrapNames: [SocketAddress: HostAndPort] = [:]
    private var namesDialed: Set<SocketAddress> = []
    /// Outbound dials that keep failing, per address: the reason is logged once at info, then
    /// again only if it changes or after a quiet time that doubles (see `noteDialFailure`).
    private var dialTrouble: [SocketAddress: DialTrouble] = [:]
    private struct DialTrouble {
        var reason: String
        var failures: Int
        var nextReport: UInt64
        var quiet: UInt64
    }

    init(reactor: Reactor, configuration: NodeConfiguration, identity: NodeIdentity, listen: SocketAddress,
         events: AsyncStream<NodeEvent>.Continuation) {
        self.reactor = reactor
        self.configuration = configuration
        self.identity = identity
        if configuration.insecure {
            security = .insecure
        } else {
            security = .noise(configuration.clusterKey ?? LinkSecurity.developmentKey)
        }
        var logger = configuration.logger
        logger[metadataKey: "peer"] = "\(identity.peerID.short)"
        self.logger = logger
        let environment = configuration.environment ?? .system()
        self.environment = environment
        var random = NodeEnvironment.Random(seed: environment.seed)
        handshakeKeys = environment.handshakeKeys
        advertised = listen
        self.events = events
        metrics = NodeMetrics(backend: configuration.metrics, node: identity.peerID)
        let nanos = { (d: Duration) in UInt64(max(1, d.nanosecondsClamped)) }
        var queue = configuration.queue
        queue.maxFrameSize = configuration.maxFrameSize
        machine = Machine(configuration: NodeMachineConfiguration(
            localPeer: identity.peerID, incarnation: environment.incarnation, seed: random.seed(),
            membershipSeed: configuration.membershipSeed,
            connection: ConnectionConfiguration(
                baseBackoff: nanos(configuration.baseBackoff), maxBackoff: nanos(configuration.maxBackoff),
                keepaliveInterval: nanos(configuration.keepaliveInterval),
                keepaliveTimeout: nanos(configuration.keepaliveTimeout),
                maxPeers: configuration.maxPeers
            ),
            membership: configuration.membership,
            queue: queue,
            links: LinkStagesConfiguration(
                handshakeTimeout: nanos(configuration.handshakeTimeout),
                handshakeTimeoutDescription: "\(configuration.handshakeTimeout)",
                keepaliveTimeoutDescription: "\(configuration.keepaliveTimeout)",
                firstMessageTimeoutDescription: "\(configuration.handshakeFirstMessageTimeout)",
                helloFeatures: QueueShell.helloFeatures | WireProtocol.featureOperationsAddress
                    | WireProtocol.featureCallRuns | WireProtocol.featureResultRuns,
                helloFeatureMask: configuration.helloFeatureMask,
                admission: HandshakeAdmissionConfiguration(
                    maxHandshakes: 2 * max(1, configuration.maxPeers) + 16,
                    maxPerSource: max(1, configuration.maxHandshakesPerSource),
                    firstMessageTimeout: nanos(configuration.handshakeFirstMessageTimeout)
                )
            )
        ))
        self.random = random
    }

    var now: UInt64 { environment.monotonicNanoseconds() }

    /// A generator of its own for one more machine (split from the environment's seed).
    func splitRandom() -> SplitMix64 { random.split() }

    func emit(_ event: NodeEvent) {
        noteForDashboard(event)
        events.yield(event)
    }

    /// Listens and dials the bootstrap addresses.
    func start(listen: SocketAddress, bootstrap: [SocketAddress],
               names: [SocketAddress: HostAndPort] = [:]) throws(NodeError) -> SocketAddress {
        bootstrapNames = names
        var options = TCPOptions()
        options.highWatermark = configuration.highWatermark
        options.lowWatermark = configuration.lowWatermark
        do {
            listener = try reactor.listen(on: listen, options: options) { [unowned self] connection in
                self.accept(connection)
            }
        } catch {
            throw .reactor(error)
        }
        let bound = listener!.localAddress
        let advertisedHost = configuration.advertisedHost ?? bound.host
        advertised = (try? SocketAddress(host: advertisedHost, port: bound.port)) ?? bound
        logger.info("listening on \(bound) as \(identity.peerID.short) (\(reactor.backendKind), \(securityDescription))")
        startOperations()
        perform(machine.start(advertising: advertised, bootstrap: bootstrap, now: now))
        if configuration.discovery.enabled { discovery = try startDiscovery() }
        return bound
    }

    private var securityDescription: String {
        switch security {
        case .insecure: return "INSECURE plaintext links"
        case .noise: return configuration.clusterKey == nil ? "Noise, development key" : "Noise, cluster key"
        }
    }

    /// Whether this node may talk to `address` at all: without a cluster key only loopback.
    func mayReach(_ address: SocketAddress) -> Bool {
        address.isLoopback || (configuration.clusterKey != nil && !configuration.insecure)
    }

    // MARK: Machine actions

    func perform(_ actions: [Action]) {
        driver.perform(actions)
    }

    private func handle(_ action: consuming Action) {
        // A queue's action is moved on (a delivery's items keep no reference here).
        if case .queue = action {
            guard case .queue(let name, let queueAction) = consume action else { return }
            queues.handle(name, queueAction)
            return
        }
        switch action {
        case .dial(let address): dial(address)
        case .closeLink, .sendPing, .sendPeerList:
            break  // only for links without stages in the machine; every link here has them
        case .admitLink(let id):
            guard let connection = accepting.removeValue(forKey: id), let handle = machine.handle(of: id) else { return }
            let link = makeLink(handle, direction: .inbound, dialed: nil)
            link.connection = connection
            connection.handler = link
            links[id] = link
        case .sendLinkMessage(let id, let message):
            links[id]?.sendMessage(message)
        case .closeConnection(let id, let how, let reason, let level):
            links[id]?.close(how, reason: reason, level: level.map(Self.loggerLevel))
        case .linkNote(let id, let level, let text):
            logger.log(level: Self.loggerLevel(level), "link to \(links[id]?.remoteDescription ?? "\(id)"): \(text)")
        case .linkReady(let id):
            if let address = links[id]?.dialedAddress, let trouble = dialTrouble.removeValue(forKey: address) {
                logger.info("linked to \(address) after \(trouble.failures) failed attempts")
            }
        case .dialFailedNote(let address, let reason):
            noteDialFailure(address, reason: reason)
        case .admissionReport(let report):
            logAdmission(report)
        case .send(let message, let peer, let id):
            guard let link = links[id], link.stage == .ready, link.sendMessage(message) else {
                perform(machine.undeliverable(message, to: peer, now: now))
                return
            }
        case .armTimer(let timer, let at): armTimer(timer, at: at)
        case .cancelTimer(let timer): cancelTimer(timer)
        case .peerConnected(let peer, let link):
            logger.info("peer \(peer.short) connected (\(links[link]?.direction == .outbound ? "outbound" : "inbound"))")
            emit(.peerConnected(peer))
        case .peerMovedLink(let peer):
            logger.debug("peer \(peer.short) moved to its surviving link")
        case .peerDisconnected(let peer, let reason):
            logger.info("peer \(peer.short) disconnected: \(reason)")
            emit(.peerDisconnected(peer, left: reason == .peerLeft))
        case .member(let event):
            report(event)
        case .queue:
            break  // handed on above
        case .deadLettered(let name, let target, let refusals):
            queues.deadLettered(from: name, into: target, refusals: refusals)
        case .sendCall(let message, let peer):
            if !send(message, to: peer) {
                logger.debug("remote calls: no link to \(peer.short); \(message.messageType) not sent")
                perform(machine.callMessageUndeliverable(message, to: peer, now: now))
            }
        case .completeCalls(let ended):
            remoteCalls?.complete(ended)
        case .runTasks(let tasks):
            remoteCalls?.run(tasks)
        case .cancelTask(let task):
            remoteCalls?.bridge.cancel(task)
        case .callItemDiscarded(let error):
            logger.warning("remote calls: dropped a call item that names no caller: \(error)")
        case .flushCallsAtEndOfTurn:
            // After the turn's remaining handlers, before the links seal: pure batching.
            reactor.deferToEndOfTurn(flushCalls)
        }
    }

    /// The end-of-turn flush of the calls, made once (not a closure per turn).
    private lazy var flushCalls: () -> Void = { [unowned self] in
        guard !self.isStopped else { return }
        self.perform(self.machine.flushCalls(now: self.now, wallClock: self.environment.wallNanoseconds()))
        self.remoteCalls?.publishCounters()
    }

    /// Sends the calls, results and credit the machine holds for the end of the turn now, and
    /// starts writing every link's staged messages. Not from within a link's receive path.
    func flushCallsNow() {
        guard !isStopped else { return }
        perform(machine.flushCalls(now: now, wallClock: environment.wallNanoseconds()))
        for link in links.values where link.stagedBytes > 0 { link.flushNow() }
    }

    /// Arms `timer` at `deadline` (monotonic ns), replacing its earlier deadline.
    func armTimer(_ timer: NodeTimer, at deadline: UInt64) {
        if let shellTimer = timers[timer] { return shellTimer.arm(at: deadline) }
        let shellTimer = ShellTimer(reactor: reactor) { [unowned self] in self.timerFired(timer) }
        timers[timer] = shellTimer
        shellTimer.arm(at: deadline)
    }

    func cancelTimer(_ timer: NodeTimer) {
        // A link's timer goes with its link (it is cancelled when the link closes).
        if case .link = timer { timers.removeValue(forKey: timer)?.cancel() } else { timers[timer]?.cancel() }
    }

    private static func loggerLevel(_ level: NodeLogLevel) -> Logger.Level {
        switch level {
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        }
    }

    private func timerFired(_ timer: NodeTimer) {
        perform(machine.tick(timer, now: now))
        if case .queue(let name) = timer { queues.syncMetrics(name) }
    }

    /// Logs and emits membership's news (the machine routes its verdicts).
    private func report(_ event: MembershipEvent) {
        switch event {
        case .joined(let peer):
            logger.info("member \(peer.short) joined")
            emit(.memberJoined(peer))
        case .restarted(let peer):
            logger.notice("member \(peer.short) restarted (its previous process is gone)")
            emit(.memberJoined(peer))
        case .suspect(let peer):
            logger.notice("member \(peer.short) suspected (local health \(machine.membership.localHealth))")
            emit(.memberSuspected(peer))
        case .alive(let peer):
            logger.notice("member \(peer.short) refuted its suspicion")
            emit(.memberAlive(peer))
        case .dead(let peer):
            logger.warning("member \(peer.short) declared dead")
            emit(.memberDead(peer))
        case .refutedDeath:
            logger.warning("this node was declared dead (refuted at incarnation \(machine.membership.incarnation))")
        case .left(let peer):
            logger.info("member \(peer.short) left")
            emit(.memberLeft(peer))
        }
    }

    private func dial(_ address: SocketAddress) {
        guard !isStopped else { return }
        if let name = bootstrapNames[address], !namesDialed.insert(address).inserted {
            redial(address, resolving: name)
        } else {
            connect(address, at: address)
        }
    }

    /// Resolves `name` again off the reactor thread (resolving blocks), then dials what it
    /// resolves to; the manager keeps knowing the dial under `address`.
    private func redial(_ address: SocketAddress, resolving name: HostAndPort) {
        let resolve = configuration.resolveHost
        let core = ReactorBound(WeakReference(self), reactor: reactor)
        let reactor = self.reactor
        DispatchQueue.global().async {
            let result = Result { () throws(NodeError) in try resolve(name.host, name.port) }
            _ = reactor.execute {
                guard let self = core.value.object, !self.isStopped else { return }
                switch result {
                case .success(let target): self.connect(address, at: target)
                case .failure(let error):
                    self.noteDialFailure(address, reason: "\(error)")
                    self.perform(self.machine.dialFailed(address, now: self.now))
                }
            }
        }
    }

    /// Dials `target` for the manager's dial of `address` (the same, unless a name moved).
    private func connect(_ address: SocketAddress, at target: SocketAddress) {
        guard !isStopped else { return }
        guard mayReach(target) else {
            noteDialFailure(address, reason: "\(target) is off loopback and this node has no cluster key", level: .warning)
            perform(machine.dialFailed(address, now: now))
            return
        }
        let id = LinkID(nextLinkID)
        nextLinkID += 1
        let opened = machine.linkOpened(id, dialing: address, now: now)
        guard let handle = machine.handle(of: id) else { return }
        let link = makeLink(handle, direction: .outbound, dialed: address)
        do {
            var options = TCPOptions()
            options.highWatermark = configuration.highWatermark
            options.lowWatermark = configuration.lowWatermark
            link.connection = try reactor.connect(to: target, timeout: configuration.handshakeTimeout,
                                                  options: options, handler: link)
            links[id] = link
            perform(opened)
        } catch {
            perform(opened)
            perform(machine.linkClosed(id, end: .connectFailed(error: "\(error)"), description: "\(error)", now: now))
        }
    }

    /// Logs why dialing `address` failed: at `level` the first time and whenever the reason
    /// changes, else once per quiet time (1 minute, doubling to 1 hour) with the count, so an
    /// unreachable peer redialed with backoff does not write a line per attempt.
    private func noteDialFailure(_ address: SocketAddress, reason: String, level: Logger.Level = .info) {
        let now = self.now
        if var trouble = dialTrouble[address], trouble.reason == reason {
            trouble.failures += 1
            if now >= trouble.nextReport {
                logger.log(level: level, "still cannot link to \(address) after \(trouble.failures) attempts: \(reason)")
                trouble.quiet = min(trouble.quiet * 2, 3_600_000_000_000)
                trouble.nextReport = now + trouble.quiet
            }
            dialTrouble[address] = trouble
            return
        }
        // Bounded: the manager dials a bounded set of addresses; forget all if that is exceeded.
        if dialTrouble.count >= 4 * configuration.maxPeers + 64 { dialTrouble.removeAll() }
        logger.log(level: level, "cannot link to \(address): \(reason) (retrying with backoff)")
        dialTrouble[address] = DialTrouble(reason: reason, failures: 1, nextReport: now + 60_000_000_000,
                                           quiet: 60_000_000_000)
    }

    private func accept(_ connection: TCPConnection) {
        guard !isStopped else { return }
        guard mayReach(connection.remoteAddress) else {
            logger.warning("refusing \(connection.remoteAddress): off loopback without a cluster key")
            return  // no handler: the listener closes it
        }
        let id = LinkID(nextLinkID)
        nextLinkID += 1
        // A refused connection gets no handler: the listener closes it (the admission report counts it).
        accepting[id] = connection
        perform(machine.linkAccepted(id, source: connection.remoteAddress.host, now: now))
        accepting[id] = nil
    }

    /// Inbound handshakes refused, evicted and timed out since the start.
    var handshakeTotals: HandshakeAdmissionReport { machine.handshakeTotals }

    /// One line per interval for all the refused, evicted and timed-out handshakes in it.
    private func logAdmission(_ report: HandshakeAdmissionReport) {
        let seconds = report.interval / 1_000_000_000
        logger.warning("inbound handshakes in the last \(seconds) s: \(report.refused) refused, \(report.evicted) stalled ones closed for newer connections, \(report.timedOut) closed without a first message, \(report.failed) failed, from \(report.sources) source address(es)")
    }

    private func makeLink(_ handle: LinkHandle, direction: LinkDirection, dialed: SocketAddress?) -> PeerLink {
        // The configuration was validated at start, so the session cannot fail to build.
        let session = try! LinkSession(role: direction == .outbound ? .initiator : .responder,
                                       security: security, identity: identity,
                                       maxFrameSize: configuration.maxFrameSize, cipher: configuration.linkCipherChoice,
                                       versions: configuration.protocolVersions, handshakeKeys: handshakeKeys.split())
        return PeerLink(handle: handle, direction: direction, dialedAddress: dialed, node: self, session: session)
    }

    // MARK: Link callbacks

    /// `link`'s connection closed: the machine says what follows (the link is forgotten after).
    func linkClosed(_ link: PeerLink, end: LinkMachine.ConnectionEnd, description: String) {
        perform(machine.linkClosed(link.id, end: end, description: description, now: now))
        links[link.id] = nil
    }

    /// A message for the layers the shell serves (queues, calls, the application) from `peer`.
    func deliver(_ type: MessageType, _ body: UnsafeRawBufferPointer, from peer: PeerID, on link: PeerLink) {
        if MessageType.queueRange.contains(type.rawValue) {
            if let error = queues.receive(type, body, from: peer) { link.fail("bad \(type) message: \(error)") }
            return
        }
        if MessageType.remoteCallRange.contains(type.rawValue) {
            let message: RemoteCallMessage
            do throws(WireError) {
                message = try RemoteCallMessage.decode(type: type, body: body)
            } catch {
                // Before calls are attached, only credit is addressed here: the rest is ignored.
                if remoteCalls != nil { link.fail("bad \(type) message: \(error)") }
                return
            }
            if let remoteCalls {
                remoteCalls.receive(message, from: peer)
            } else {
                perform(machine.received(message, from: peer, now: now, wallClock: 0))  // only credit is kept
            }
            return
        }
        messageHandler?(type, body, peer)
    }

    func linkWritabilityChanged(_ link: PeerLink, isWritable: Bool) {}

    /// Sends an upper-layer message to `peer` over its current link. Returns false when the
    /// peer has no ready link (the caller keeps what it tried to send).
    @discardableResult
    func send(_ message: some WireMessage, to peer: PeerID) -> Bool {
        guard let id = machine.link(to: peer), let link = links[id], link.stage == .ready else { return false }
        return link.sendMessage(message)
    }

    /// Seals and starts writing what the link to `peer` has staged (see `PeerLink.flushNow`).
    func flushLink(to peer: PeerID) {
        guard let id = machine.link(to: peer), let link = links[id] else { return }
        link.flushNow()
    }

    // MARK: Queries and stop

    var openLinkCount: Int { links.count }

    /// Links past the handshake and hello.
    var readyLinks: [PeerLink] {
        links.values.filter { $0.stage == .ready && $0.remotePeerID != nil }
    }

    var connectedPeers: Set<PeerID> {
        Set(links.values.compactMap { link in
            link.stage == .ready && machine.link(to: link.remotePeerID!) == link.id ? link.remotePeerID : nil
        })
    }

    /// Each link this shell holds: its ID, stage, peer, and whether the machine keeps it as
    /// that peer's link (test diagnostics: ``connectedPeers`` counts the kept, ready ones).
    var linkSummary: String {
        links.values.sorted { "\($0.id)" < "\($1.id)" }.map { link in
            let peer = link.remotePeerID
            let kept = peer.map { machine.link(to: $0) == link.id } ?? false
            return "\(link.id) \(link.stage) \(peer.map { String("\($0)".prefix(8)) } ?? "-") kept=\(kept)"
        }.joined(separator: "; ")
    }

    var peerStatuses: [PeerStatus] {
        let current = now
        return manager.peers.map { record in
            let state: PeerStatus.State
            switch record.state {
            case .connected: state = .connected
            case .connecting: state = .connecting
            case .backoff: state = .backoff
            case .failed: state = .failed
            }
            return PeerStatus(
                peerID: record.peer, address: record.address, state: state,
                secondsSinceHeard: record.lastSeen == 0 ? nil : Double(current &- record.lastSeen) / 1e9,
                inbound: record.direction.map { $0 == .inbound },
                membership: record.peer.flatMap { membership?.state(of: $0) }
            )
        }
    }

    /// The hello features of the peer's current link (0 without one).
    func remoteFeatures(of peer: PeerID) -> UInt64 { machine.features(of: peer) }

    /// First step of a graceful stop: the queues hand their items and confirmations on while
    /// the node still serves its peers (``QueueShell/drain()``).
    func beginDrain() {
        guard !isStopped else { return }
        queues.drain()
    }

    /// Says goodbye to every peer and stops accepting. Links close as their goodbyes flush.
    func stop() {
        guard !isStopped else { return }
        discovery?.stop()  // goodbyes
        discovery = nil
        remoteCalls?.stop()
        queues.stop()
        // The leave announcement goes out ahead of the goodbyes, so peers record left, not dead;
        // links not ready yet end as their stage says.
        perform(machine.stop(now: now))
        isStopped = true
        listener?.close()
        listener = nil
        stopOperations()
    }
}

/// A weak reference to hand to a closure that must not keep its object alive.
final class WeakReference<Object: AnyObject> {
    weak var object: Object?
    init(_ object: Object) { self.object = object }
}
