import P2PQConnectionManager
import P2PQQueue
import P2PQRemoteCall
import P2PQWire

/// A remote call as the API makes it (``NodeMachine/call(_:now:wallClock:)``).
public struct NodeCallRequest: Sendable {
    public var function: String
    public var arguments: [UInt8]
    /// Share one execution among identical calls and cache the result.
    public var memoize: Bool
    /// Nanoseconds from the call (or from its retry, when it waited for room) to its deadline;
    /// nil for none.
    public var timeout: UInt64?
    /// The executing task this call is nested in: it gives up its slot while it waits.
    public var nested: TaskID?
    /// The shell's name for where the result goes (``NodeAction/completeCalls(_:)``).
    public var token: UInt64

    public init(function: String, arguments: [UInt8], memoize: Bool = false, timeout: UInt64? = nil,
                nested: TaskID? = nil, token: UInt64) {
        self.function = function
        self.arguments = arguments
        self.memoize = memoize
        self.timeout = timeout
        self.nested = nested
        self.token = token
    }
}

/// A call that ended: the shell's token for it (``NodeCallRequest/token``) and its result.
public struct NodeCallResult: Sendable, Equatable {
    public var token: UInt64
    public var result: Result<[UInt8], RemoteCallError>

    @inlinable public init(token: UInt64, result: Result<[UInt8], RemoteCallError>) {
        self.token = token
        self.result = result
    }
}

/// The remote-call part of a ``NodeMachine``: the caller and executor machines and the
/// decisions that tie them to the node (the call queue's pushes and waiting pops, calls parked
/// for the outstanding limit, nested calls' results held for their slot, direct calls packed
/// per turn).
///
/// Its fields and the calls' hot paths (a call, a results or credit message, the end-of-turn
/// flush) are `@usableFromInline`/`@inlinable`: the shell's module then specializes them for its
/// address type instead of running generic code per call. The rare paths stay out of line.
@usableFromInline
struct NodeCalls: Sendable {
    /// Whether a remote-call API is attached (until then every calls input is ignored).
    @usableFromInline var isAttached = false
    @usableFromInline var isStopped = false
    /// The node's queues are draining for a stop: no more pushes or pops on the call queue.
    var isDraining = false
    /// The call queue (a named queue of the machine).
    var queueName = ""
    @usableFromInline var caller: CallerMachine
    @usableFromInline var executor: ExecutorMachine
    /// Calls waiting for their result, by sequence: a window of plain records, no hashing and
    /// no reference counting per call.
    @usableFromInline var pending = SequenceTable<PendingCall>()
    /// The requests of the calls being made (``NodeMachine/makeCalls(_:into:now:)``) and the
    /// sequence of the first: a call the caller refuses for the outstanding limit, which it
    /// does only while it is made, is parked from here.
    @usableFromInline var making: [NodeCallRequest] = []
    @usableFromInline var makingFirst: UInt64 = 0
    /// Calls refused for the outstanding limit, made again on `.capacityAvailable` (the API
    /// waits for room rather than failing).
    @usableFromInline var parked: [NodeCallRequest] = []
    /// Call items the full call queue refused, in order, pushed again when it has room.
    var waitingPushes: [(id: CallID, item: [UInt8])] = []
    /// What a call whose item the call queue refused fails with, by sequence.
    @usableFromInline var pushFailures: [UInt64: RemoteCallError] = [:]
    /// A nested call's result, held until the executor gives its task a slot again.
    @usableFromInline var resuming: [TaskID: (token: UInt64, result: Result<[UInt8], RemoteCallError>)] = [:]
    /// The executor's free slots (its last `.setDemand`).
    @usableFromInline var demand = 0
    /// The waiting pops on the call queue that serve the demand.
    var waiters = CallQueueWaiters()
    /// The next waiter ID: the top bit set, so they never meet the shell's pops on the queue.
    var nextWaiter: UInt64 = 1 << 63
    /// Whether the demand changed or a waiting pop was answered since the pops were planned.
    @usableFromInline var demandChanged = false
    /// Whether items came for the waiting pops while they were planned.
    var deliveredWhileSettling = false
    /// Direct calls of this turn, by executor, as runs (consecutive runs merged): one message
    /// per run at its end, or, to a peer without ``WireProtocol/featureCallRuns``, as items.
    @usableFromInline var directOut: [PeerID: [CallRun]] = [:]
    /// Calls cancelled this turn whose items may still be in the local call queue.
    @usableFromInline var unwanted: Set<CallID> = []
    /// Whether ``NodeAction/flushCallsAtEndOfTurn`` is out and not yet answered.
    @usableFromInline var flushScheduled = false
    /// Wall clock minus monotonic clock, from the last input that carried both (the items'
    /// deadlines are wall-clock hints for executors on other hosts).
    @usableFromInline var wallOffset: UInt64 = 0

    init(localPeer: PeerID) {
        caller = CallerMachine(localPeer: localPeer)
        executor = ExecutorMachine(localPeer: localPeer)
    }

    static func isOurs(_ waiter: WaiterID) -> Bool { waiter.rawValue & (1 << 63) != 0 }
}

/// A call waiting for its result: where the result goes and the task the call is nested in.
@usableFromInline
struct PendingCall: Sendable {
    @usableFromInline var token: UInt64
    @usableFromInline var nested: TaskID?

    @inlinable init(_ request: NodeCallRequest) {
        token = request.token
        nested = request.nested
    }
}

extension NodeMachine {
    // MARK: Queries

    /// Whether remote calls are attached (``attachCalls(queue:caller:executor:now:)``).
    public var callsAttached: Bool { calls.isAttached }

    /// The caller's and executor's counters, once attached.
    @inlinable public var callCounters: (caller: CallerCounters, executor: ExecutorCounters)? {
        calls.isAttached ? (calls.caller.counters, calls.executor.counters) : nil
    }

    /// Calls made here and not answered yet (waiting or parked for room).
    @inlinable public var callsInFlight: Int { calls.pending.count + calls.parked.count }

    /// The caller machine (tests and status).
    public var caller: CallerMachine { calls.caller }

    /// The executor machine (tests and status).
    public var executor: ExecutorMachine { calls.executor }

    // MARK: Inputs from the API

    /// Attaches remote calls with their call queue `queue`: the executor offers credit to the
    /// peers linked now, the caller takes the credit they granted already. False when already
    /// attached or stopped.
    public mutating func attachCalls(queue: String, caller: CallerConfiguration, executor: ExecutorConfiguration,
                                     now: UInt64) -> (attached: Bool, actions: [Action]) {
        guard !calls.isAttached, !isStopped else { return (false, []) }
        var callerConfiguration = caller
        // Call IDs must not repeat across restarts of the same identity.
        callerConfiguration.firstSequence = Swift.max(caller.firstSequence, configuration.incarnation)
        calls.caller = CallerMachine(localPeer: localPeer, configuration: callerConfiguration)
        calls.executor = ExecutorMachine(configuration: executor, localPeer: localPeer)
        calls.queueName = queue
        calls.isAttached = true
        for peer in connections.linkedPeers { calls.executor.peerConnected(peer) }
        var actions: [Action] = []
        for (peer, slots) in earlyCredit.take() {
            applyCaller(calls.caller.received(.credit(UInt32(clamping: slots)), from: peer, now: now), into: &actions, now: now)
        }
        return (true, actions)
    }

    /// Makes these calls, in order, as one batch.
    @inlinable
    public mutating func call(_ requests: [NodeCallRequest], now: UInt64, wallClock: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else {
            return [.completeCalls(requests.map { NodeCallResult(token: $0.token, result: .failure(.nodeStopped)) })]
        }
        calls.wallOffset = wallClock &- now
        var actions: [Action] = []
        makeCalls(requests, into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// Makes one call (a single waiting task: no batch array).
    @inlinable
    public mutating func call(_ request: NodeCallRequest, now: UInt64, wallClock: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else { return [.completeCalls([NodeCallResult(token: request.token, result: .failure(.nodeStopped))])] }
        calls.wallOffset = wallClock &- now
        var actions: [Action] = []
        makeCall(request, into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// The calls the shell named with these tokens are cancelled by their tasks.
    public mutating func cancelCalls(_ tokens: Set<UInt64>, now: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else { return [] }
        var actions: [Action] = []
        // One scan for all of them: cancels are rare, calls many.
        for sequence in calls.pending.sequences(where: { tokens.contains($0.token) }) {
            applyCaller(calls.caller.cancel(CallID(caller: localPeer, sequence: sequence), now: now), into: &actions, now: now)
        }
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// Tasks of ``NodeAction/runTasks(_:)`` finished.
    @inlinable
    public mutating func callsFinished(_ outcomes: [(TaskID, CallOutcome)], now: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else { return [] }
        var actions: [Action] = []
        applyExecutor(calls.executor.finished(outcomes), into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// This node can execute `function` from now on.
    public mutating func registerCallFunction(_ function: String) {
        guard calls.isAttached else { return }
        calls.executor.register(function)
    }

    /// The executor starts (or stops) taking calls.
    public mutating func setCallProcessing(_ on: Bool, now: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else { return [] }
        var actions: [Action] = []
        applyExecutor(on ? calls.executor.start() : calls.executor.stop(), into: &actions, now: now)
        if !on { applyCaller(calls.caller.executorStopped(localPeer, now: now), into: &actions, now: now) }
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// The end of the reactor turn that ``NodeAction/flushCallsAtEndOfTurn`` asked for: the
    /// waiting pops on the call queue follow the executor's demand as the turn left it, the
    /// turn's direct calls go out, packed per executor (executors in ID order), the calls
    /// cancelled in the turn leave the local call queue in one pass, and the executor sends
    /// its credit, started notices and batched results. The shell may also call it mid-turn,
    /// to send a large inline run's first results before the rest run.
    @inlinable
    public mutating func flushCalls(now: UInt64, wallClock: UInt64) -> [Action] {
        calls.flushScheduled = false
        guard calls.isAttached, !calls.isStopped else { return [] }
        calls.wallOffset = wallClock &- now
        var actions: [Action] = []
        if calls.demandChanged { settleCallWaiters(into: &actions, now: now) }
        if !calls.directOut.isEmpty {
            let batches = calls.directOut
            calls.directOut.removeAll(keepingCapacity: true)
            for (peer, runs) in batches.sorted(by: { $0.key < $1.key }) {
                if features(of: peer) & WireProtocol.featureCallRuns != 0 {
                    for run in runs { actions.append(.sendCall(.directRun(run), to: peer)) }
                    continue
                }
                // A peer that does not know runs gets the calls as items, as few messages as fit.
                let items = runs.flatMap { $0.encodedItems() }
                var start = 0
                while start < items.count {
                    let end = RemoteCallMessage.directMessageEnd(items, from: start)
                    actions.append(.sendCall(.direct(Array(items[start..<end])), to: peer))
                    start = end
                }
            }
        }
        if !calls.unwanted.isEmpty { removeUnwantedCallItems(into: &actions, now: now) }
        applyExecutor(calls.executor.flush(), into: &actions, now: now)
        return actions
    }

    /// The calls cancelled in this turn leave the local call queue, in one pass. An item that
    /// moved on to another node is stopped by the cancel that answers its executor's started
    /// notice.
    @usableFromInline
    mutating func removeUnwantedCallItems(into actions: inout [Action], now: UInt64) {
        let gone = calls.unwanted
        calls.unwanted.removeAll()
        withQueue(calls.queueName, into: &actions, now: now) { queue -> (Int, [QueueAction]) in
            queue.remove(where: { CallItem.header(of: $0).map(gone.contains) ?? false }, now: now)
        }
    }

    /// The node stops: every waiting call fails with `.nodeStopped`, the waiting pops on the
    /// call queue are withdrawn, and the calls' timer ends.
    public mutating func stopCalls(now: UInt64) -> [Action] {
        guard calls.isAttached, !calls.isStopped else { return [] }
        calls.isStopped = true
        var actions: [Action] = [.cancelTimer(.calls)]
        for id in calls.waiters.sizes.keys.sorted() {
            withQueue(calls.queueName, into: &actions, now: now) { $0.cancelWait(WaiterID(id), now: now) }
        }
        calls.waiters = CallQueueWaiters()
        for sequence in calls.pending.sequences(where: { _ in true }) {
            if let call = calls.pending.remove(sequence) {
                completed(call.token, .failure(.nodeStopped), into: &actions)
            }
        }
        for request in calls.parked { completed(request.token, .failure(.nodeStopped), into: &actions) }
        calls.parked = []
        for (_, held) in calls.resuming.sorted(by: { $0.key < $1.key }) {
            completed(held.token, .failure(.nodeStopped), into: &actions)
        }
        calls.resuming = [:]
        calls.waitingPushes = []
        calls.directOut = [:]
        return actions
    }

    // MARK: Inputs from the links

    /// A remote-call message (`0x40–0x5F`) arrived from `peer`. Before calls are attached only
    /// credit is kept (for the caller to come); anything else is ignored. `wallClock` is read
    /// for direct calls (their deadline hints) only: 0 for other messages.
    ///
    /// Credit from a peer this node keeps no link to is ignored: it came on a link being closed
    /// (one this node refused just after its hello), and direct calls sent on the strength of it
    /// could not be delivered. Each would count as a lost executor, and a call retried onto a
    /// few such peers in a row ran out of retries with no fault anywhere.
    @inlinable
    public mutating func received(_ message: RemoteCallMessage, from peer: PeerID, now: UInt64, wallClock: UInt64) -> [Action] {
        if case .credit = message, connections.link(to: peer) == nil { return [] }
        guard calls.isAttached else {
            if case .credit(let slots) = message { earlyCredit.granted(slots, by: peer) }
            return []
        }
        guard !calls.isStopped else { return [] }
        if wallClock != 0 { calls.wallOffset = wallClock &- now }
        var actions: [Action] = []
        callMessage(message, from: peer, into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
        return actions
    }

    /// A remote-call message to `peer` could not be sent (no ready link). Direct calls: as if
    /// the link went down (they are pushed again, credit on both sides void). Anything else is
    /// recovered through membership (a dead executor is retried) or the caller's deadline.
    public mutating func callMessageUndeliverable(_ message: RemoteCallMessage, to peer: PeerID, now: UInt64) -> [Action] {
        switch message {
        case .direct, .directRun: break
        case .results, .started, .cancel, .credit, .resultRun: return []
        }
        guard calls.isAttached, !calls.isStopped else { return [] }
        var actions: [Action] = []
        applyCaller(calls.caller.peerDisconnected(peer, now: now), into: &actions, now: now)
        calls.executor.peerDisconnected(peer)
        scheduleCallsFlush(into: &actions)
        return actions
    }

    // MARK: Routing

    /// A peer event as ``PeerEventRouting`` routes it to the calls.
    mutating func callsHeard(_ input: CallsPeerInput, into actions: inout [Action], now: UInt64) {
        guard calls.isAttached else {
            switch input {
            case .disconnected(let peer), .linkReplaced(let peer): earlyCredit.linkLost(peer)
            case .connected, .joined, .died, .left: break
            }
            return
        }
        guard !calls.isStopped else { return }
        switch input {
        case .connected(let peer):
            calls.executor.peerConnected(peer)
        case .linkReplaced(let peer):
            callsDisconnected(peer, into: &actions, now: now)
            calls.executor.peerConnected(peer)
        case .disconnected(let peer):
            callsDisconnected(peer, into: &actions, now: now)
        case .joined(let peer):
            applyCaller(calls.caller.peerJoined(peer, now: now), into: &actions, now: now)
            applyExecutor(calls.executor.peerJoined(peer), into: &actions, now: now)
            return
        case .died(let peer):
            applyCaller(calls.caller.peerDied(peer, now: now), into: &actions, now: now)
            applyExecutor(calls.executor.peerDied(peer), into: &actions, now: now)
        case .left(let peer):
            applyCaller(calls.caller.peerLeft(peer, now: now), into: &actions, now: now)
            applyExecutor(calls.executor.peerLeft(peer), into: &actions, now: now)
        }
        scheduleCallsFlush(into: &actions)
    }

    /// The link to `peer` went down or was replaced: direct calls sent on it are pushed again,
    /// credit on both sides is void.
    private mutating func callsDisconnected(_ peer: PeerID, into actions: inout [Action], now: UInt64) {
        calls.directOut[peer] = nil
        applyCaller(calls.caller.peerDisconnected(peer, now: now), into: &actions, now: now)
        calls.executor.peerDisconnected(peer)
    }

    mutating func callerTicked(into actions: inout [Action], now: UInt64) {
        guard calls.isAttached, !calls.isStopped else { return }
        applyCaller(calls.caller.tick(now: now), into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
    }

    // MARK: The call queue

    /// The call queue's actions: pops answered for the executor stay here (the items go to
    /// the executor), room for waiting call items is used here; the rest are the node's.
    mutating func applyCallQueue(_ queueActions: consuming [QueueAction], into actions: inout [Action], now: UInt64) {
        let name = calls.queueName
        for action in queueActions {
            switch action {
            case .deliver(let waiter, let items) where NodeCalls.isOurs(waiter):
                callItemsPopped(waiter, items, into: &actions, now: now)
            case .fail(let waiter, _) where NodeCalls.isOurs(waiter):
                calls.waiters.answered(waiter.rawValue)
                calls.demandChanged = true
                scheduleCallsFlush(into: &actions)
            case .spaceAvailable:
                actions.append(.queue(name, .spaceAvailable))
                pushWaitingCallItems(into: &actions, now: now)
            case .deadLetter(let token, let payload, let target):
                deadLetter(token, payload, from: name, into: target, actions: &actions, now: now)
            default:
                actions.append(.queue(name, action))
            }
        }
    }

    /// Items popped for the executor's waiting pop `waiter`.
    private mutating func callItemsPopped(_ waiter: WaiterID, _ items: ItemPayloads, into actions: inout [Action], now: UInt64) {
        calls.waiters.answered(waiter.rawValue)
        calls.demandChanged = true
        guard !calls.isStopped else { return }
        calls.deliveredWhileSettling = true
        let popped = calls.executor.popped(Array(items), wallClock: now &+ calls.wallOffset)
        // The started notices go out first, before the queue can confirm these pops to their
        // owners on the same links (protocol.md §10): one of the two always protects a call.
        applyExecutor(calls.executor.flush(), into: &actions, now: now)
        applyExecutor(popped, into: &actions, now: now)
        scheduleCallsFlush(into: &actions)
    }

    /// Keeps the waiting pops on the call queue at the executor's demand
    /// (``CallQueueWaiters``); items popped at once go to the executor, whose new demand is
    /// planned again, until the plan holds.
    @usableFromInline
    mutating func settleCallWaiters(into actions: inout [Action], now: UInt64) {
        guard calls.isAttached else { return }
        repeat {
            calls.deliveredWhileSettling = false
            calls.demandChanged = false
            var next = calls.nextWaiter
            let plan = calls.waiters.adjust(to: calls.isStopped || calls.isDraining ? 0 : calls.demand) {
                defer { next &+= 1 }
                return next
            }
            calls.nextWaiter = next
            for id in plan.withdraw {
                withQueue(calls.queueName, into: &actions, now: now) { $0.cancelWait(WaiterID(id), now: now) }
            }
            if let first = plan.first { popCallItems(WaiterID(first.id), first.size, into: &actions, now: now) }
            if let second = plan.second { popCallItems(WaiterID(second.id), second.size, into: &actions, now: now) }
        } while calls.deliveredWhileSettling
    }

    /// One waiting pop on the call queue; items there now go to the executor ahead of the
    /// queue's own actions (its confirmations come after the started notices).
    private mutating func popCallItems(_ waiter: WaiterID, _ size: Int, into actions: inout [Action], now: UInt64) {
        let name = calls.queueName
        guard ensureQueue(name, into: &actions, now: now),
              let (items, queueActions) = queues[name]?.update({ $0.pop(max: size, waiter: waiter, now: now) }) else {
            calls.waiters.answered(waiter.rawValue)
            calls.demandChanged = true
            return
        }
        if !items.isEmpty { callItemsPopped(waiter, items, into: &actions, now: now) }
        applyCallQueue(queueActions, into: &actions, now: now)
    }

    /// Pushes a call's item on the call queue, behind the items already waiting for room.
    @usableFromInline
    mutating func pushCallItem(_ id: CallID, _ item: [UInt8], into actions: inout [Action], now: UInt64) {
        guard calls.waitingPushes.isEmpty else {
            calls.waitingPushes.append((id, item))
            return
        }
        if !tryPushCallItem(id, item, into: &actions, now: now) { calls.waitingPushes.append((id, item)) }
    }

    /// The waiting call items, in order, until one does not fit.
    private mutating func pushWaitingCallItems(into actions: inout [Action], now: UInt64) {
        while let (id, item) = calls.waitingPushes.first {
            guard tryPushCallItem(id, item, into: &actions, now: now) else { return }
            if !calls.waitingPushes.isEmpty { calls.waitingPushes.removeFirst() }
        }
    }

    /// Pushes one call item; false when the queue is full (it waits for room). A refusal for
    /// any other reason fails the call.
    private mutating func tryPushCallItem(_ id: CallID, _ item: [UInt8], into actions: inout [Action], now: UInt64) -> Bool {
        let name = calls.queueName
        let outcome: PushOutcome?
        if !calls.isDraining, ensureQueue(name, into: &actions, now: now) {
            outcome = withQueue(name, into: &actions, now: now) { $0.push([item], now: now) }
        } else {
            outcome = nil
        }
        switch outcome {
        case .accepted?: return true
        case .full?: return false
        case let refused:
            let reason = refused.map { "\($0)" } ?? "too many queues"
            calls.pushFailures[id.sequence] = calls.isDraining ? .nodeStopped
                : .invalidCall("the call queue refused the call: \(reason)")
            applyCaller(calls.caller.cancel(id, now: now), into: &actions, now: now)
            return true
        }
    }

    /// The node's queues begin draining for a stop: the executor's waiting pops are withdrawn
    /// and call items are pushed no more (their calls fail with `.nodeStopped`).
    mutating func callsDraining(into actions: inout [Action], now: UInt64) {
        guard calls.isAttached, !calls.isStopped, !calls.isDraining else { return }
        calls.isDraining = true
        for id in calls.waiters.sizes.keys.sorted() {
            withQueue(calls.queueName, into: &actions, now: now) { $0.cancelWait(WaiterID(id), now: now) }
        }
        calls.waiters = CallQueueWaiters()
        let waiting = calls.waitingPushes
        calls.waitingPushes = []
        for (id, _) in waiting {
            calls.pushFailures[id.sequence] = .nodeStopped
            applyCaller(calls.caller.cancel(id, now: now), into: &actions, now: now)
        }
    }

    // MARK: The machines' actions

    /// The caller's actions, as the node's. A run of completions (a results message) becomes
    /// one list, gathered apart and added to the actions when the run ends: per result an
    /// append, not a node action taken apart and put back.
    @inlinable
    mutating func applyCaller(_ callerActions: [CallerAction], into actions: inout [Action], now: UInt64) {
        var ended: [NodeCallResult] = []
        for action in callerActions {
            if case .complete(let id, let result) = action {
                completeCall(id, result, ending: &ended, into: &actions, now: now)
                continue
            }
            if !ended.isEmpty { completed(&ended, into: &actions) }
            switch action {
            case .push(let id, let item):
                pushCallItem(id, item, into: &actions, now: now)
            case .removeFromQueue(let id):
                // Batched: one pass over the call queue per turn, however many were cancelled.
                calls.unwanted.insert(id)
                scheduleCallsFlush(into: &actions)
            case .send(let message, let peer):
                sendCall(message, to: peer, into: &actions, now: now)
            case .complete:
                break  // gathered above
            case .armTimer(let at):
                actions.append(.armTimer(.calls, at: at))
            case .capacityAvailable:
                let retry = calls.parked
                calls.parked = []
                if !retry.isEmpty { makeCalls(retry, into: &actions, now: now) }
            }
        }
        if !ended.isEmpty { completed(&ended, into: &actions) }
    }

    /// The executor's actions, as the node's. A new demand is met at the end of the turn
    /// (``flushCalls(now:wallClock:)``): slots taken and given back within one turn, as by
    /// calls run inline, then cost no pops withdrawn and opened again on the call queue.
    @inlinable
    mutating func applyExecutor(_ executorActions: [ExecutorAction], into actions: inout [Action], now: UInt64) {
        for action in executorActions {
            switch action {
            case .setDemand(let count):
                calls.demand = count
                calls.demandChanged = true
            case .run(let tasks):
                actions.append(.runTasks(tasks))
            case .resume(let tasks):
                // A resumed task's slot is back: the result it waits for is handed over now.
                for task in tasks {
                    if let held = calls.resuming.removeValue(forKey: task) {
                        completed(held.token, held.result, into: &actions)
                    }
                }
            case .cancelTask(let task):
                actions.append(.cancelTask(task))
            case .send(let message, let peer):
                sendCall(message, to: peer, into: &actions, now: now)
            case .discard(let error):
                actions.append(.callItemDiscarded(error))
            }
        }
        if calls.demandChanged { scheduleCallsFlush(into: &actions) }
    }

    /// Hands `requests` to the caller in one batch; a nested call frees its task's slot first.
    @inlinable
    mutating func makeCalls(_ requests: [NodeCallRequest], into actions: inout [Action], now: UInt64) {
        if requests.count == 1 { return makeCall(requests[0], into: &actions, now: now) }
        var batch: [CallerMachine.Request] = []
        batch.reserveCapacity(requests.count)
        var anyDeadline = false
        for request in requests {
            let deadline = request.timeout.map { now &+ $0 }
            anyDeadline = anyDeadline || deadline != nil
            if let task = request.nested { applyExecutor(calls.executor.nestedCallMade(by: task), into: &actions, now: now) }
            batch.append(CallerMachine.Request(function: request.function, arguments: request.arguments,
                                               memoize: request.memoize, deadline: deadline))
        }
        let (ids, callerActions) = calls.caller.call(batch: batch, now: now,
                                                     wallClock: anyDeadline ? now &+ calls.wallOffset : 0)
        // Every call is registered before the actions run: some complete at once (memo hits).
        for (id, request) in zip(ids, requests) { calls.pending.append(id.sequence, PendingCall(request)) }
        let outer = (calls.making, calls.makingFirst)  // calls made again on room, inside these actions
        calls.making = requests
        calls.makingFirst = ids.first?.sequence ?? 0
        applyCaller(callerActions, into: &actions, now: now)
        (calls.making, calls.makingFirst) = outer
    }

    /// One call (one task waiting, as in a latency run): no batch array.
    @inlinable
    mutating func makeCall(_ request: NodeCallRequest, into actions: inout [Action], now: UInt64) {
        let deadline = request.timeout.map { now &+ $0 }
        if let task = request.nested { applyExecutor(calls.executor.nestedCallMade(by: task), into: &actions, now: now) }
        let (id, callerActions) = calls.caller.call(function: request.function, arguments: request.arguments,
                                                    memoize: request.memoize, deadline: deadline, now: now,
                                                    wallClock: deadline != nil ? now &+ calls.wallOffset : 0)
        calls.pending.append(id.sequence, PendingCall(request))
        let ended = callerActions.contains { if case .complete = $0 { true } else { false } }
        guard ended else {
            // The common case, a call sent or queued: no request to keep at hand.
            return applyCaller(callerActions, into: &actions, now: now)
        }
        let outer = (calls.making, calls.makingFirst)
        calls.making = [request]
        calls.makingFirst = id.sequence
        applyCaller(callerActions, into: &actions, now: now)
        (calls.making, calls.makingFirst) = outer
    }

    /// A call ended: parked when refused for the outstanding limit, its result held when its
    /// nested task has no slot yet, else added to `ended` (which goes into the actions, in
    /// order, before any action this adds).
    @inlinable
    mutating func completeCall(_ id: CallID, _ result: Result<[UInt8], RemoteCallError>, ending ended: inout [NodeCallResult],
                               into actions: inout [Action], now: UInt64) {
        guard let call = calls.pending.remove(id.sequence) else { return }
        var result = result
        if case .failure(.tooManyOutstandingCalls) = result {
            // The API waits for room instead of failing. The caller refuses a call only while
            // it is made, so its request is at hand.
            let index = id.sequence &- calls.makingFirst
            if index < UInt64(calls.making.count) {
                calls.parked.append(calls.making[Int(index)])
                if let task = call.nested { calls.executor.nestedCallParked(by: task) }
                return
            }
        }
        if !calls.pushFailures.isEmpty, let failure = calls.pushFailures.removeValue(forKey: id.sequence) {
            result = .failure(failure)
        }
        guard let task = call.nested else {
            ended.append(NodeCallResult(token: call.token, result: result))
            return
        }
        switch calls.executor.nestedCallCompleted(by: task) {
        case .deliverNow:
            ended.append(NodeCallResult(token: call.token, result: result))
        case .deliverOnResume(let executorActions):
            calls.resuming[task] = (call.token, result)
            if !ended.isEmpty { completed(&ended, into: &actions) }
            applyExecutor(executorActions, into: &actions, now: now)
        }
    }

    /// Calls that ended (`ended`, emptied): added to the list of the last action when that is
    /// one, else as a new action.
    @inlinable
    func completed(_ ended: inout [NodeCallResult], into actions: inout [Action]) {
        guard case .completeCalls(var list)? = actions.last else {
            actions.append(.completeCalls(ended))
            ended = []
            return
        }
        // The slot lets go of the list first, so it grows in place instead of being copied.
        actions[actions.count - 1] = .flushCallsAtEndOfTurn
        list.append(contentsOf: ended)
        actions[actions.count - 1] = .completeCalls(list)
        ended.removeAll(keepingCapacity: true)
    }

    /// The call named `token` ended, outside a run of results (the node stops, a nested call's
    /// task resumes): as ``completed(_:into:)`` for one.
    @inlinable
    func completed(_ token: UInt64, _ result: Result<[UInt8], RemoteCallError>, into actions: inout [Action]) {
        var ended = [NodeCallResult(token: token, result: result)]
        completed(&ended, into: &actions)
    }

    /// A message of the caller or executor to `peer`: one to this node goes to its own
    /// machines at once; direct calls wait for the end of the turn (``flushCalls(now:wallClock:)``).
    @inlinable
    mutating func sendCall(_ message: RemoteCallMessage, to peer: PeerID, into actions: inout [Action], now: UInt64) {
        if peer == localPeer {
            callMessage(message, from: peer, into: &actions, now: now)
            return
        }
        if case .directRun(let run) = message {
            // Calls made in one turn (by many tasks) travel together, as few runs as they make.
            calls.directOut[peer, default: []].appendMerging(run)
            scheduleCallsFlush(into: &actions)
            return
        }
        if case .results(let entries) = message, entries.count >= 2,
           features(of: peer) & WireProtocol.featureResultRuns != 0 {
            // Results of consecutive calls go back as runs, the rest as entries.
            let (runs, singles) = ResultRun.split(entries)
            for run in runs { actions.append(.sendCall(.resultRun(run), to: peer)) }
            if !singles.isEmpty { actions.append(.sendCall(.results(singles), to: peer)) }
            return
        }
        actions.append(.sendCall(message, to: peer))
    }

    @inlinable
    mutating func callMessage(_ message: RemoteCallMessage, from peer: PeerID, into actions: inout [Action], now: UInt64) {
        switch message {
        case .results, .started, .credit, .resultRun:
            applyCaller(calls.caller.received(message, from: peer, now: now), into: &actions, now: now)
        case .cancel:
            applyExecutor(calls.executor.received(message, from: peer), into: &actions, now: now)
        case .direct(let items):
            applyExecutor(calls.executor.direct(items, from: peer, wallClock: now &+ calls.wallOffset), into: &actions, now: now)
        case .directRun(let run):
            applyExecutor(calls.executor.directRun(run, from: peer, wallClock: now &+ calls.wallOffset), into: &actions, now: now)
        }
    }

    /// Asks the shell for one ``flushCalls(now:wallClock:)`` at the end of the turn.
    @inlinable
    mutating func scheduleCallsFlush(into actions: inout [Action]) {
        guard !calls.flushScheduled, !calls.isStopped else { return }
        calls.flushScheduled = true
        actions.append(.flushCallsAtEndOfTurn)
    }
}
