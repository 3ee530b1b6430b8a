import P2PQNodeMachine
import P2PQQueue
import P2PQReactor
import P2PQRemoteCall
import P2PQWire

/// Connects the caller and executor machines of remote calls to the node: takes calls from the
/// async API, pushes their items on the call queue, keeps the executor's demand as a waiting
/// pop on that queue, hands tasks to the worker side in batches, routes messages `0x40–0x5F`
/// and membership verdicts. Reactor thread only.
final class RemoteCallShell {
    unowned let core: NodeCore
    let bridge: RemoteCallBridge
    let queueName: String
    private var caller: CallerMachine
    /// Call results refused: their sender had not been sent or announced the call.
    var refusedResults: Int { caller.counters.refusedResults }
    private var executor: ExecutorMachine

    /// Calls waiting for their result, by sequence: a window, no hashing per call. A cancel
    /// names the API's token and finds its call by a scan, once per drain for all its cancels.
    private var pending = SequenceTable<CallRequest>()
    /// Calls refused for the outstanding limit; made again on `.capacityAvailable`.
    private var parked: [CallRequest] = []
    /// Pushes the call queue refused, by sequence: the call fails with this.
    private var pushFailures: [UInt64: QueueError] = [:]
    private lazy var callerTimer = ShellTimer(reactor: core.reactor) { [unowned self] in
        guard !self.isStopped else { return }
        self.performCaller(self.caller.tick(now: self.now))
        self.scheduleFlush()
    }

    /// The last nested call's result, held until the executor gives the task a slot again.
    private var resuming: [TaskID: (CallCompletion, Result<[UInt8], RemoteCallError>)] = [:]

    private var inlineBodies: [String: @Sendable ([UInt8]) -> CallOutcome] = [:]
    private var demand = 0
    /// The waiting pops on the call queue (the plan for the executor's demand).
    private var waiters = CallQueueWaiters()

    /// The executor's actions; each time they run out, the waiting pops on the call queue
    /// are adjusted to its demand (which may deliver at once, and so act again).
    private lazy var executorDriver = ShellDriver<ExecutorAction>(
        handle: { [unowned self] in self.handle($0) }, whenDrained: { [unowned self] in self.adjustWaiter() })
    /// The caller's actions; each time they run out, the pipelined streams given results are
    /// woken, once each.
    private lazy var callerDriver = ShellDriver<CallerAction>(
        handle: { [unowned self] in self.handle($0) }, whenDrained: { [unowned self] in self.wakeStreams() })
    /// Pipelined streams given results while caller actions run: each is woken once at the end.
    private var streamResults: [(stream: CallPipeline, results: [(index: Int, token: UInt64, result: Result<[UInt8], RemoteCallError>)])] = []
    private var flushScheduled = false
    private var isStopped = false
    private var published = (calls: 0, executed: 0, retries: 0, duplicates: 0)
    /// Direct call items of this reactor turn, by executor: one message each at its end.
    private var directOut: [PeerID: [[UInt8]]] = [:]
    /// Calls cancelled this turn whose items may still be in the local call queue.
    private var unwanted: Set<CallID> = []

    init(core: NodeCore, bridge: RemoteCallBridge, caller: CallerConfiguration, executor: ExecutorConfiguration) {
        self.core = core
        self.bridge = bridge
        self.queueName = bridge.queueName
        var callerConfiguration = caller
        // Call IDs must not repeat across restarts of the same identity.
        callerConfiguration.firstSequence = Swift.max(caller.firstSequence, core.incarnation)
        self.caller = CallerMachine(localPeer: core.identity.peerID, configuration: callerConfiguration)
        self.executor = ExecutorMachine(configuration: executor, localPeer: core.identity.peerID)
        // Peers linked before this was attached: their executors' credit already came, and
        // they are offered this node's once it processes.
        for peer in core.connectedPeers.sorted() { self.executor.peerConnected(peer) }
        for (peer, slots) in core.earlyCredit.take() {
            _ = self.caller.received(.credit(UInt32(clamping: slots)), from: peer, now: core.now)  // no calls yet: no actions
        }
    }

    private var now: UInt64 { core.now }
    private var localPeer: PeerID { core.identity.peerID }

    private var wallClock: UInt64 { core.environment.wallNanoseconds() }

    // MARK: From the API

    /// Runs what the async API and the workers queued.
    func drain() {
        let ops = bridge.takeOps()
        guard !isStopped else {
            for op in ops {
                if case .call(let request) = op { request.completion.resume(.failure(.nodeStopped)) }
            }
            return
        }
        // Consecutive calls (from any number of tasks) go to the caller machine as one batch, and
        // consecutive outcomes to the executor: one action list per run. Ops still take effect
        // in order: a run is flushed before any other op.
        var outcomes: [(TaskID, CallOutcome)] = []
        var calls: [CallRequest] = []
        var cancels: Set<UInt64> = []
        for op in ops {
            if case .call(let request) = op {
                if !outcomes.isEmpty {
                    finish(outcomes)
                    outcomes.removeAll()
                }
                if !cancels.isEmpty {
                    cancel(cancels)
                    cancels.removeAll()
                }
                calls.append(request)
                continue
            }
            if !calls.isEmpty {
                call(calls)
                calls.removeAll()
            }
            if case .cancel(let token) = op {
                cancels.insert(token)
                continue
            }
            if !cancels.isEmpty {
                cancel(cancels)
                cancels.removeAll()
            }
            if case .finished(let task, let outcome) = op {
                outcomes.append((task, outcome))
                continue
            }
            if case .finishedRun(let run) = op {
                outcomes.append(contentsOf: run)
                continue
            }
            if !outcomes.isEmpty {
                finish(outcomes)
                outcomes.removeAll()
            }
            switch op {
            case .call: break  // gathered above
            case .cancel: break  // gathered above
            case .register(let name, let inline):
                inlineBodies[name] = inline
                executor.register(name)
            case .process(let on):
                performExecutor(on ? executor.start() : executor.stop())
                if !on { performCaller(caller.executorStopped(localPeer, now: now)) }
            case .finished, .finishedRun: break
            }
        }
        if !calls.isEmpty { call(calls) }
        if !cancels.isEmpty { cancel(cancels) }
        if !outcomes.isEmpty { finish(outcomes) }
        scheduleFlush()
    }

    /// Cancels the waiting calls with these API tokens (one scan for all of them).
    private func cancel(_ tokens: Set<UInt64>) {
        for sequence in pending.sequences(where: { tokens.contains($0.token) }) {
            performCaller(caller.cancel(CallID(caller: localPeer, sequence: sequence), now: now))
        }
    }

    private func finish(_ outcomes: [(TaskID, CallOutcome)]) {
        latencies.ended(outcomes, now: now)
        bridge.ended(outcomes)
        performExecutor(executor.finished(outcomes))
    }

    /// Hands `requests` to the caller machine in one batch.
    private func call(_ requests: [CallRequest]) {
        var batch: [CallerMachine.Request] = []
        batch.reserveCapacity(requests.count)
        var anyDeadline = false
        for request in requests {
            let deadline = request.timeout.map { now &+ UInt64(Swift.max(0, $0.nanosecondsClamped)) }
            anyDeadline = anyDeadline || deadline != nil
            if let task = request.nested { performExecutor(executor.nestedCallMade(by: task)) }
            batch.append(CallerMachine.Request(function: request.function, arguments: request.arguments,
                                               memoize: request.memoize, deadline: deadline))
        }
        let (ids, actions) = caller.call(batch: batch, now: now, wallClock: anyDeadline ? wallClock : 0)
        // Every call is registered before the actions run: some complete at once (memo hits).
        for (id, request) in zip(ids, requests) {
            pending.append(id.sequence, request)
        }
        performCaller(actions)
    }

    // MARK: From the node

    func receive(_ type: MessageType, _ body: UnsafeRawBufferPointer, from peer: PeerID) -> WireError? {
        let message: RemoteCallMessage
        do throws(WireError) {
            message = try RemoteCallMessage.decode(type: type, body: body)
        } catch {
            return error
        }
        guard !isStopped else { return nil }
        switch message {
        case .results, .started, .credit: performCaller(caller.received(message, from: peer, now: now))
        case .cancel: performExecutor(executor.received(message, from: peer))
        case .direct(let items):
            // A function registered before this call was made may still be on its way to this
            // thread (registration is handed over like every API op): take those ops first, or
            // the call would be answered "unknown function".
            if bridge.hasOps { drain() }
            performExecutor(executor.direct(items, from: peer, wallClock: wallClock))
        }
        scheduleFlush()
        return nil
    }

    /// A peer event, as ``PeerEventRouting`` routes it to remote calls.
    func peerEvent(_ input: CallsPeerInput) {
        switch input {
        case .connected(let peer): peerConnected(peer)
        case .linkReplaced(let peer):
            peerDisconnected(peer)
            peerConnected(peer)
        case .disconnected(let peer): peerDisconnected(peer)
        case .joined(let peer): peerJoined(peer)
        case .died(let peer): peerDied(peer)
        case .left(let peer): peerLeft(peer)
        }
    }

    /// The link to `peer` went down or was replaced: direct calls sent on it are pushed again,
    /// credit on both sides is void.
    func peerDisconnected(_ peer: PeerID) {
        guard !isStopped else { return }
        directOut[peer] = nil
        performCaller(caller.peerDisconnected(peer, now: now))
        executor.peerDisconnected(peer)
        scheduleFlush()
    }

    /// A link to `peer` came up: it is offered credit for direct calls here.
    func peerConnected(_ peer: PeerID) {
        guard !isStopped else { return }
        executor.peerConnected(peer)
        scheduleFlush()
    }

    func peerDied(_ peer: PeerID) {
        guard !isStopped else { return }
        performCaller(caller.peerDied(peer, now: now))
        performExecutor(executor.peerDied(peer))
        scheduleFlush()
    }

    func peerLeft(_ peer: PeerID) {
        guard !isStopped else { return }
        performCaller(caller.peerLeft(peer, now: now))
        performExecutor(executor.peerLeft(peer))
        scheduleFlush()
    }

    func peerJoined(_ peer: PeerID) {
        guard !isStopped else { return }
        performCaller(caller.peerJoined(peer, now: now))
        performExecutor(executor.peerJoined(peer))
    }

    /// The node stops: every waiting call fails with `.nodeStopped`, running tasks are cancelled.
    func stop() {
        guard !isStopped else { return }
        isStopped = true
        callerTimer.cancel()
        for id in waiters.sizes.keys.sorted() { core.queues.withdraw(queueName, WaiterID(id)) }
        waiters = CallQueueWaiters()
        for sequence in pending.sequences(where: { _ in true }) {
            pending.remove(sequence)?.completion.resume(.failure(.nodeStopped))
        }
        for request in parked { request.completion.resume(.failure(.nodeStopped)) }
        parked = []
        for (_, (completion, _)) in resuming { completion.resume(.failure(.nodeStopped)) }
        resuming = [:]
        bridge.cancelAll()
        bridge.failQueued()
    }

    /// Counts for `/status` and tests.
    var counters: (caller: CallerCounters, executor: ExecutorCounters) { (caller.counters, executor.counters) }

    // MARK: Caller actions

    private func performCaller(_ actions: [CallerAction]) {
        callerDriver.perform(actions)
    }

    private func wakeStreams() {
        guard !streamResults.isEmpty else { return }
        let streams = streamResults
        streamResults.removeAll(keepingCapacity: true)
        for (stream, results) in streams { stream.deliver(results) }
    }

    private func handle(_ action: CallerAction) {
        switch action {
        case .push(let id, let item):
            core.queues.push(queueName, [item], wait: true, sink: { [unowned self] result in
                guard case .failure(let error) = result, !self.isStopped else { return }
                self.pushFailures[id.sequence] = error
                self.performCaller(self.caller.cancel(id, now: self.now))
            })
        case .removeFromQueue(let id):
            // Batched: one pass over the call queue per turn, however many calls were cancelled.
            // An item that moved on to another node is stopped by the cancel that answers its
            // executor's started notice.
            unwanted.insert(id)
            scheduleFlush()
        case .send(let message, let peer):
            send(message, to: peer)
        case .complete(let id, let result):
            complete(id, result)
        case .armTimer(let at):
            callerTimer.arm(at: at)
        case .capacityAvailable:
            let retry = parked
            parked = []
            if !retry.isEmpty { call(retry) }
        }
    }

    private func complete(_ id: CallID, _ result: Result<[UInt8], RemoteCallError>) {
        guard let request = pending.remove(id.sequence) else { return }
        var result = result
        if case .failure(.tooManyOutstandingCalls) = result {
            // The typed API waits for room instead of failing.
            parked.append(request)
            if let task = request.nested { executor.nestedCallParked(by: task) }
            return
        }
        if let failure = pushFailures.removeValue(forKey: id.sequence) {
            result = .failure(failure == .nodeStopped ? .nodeStopped : .invalidCall("the call queue refused the call: \(failure)"))
        }
        guard let task = request.nested else {
            if case .stream(let stream, let index, let token) = request.completion {
                if let last = streamResults.indices.last, streamResults[last].stream === stream {
                    streamResults[last].results.append((index, token, result))
                } else if let at = streamResults.firstIndex(where: { $0.stream === stream }) {
                    streamResults[at].results.append((index, token, result))
                } else {
                    streamResults.append((stream, [(index, token, result)]))
                }
            } else {
                request.completion.resume(result)
            }
            return
        }
        switch executor.nestedCallCompleted(by: task) {
        case .deliverNow:
            request.completion.resume(result)
        case .deliverOnResume(let actions):
            resuming[task] = (request.completion, result)
            performExecutor(actions)
        }
    }

    private func send(_ message: RemoteCallMessage, to peer: PeerID) {
        if peer == localPeer {
            switch message {
            case .results, .started, .credit: performCaller(caller.received(message, from: peer, now: now))
            case .cancel: performExecutor(executor.received(message, from: peer))
            case .direct(let items):
            // A function registered before this call was made may still be on its way to this
            // thread (registration is handed over like every API op): take those ops first, or
            // the call would be answered "unknown function".
            if bridge.hasOps { drain() }
            performExecutor(executor.direct(items, from: peer, wallClock: wallClock))
            }
            return
        }
        if case .direct(let items) = message {
            // Calls made in one turn (by many tasks) travel in one message.
            directOut[peer, default: []].append(contentsOf: items)
            scheduleFlush()
            return
        }
        // A lost result is recovered only through membership (a dead executor is retried) or
        // the caller's deadline: links are reliable while they last.
        if !core.send(message, to: peer) {
            core.logger.debug("remote calls: no link to \(peer.short); \(message.messageType) dropped")
        }
    }

    // MARK: Executor actions

    private func performExecutor(_ actions: [ExecutorAction]) {
        executorDriver.perform(actions)
    }

    private func handle(_ action: ExecutorAction) {
        switch action {
        case .setDemand(let count):
            demand = count
        case .run(let tasks):
            latencies.started(tasks, now: now)
            var offReactor: [CallTask] = []
            var outcomes: [(TaskID, CallOutcome)] = []
            for task in tasks {
                if let body = inlineBodies[task.function] {
                    outcomes.append((task.id, body(task.arguments)))
                } else {
                    offReactor.append(task)
                }
            }
            if !offReactor.isEmpty { bridge.run(offReactor) }
            if !outcomes.isEmpty {
                latencies.ended(outcomes, now: now)
                performExecutor(executor.finished(outcomes))  // after this action (the driver's rule)
            }
        case .resume(let tasks):
            for task in tasks {
                if let (completion, result) = resuming.removeValue(forKey: task) {
                    completion.resume(result)
                }
            }
        case .cancelTask(let task):
            bridge.cancel(task)
        case .send(let message, let peer):
            send(message, to: peer)
        case .discard(let error):
            core.logger.warning("remote calls: dropped a call item that names no caller: \(error)")
        }
    }

    /// Performs the plan of waiting pops on the call queue for the executor's free slots
    /// (``CallQueueWaiters``).
    private func adjustWaiter() {
        let plan = waiters.adjust(to: isStopped ? 0 : demand) { core.queues.makeWaiterID().rawValue }
        for id in plan.withdraw { core.queues.withdraw(queueName, WaiterID(id)) }
        if let first = plan.first { pop(WaiterID(first.id), first.size) }
        if let second = plan.second { pop(WaiterID(second.id), second.size) }
    }

    private func pop(_ id: WaiterID, _ size: Int) {
        core.queues.pop(queueName, max: size, waiter: id) { [unowned self] result in
            self.delivered(id, result)
        }
    }

    private func delivered(_ id: WaiterID, _ result: Result<ItemPayloads, QueueError>) {
        waiters.answered(id.rawValue)
        guard case .success(let items) = result, !isStopped else { return }
        let actions = executor.popped(Array(items), wallClock: wallClock)
        // The started notices go out now, before the queue can confirm these pops to their
        // owners on the same links (protocol.md §10): one of the two always protects a call.
        // Deliberately past the driver, even inside one of its actions.
        for action in executor.flush() { handle(action) }
        performExecutor(actions)
        scheduleFlush()
    }

    // MARK: Flush

    private func scheduleFlush() {
        guard !flushScheduled, !isStopped else { return }
        flushScheduled = true
        core.reactor.deferToEndOfTurn { [unowned self] in
            self.flushScheduled = false
            guard !self.isStopped else { return }
            self.sendDirect()
            self.removeUnwanted()
            self.performExecutor(self.executor.flush())
            self.publishCounters()
        }
    }

    private func removeUnwanted() {
        guard !unwanted.isEmpty else { return }
        let gone = unwanted
        unwanted.removeAll()
        core.queues.remove(queueName) { item in CallItem.header(of: item).map(gone.contains) ?? false }
    }

    private func sendDirect() {
        guard !directOut.isEmpty else { return }
        let batches = directOut
        directOut.removeAll(keepingCapacity: true)
        for (peer, items) in batches.sorted(by: { $0.key < $1.key }) {
            var start = 0
            while start < items.count {
                let end = RemoteCallMessage.directMessageEnd(items, from: start)
                if !core.send(RemoteCallMessage.direct(Array(items[start..<end])), to: peer) {
                    // Not sent: as if the link went down (its calls are pushed again, credit void).
                    core.logger.debug("remote calls: no link to \(peer.short); its direct calls are pushed again")
                    performCaller(caller.peerDisconnected(peer, now: now))
                    executor.peerDisconnected(peer)
                    break
                }
                start = end
            }
        }
    }

    /// How long executed calls took, per function (for the dashboard).
    private(set) var latencies = CallLatencies()

    /// Calls made here and not answered yet (for the dashboard).
    var callsInFlight: Int { pending.count + parked.count }

    private func publishCounters() {
        let callerCounters = caller.counters
        let executorCounters = executor.counters
        let duplicates = executorCounters.duplicates + callerCounters.ignoredResults
        let metrics = core.metrics
        metrics.callsMade += callerCounters.calls - published.calls
        metrics.callsExecuted += executorCounters.executed - published.executed
        metrics.retries += callerCounters.retries - published.retries
        metrics.duplicates += duplicates - published.duplicates
        published = (callerCounters.calls, executorCounters.executed, callerCounters.retries, duplicates)
    }
}
