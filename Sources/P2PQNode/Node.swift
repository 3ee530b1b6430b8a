import Dispatch
import Logging
import P2PQLink
import P2PQMembership
import P2PQQueue
import P2PQReactor
import P2PQWire
import Synchronization

/// A p2pq node: a reactor thread, a listener, and authenticated links to its peers.
///
/// `start()` listens and dials the bootstrap addresses; peers exchange what they know, so a
/// node bootstrapped to one member meets all of them. `stop()` says goodbye to every peer,
/// closes the links and joins the reactor thread. Every method may be called from any task.
public final class Node: Sendable {
    public let configuration: NodeConfiguration
    /// The node's identity; its PeerID is the hash of its static key.
    public let identity: NodeIdentity
    /// Link events: peers connecting and leaving, connections refused. Bounded: when nobody
    /// reads, the oldest events are dropped.
    public let events: AsyncStream<NodeEvent>
    private let eventSink: AsyncStream<NodeEvent>.Continuation

    private enum Lifecycle {
        case idle
        case running(Reactor, ReactorBound<NodeCore>)
        case stopped
    }
    private let lifecycle = Mutex<Lifecycle>(.idle)

    /// A running node whose last reference goes without ``stop()``: its loop is asked to stop
    /// (no drain, no goodbye: its peers see the link close) rather than run on, unreachable.
    deinit {
        let reactor = lifecycle.withLock { state -> Reactor? in
            guard case .running(let reactor, _) = state else { return nil }
            state = .stopped
            return reactor
        }
        if let reactor {
            configuration.logger.warning("a running node was released without stop(): its loop stops without a drain")
            reactor.requestStop()
        }
    }

    /// Validates the configuration and loads (or creates) the identity. Nothing runs yet.
    public init(configuration: NodeConfiguration = NodeConfiguration()) throws(NodeError) {
        guard configuration.maxPeers > 0 else { throw .invalidConfiguration("maxPeers must be positive") }
        guard WireProtocol.maxFrameSizeRange.contains(configuration.maxFrameSize) else {
            throw .invalidConfiguration("maxFrameSize must be within \(WireProtocol.maxFrameSizeRange)")
        }
        guard configuration.lowWatermark <= configuration.highWatermark else {
            throw .invalidConfiguration("lowWatermark exceeds highWatermark")
        }
        guard configuration.keepaliveInterval < configuration.keepaliveTimeout else {
            throw .invalidConfiguration("keepaliveInterval must be shorter than keepaliveTimeout")
        }
        guard configuration.baseBackoff <= configuration.maxBackoff else {
            throw .invalidConfiguration("baseBackoff exceeds maxBackoff")
        }
        if let problem = configuration.membership.problem {
            throw .invalidConfiguration("membership: \(problem)")
        }
        if configuration.insecure && configuration.clusterKey != nil {
            throw .invalidConfiguration("insecure mode and a cluster key exclude each other")
        }
        self.configuration = configuration
        if let identity = configuration.identity {
            self.identity = identity
        } else if let path = configuration.identityFile {
            do {
                self.identity = try NodeIdentity.loadOrCreate(path: path)
            } catch {
                throw .identity(error)
            }
        } else {
            self.identity = NodeIdentity.generate()
        }
        (events, eventSink) = AsyncStream.makeStream(of: NodeEvent.self, bufferingPolicy: .bufferingNewest(4096))
    }

    /// Not started yet (and not stopped).
    var isIdle: Bool {
        lifecycle.withLock { state in
            if case .idle = state { return true }
            return false
        }
    }

    /// This node's PeerID.
    public var peerID: PeerID { identity.peerID }

    /// Starts the reactor, listens and dials the bootstrap addresses. Returns once listening.
    ///
    /// - Throws: ``NodeError/notLoopback(_:)`` when asked to listen off loopback without a
    ///   cluster key (or in insecure mode); ``NodeError/invalidConfiguration(_:)`` for bad
    ///   addresses; ``NodeError/reactor(_:)`` when the port is taken or the backend refused.
    @discardableResult
    public func start() async throws(NodeError) -> NodeInfo {
        let listen: SocketAddress
        do {
            listen = try SocketAddress(host: configuration.listenHost, port: configuration.listenPort)
        } catch {
            throw .invalidConfiguration("\(error)")
        }
        // Names are resolved here once, so a typo fails start(); the core resolves them again
        // before each redial, under the address they first had.
        var dialAtStart: [SocketAddress] = []
        var bootstrapNames: [SocketAddress: HostAndPort] = [:]
        for text in configuration.bootstrap {
            let target = try HostAndPort(text)
            if let address = target.numeric {
                dialAtStart.append(address)
            } else {
                let address = try await Self.resolveOffPool(configuration.resolveHost, target)
                dialAtStart.append(address)
                bootstrapNames[address] = target
            }
        }
        let bootstrap = dialAtStart
        let names = bootstrapNames
        if !listen.isLoopback && (configuration.clusterKey == nil || configuration.insecure) {
            throw .notLoopback(configuration.insecure
                ? "insecure mode is loopback only; refusing to listen on \(listen)"
                : "without a cluster key a node listens on loopback only; refusing \(listen) (give it a key file)")
        }
        let claimed = lifecycle.withLock { state -> Bool in
            if case .idle = state { state = .stopped; return true }
            return false
        }
        guard claimed else { throw .alreadyStarted }
        let reactor: Reactor
        do {
            reactor = try Reactor(configuration: configuration.reactor)
        } catch {
            lifecycle.withLock { $0 = .idle }
            throw .reactor(error)
        }
        let configuration = self.configuration
        let identity = self.identity
        let sink = eventSink
        let result: Result<(ReactorBound<NodeCore>, SocketAddress), NodeError>
        do {
            result = try await reactor.submit {
                let core = NodeCore(reactor: reactor, configuration: configuration, identity: identity,
                                    listen: listen, events: sink)
                // Its links, shells and timers point at it unowned: it lives as long as the loop.
                reactor.keepAlive(core)
                do throws(NodeError) {
                    let bound = try core.start(listen: listen, bootstrap: bootstrap, names: names)
                    return .success((ReactorBound(core, reactor: reactor), bound))
                } catch {
                    // Whatever started before the failure (timers holding unowned references to
                    // the core, sockets) is undone here, on the loop, before the core goes away.
                    core.stop()
                    return .failure(error)
                }
            }
        } catch {
            reactor.stop()
            lifecycle.withLock { $0 = .idle }
            throw .reactor(.reactorStopped)
        }
        switch result {
        case .success(let (core, bound)):
            lifecycle.withLock { $0 = .running(reactor, core) }
            return NodeInfo(peerID: identity.peerID, listenAddress: bound, backend: reactor.backendKind)
        case .failure(let error):
            reactor.stop()
            lifecycle.withLock { $0 = .idle }
            throw error
        }
    }

    /// Runs a blocking name resolution on a Dispatch worker, not on the caller's pool thread.
    private static func resolveOffPool(
        _ resolve: @escaping @Sendable (String, Int) throws(NodeError) -> SocketAddress, _ target: HostAndPort
    ) async throws(NodeError) -> SocketAddress {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<SocketAddress, NodeError>, Never>) in
            DispatchQueue.global().async {
                continuation.resume(returning: Result { () throws(NodeError) in try resolve(target.host, target.port) })
            }
        }
        return try result.get()
    }

    /// The node's reactor as a task executor, nil when the node is not running.
    ///
    /// A task that prefers it runs on the reactor thread between I/O turns:
    ///
    /// ```swift
    /// let echo = rpc.rawFunction("echo")
    /// await withTaskGroup(of: Void.self) { group in
    ///     for _ in 0..<256 {
    ///         group.addTask(executorPreference: node.taskExecutor) {
    ///             for _ in 0..<1000 { _ = try? await echo(argument) }
    ///         }
    ///     }
    /// }
    /// ```
    ///
    /// Its pushes, pops and calls then reach the node without waking a thread, and the node
    /// resumes it on the same thread: for many small calls or pops in flight this cut the
    /// caller's CPU per call by 35 to 45 % (docs/benchmarks.md). Such a task shares the thread with all of
    /// the node's I/O, so it must not block or compute for long; building large batches or
    /// other CPU-heavy work belongs on the global executor (a bulk producer on the reactor was
    /// slower). After the node stops, preferring tasks run on the global executor.
    public var taskExecutor: (any TaskExecutor)? {
        lifecycle.withLock { state -> (any TaskExecutor)? in
            guard case .running(let reactor, _) = state else { return nil }
            return reactor
        }
    }

    /// Stops the node gracefully, in two steps, each bounded by
    /// ``NodeConfiguration/drainTimeout``:
    ///
    /// 1. **Drain.** Pushes, pops and flushes fail with ``QueueError/nodeStopped`` from now on.
    ///    Every queue hands its queued items, and those of transfers that fail, to live peers
    ///    (consumers first) together with their ownership: a receiver becomes the owner of the
    ///    items this node owned, so the later death of a node they move to loses nothing. Pop
    ///    confirmations and custody notices go to their owners. The step ends when peers
    ///    acknowledged all of it, when no peer is left to take what remains, or at the timeout.
    /// 2. **Leave.** Membership leave, goodbyes to every peer; waits for the goodbyes to be
    ///    written, closes everything and joins the reactor thread.
    ///
    /// What could not be handed over is lost unless another node owns it (it then re-queues it
    /// once membership reports this node left); the report and a warning in the log say how
    /// many. Idempotent: a second call returns an empty report. A task running on the node's
    /// reactor (see ``taskExecutor``) may call it: the stop itself runs elsewhere.
    @discardableResult
    public func stop() async -> StopReport {
        await withTaskExecutorPreference(globalConcurrentExecutor) { await self.stopOffLoop() }
    }

    private func stopOffLoop() async -> StopReport {
        let running = lifecycle.withLock { state -> (Reactor, ReactorBound<NodeCore>)? in
            guard case .running(let reactor, let core) = state else { return nil }
            state = .stopped
            return (reactor, core)
        }
        guard let (reactor, core) = running else { return StopReport() }
        let started = MonotonicTime.now()
        let before = (try? await reactor.submit { core.value.queues.handOverTotals }) ?? (transferredOut: 0, noticesAcknowledged: 0, ownedHeldElsewhere: 0)
        _ = try? await reactor.submit { core.value.beginDrain() }
        let drainDeadline = started + configuration.drainTimeout
        var progress = DrainProgress(queued: 0, inFlight: 0, pendingNotices: 0, unreachableNotices: 0, hasLivePeer: false)
        var timedOut = false
        while true {
            guard let (now, stuck) = try? await reactor.submit({ core.value.queues.drainProgress }) else { break }
            progress = now
            if progress.isComplete || stuck { break }
            if MonotonicTime.now() >= drainDeadline {
                timedOut = true
                break
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        let after = (try? await reactor.submit { core.value.queues.handOverTotals }) ?? before
        var report = StopReport()
        report.handedOver = after.transferredOut - before.transferredOut
        report.notHandedOver = progress.queued + progress.inFlight
        report.noticesFlushed = after.noticesAcknowledged - before.noticesAcknowledged
        report.noticesNotFlushed = progress.pendingNotices + progress.unreachableNotices
        report.ownedHeldElsewhere = after.ownedHeldElsewhere
        report.hadLivePeer = progress.hasLivePeer
        report.timedOut = timedOut
        let logger = configuration.logger
        if report.notHandedOver > 0 {
            logger.warning("stopping: \(report.notHandedOver) items could not be handed over (\(progress.hasLivePeer ? "timed out" : "no live peer"))")
        }
        if report.noticesNotFlushed > 0 {
            logger.warning("stopping: \(report.noticesNotFlushed) pop confirmations and custody notices not acknowledged by their owners")
        }
        _ = try? await reactor.submit { core.value.stop() }
        let deadline = MonotonicTime.now() + configuration.drainTimeout
        while MonotonicTime.now() < deadline {
            let open = (try? await reactor.submit { core.value.openLinkCount }) ?? 0
            if open == 0 { break }
            try? await Task.sleep(for: .milliseconds(5))
        }
        reactor.stop()
        eventSink.finish()
        report.duration = MonotonicTime.now() - started
        return report
    }

    /// The peers this node knows: connected, being dialed, backing off or given up.
    public func peers() async -> [PeerStatus] {
        await onCore({ $0.peerStatuses }) ?? []
    }

    /// A snapshot of the node: peers, counters, queues (what `p2pq status` prints).
    public func status() async -> NodeStatus? {
        await onCore({ $0.status() })
    }

    /// The peers with a live link.
    public func connectedPeers() async -> Set<PeerID> {
        await onCore({ $0.connectedPeers }) ?? []
    }

    /// Waits until at least `count` peers have a live link to this node, and returns them.
    ///
    /// Use it after ``start()`` before work that needs a cluster: a push made before any peer
    /// links stays on this node until one does, and a call waits for an executor.
    ///
    /// ```swift
    /// try await node.start()
    /// let peers = try await node.waitForPeers(count: 2, timeout: .seconds(10))
    /// ```
    ///
    /// - Throws: ``NodeError/timedOut(_:)`` when fewer than `count` peers are linked after
    ///   `timeout`; ``NodeError/stopped`` when the node is not running (or stops meanwhile) or
    ///   the waiting task is cancelled.
    @discardableResult
    public func waitForPeers(count: Int = 1, timeout: Duration) async throws(NodeError) -> Set<PeerID> {
        let deadline = ContinuousClock.now + timeout
        while true {
            guard let peers = await onCore({ $0.connectedPeers }) else { throw .stopped }
            if peers.count >= count { return peers }
            guard ContinuousClock.now < deadline else {
                throw .timedOut("\(peers.count) of \(count) peers linked after \(timeout)")
            }
            // Polling is enough here: joining takes milliseconds to seconds, not microseconds.
            do { try await Task.sleep(for: .milliseconds(10)) } catch { throw .stopped }
        }
    }

    /// The members this node knows (itself excluded) and their states.
    public func members() async -> [MemberStatus] {
        await onCore({ $0.membership?.members ?? [] }) ?? []
    }

    /// Open connections, links still handshaking included (for tests).
    func linkCount() async -> Int {
        await onCore({ $0.openLinkCount }) ?? 0
    }

    /// Runs `body` on the reactor thread with the node's core (for tests).
    func onCoreForTesting(_ body: @escaping @Sendable (NodeCore) -> Void) async {
        _ = await onCore(body)
    }

    /// Runs `body` on the reactor thread with the core; nil if the node is not running.
    func withCore<T: Sendable>(_ body: @escaping @Sendable (NodeCore) -> T) async -> T? {
        await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
            if !executeOnCore({ core in continuation.resume(returning: body(core)) }) {
                continuation.resume(returning: nil)
            }
        }
    }

    /// Runs `body` on the reactor thread with the core; false if the node is not running.
    func executeOnCore(_ body: @escaping @Sendable (NodeCore) -> Void) -> Bool {
        let running = lifecycle.withLock { state -> ReactorBound<NodeCore>? in
            guard case .running(_, let core) = state else { return nil }
            return core
        }
        guard let core = running else { return false }
        return core.reactor.execute { body(core.value) }
    }

    private func onCore<T: Sendable>(_ body: @escaping @Sendable (NodeCore) -> T) async -> T? {
        let running = lifecycle.withLock { state -> (Reactor, ReactorBound<NodeCore>)? in
            guard case .running(let reactor, let core) = state else { return nil }
            return (reactor, core)
        }
        guard let (reactor, core) = running else { return nil }
        return try? await reactor.submit { body(core.value) }
    }
}
