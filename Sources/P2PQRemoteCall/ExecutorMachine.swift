import P2PQWire

/// The knobs of an ``ExecutorMachine``.
public struct ExecutorConfiguration: Hashable, Sendable {
    /// Calls running at once on this node (holding a slot); never exceeded.
    public var maxConcurrentCalls: Int
    /// Entries of the executor's memo cache (0 disables it).
    public var memoCacheEntries: Int
    /// Bytes (keys and results) of the executor's memo cache.
    public var memoCacheBytes: Int
    /// Largest arguments accepted in a call item.
    public var maxArgumentSize: Int
    /// Largest body of a results message; a result that cannot fit alone is replaced by an
    /// error. Keep it within the peers' frame limit.
    public var maxMessageBodySize: Int
    /// An item is skipped as expired only when the wall clock is past its deadline by more
    /// than this, to absorb clock skew between hosts (the caller times out by its own clock).
    public var deadlineGrace: UInt64
    /// Cancels remembered for calls not seen yet (their item may still be on the way).
    public var rememberedCancels: Int
    /// Callers remembered as dead (their calls are dropped).
    public var rememberedDeadCallers: Int
    /// Whether free slots are offered to callers as credit for direct calls
    /// (``RemoteCallMessage/credit(_:)``), so their calls come in one hop instead of through
    /// the queue's balancing. Off, every call comes through the queue.
    public var grantsCredit: Bool
    /// Callers credited at once: the most recent ones, and linked nodes that have not called
    /// yet while there is room.
    public var maxCreditedCallers: Int

    public init(
        maxConcurrentCalls: Int = 1,
        memoCacheEntries: Int = 1024,
        memoCacheBytes: Int = 64 << 20,
        maxArgumentSize: Int = (1 << 20) - 4096,
        maxMessageBodySize: Int = WireProtocol.defaultMaxFrameSize - 1,
        deadlineGrace: UInt64 = 1_000_000_000,
        rememberedCancels: Int = 4096,
        rememberedDeadCallers: Int = 4096,
        grantsCredit: Bool = true,
        maxCreditedCallers: Int = 64
    ) {
        self.maxConcurrentCalls = maxConcurrentCalls
        self.memoCacheEntries = memoCacheEntries
        self.memoCacheBytes = memoCacheBytes
        self.maxArgumentSize = maxArgumentSize
        self.maxMessageBodySize = maxMessageBodySize
        self.deadlineGrace = deadlineGrace
        self.rememberedCancels = rememberedCancels
        self.rememberedDeadCallers = rememberedDeadCallers
        self.grantsCredit = grantsCredit
        self.maxCreditedCallers = maxCreditedCallers
    }
}

/// An execution on this node, named by the executor; never reused.
public struct TaskID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(_ rawValue: UInt64) {
        self.rawValue = rawValue
    }

    public static func < (lhs: TaskID, rhs: TaskID) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "task \(rawValue)" }
}

/// A call the shell must run: the registered function `function` on `arguments`.
public struct CallTask: Sendable, Equatable {
    public var id: TaskID
    /// The call whose item started the task (more callers may share its result).
    public var call: CallID
    public var function: String
    public var arguments: [UInt8]

    public init(id: TaskID, call: CallID, function: String, arguments: [UInt8]) {
        self.id = id
        self.call = call
        self.function = function
        self.arguments = arguments
    }
}

/// What the shell must do after an input to ``ExecutorMachine``, in order.
public enum ExecutorAction: Sendable, Equatable {
    /// Keep this many items requested from the call queue (pop waiters for that many items,
    /// fewer withdrawn): the free slots. A level, not an increment.
    case setDemand(Int)
    /// Run these tasks off the reactor, one batch per input. Each holds a slot until
    /// ``ExecutorMachine/finished(_:outcome:)`` or ``ExecutorMachine/suspend(_:)``.
    case run([CallTask])
    /// These suspended tasks have their slot back and may continue.
    case resume([TaskID])
    /// Nobody waits for this task any more: cancel it. Its slot stays taken until it reports
    /// ``ExecutorMachine/finished(_:outcome:)``.
    case cancelTask(TaskID)
    /// Send this message to the peer (a caller). A message to the node itself goes to its own
    /// ``CallerMachine``.
    case send(RemoteCallMessage, to: PeerID)
    /// An item too broken to name its caller; log it.
    case discard(WireError)
}

/// Counters of an ``ExecutorMachine``, for status and tests.
/// When a task that made calls of its own gets a call's result
/// (``ExecutorMachine/nestedCallCompleted(by:)``).
public enum NestedCallCompletion: Sendable, Equatable {
    /// Hand the result over now: the task still awaits other calls.
    case deliverNow
    /// Hold the result until a `.resume` names the task; perform these actions.
    case deliverOnResume([ExecutorAction])
}

public struct ExecutorCounters: Hashable, Sendable {
    /// Tasks handed to the shell to run.
    public var executed = 0
    /// Items answered from the executor's memo cache.
    public var memoHits = 0
    /// Items that joined an identical memoized task running here.
    public var coalesced = 0
    /// Items of a call already running here (a re-delivery or retry).
    public var duplicates = 0
    /// Items dropped: caller dead, call cancelled, or deadline long past.
    public var droppedDeadCaller = 0
    public var droppedCancelled = 0
    public var droppedExpired = 0
    /// Items answered unknown function or malformed, or discarded.
    public var unknownFunction = 0
    public var malformed = 0
    /// Items that came directly from their caller, on credit.
    public var direct = 0
    /// Credit granted to callers, in calls.
    public var creditGranted = 0
    /// Highest number of slots held at once.
    public var peakSlotsInUse = 0

    public init() {}
}

/// The executor side of remote calls on one node, as a plain value: decides what to do with
/// each popped call item, counts slots so `maxConcurrentCalls` holds exactly, lets nested calls
/// give up their slot while they wait, keeps the executor's memo cache, and batches results
/// and started notices per caller.
///
/// ## Slots and nested calls
/// A task holds one of ``ExecutorConfiguration/maxConcurrentCalls`` slots while it runs. A
/// task about to await another remote call reports ``suspend(_:)`` and gives its slot up; when
/// the awaited call is done it reports ``requestResume(_:)`` and continues only after a
/// `.resume`. Waiting resumers get freed slots before new items, and free slots are offered to
/// the call queue (`.setDemand`), so a node whose tasks all wait keeps executing other calls:
/// plain recursion never deadlocks, even with one slot per node.
///
/// ## Credit for direct calls
/// With ``ExecutorConfiguration/grantsCredit``, callers are topped up, at every flush while
/// this node processes, to as much credit as there are free slots; they then send calls
/// straight here (``direct(_:from:wallClock:)``). Credited (up to
/// ``ExecutorConfiguration/maxCreditedCallers``): this node itself, every caller whose call
/// ran here recently, and every linked node (``peerConnected(_:)``) while there is room, so
/// an idle executor is offered to callers before their first call and a burst of calls
/// spreads over all executors instead of going to the first that ran one. Each caller may
/// hold credit for the same slots, so direct calls can exceed the free slots; the excess
/// waits here in order (no slot is ever overcommitted). Credit of a caller whose link went
/// down is forgotten on both sides.
///
/// ## Inputs
/// ``start()``/``stop()``; ``popped(_:wallClock:)`` for items the queue delivered;
/// ``direct(_:from:wallClock:)`` and ``directRun(_:from:wallClock:)`` for calls a caller sent
/// on credit;
/// ``finished(_:outcome:)`` (or ``finished(_:)`` for a batch), ``suspend(_:)``,
/// ``requestResume(_:)`` from running tasks;
/// ``received(_:from:)`` for cancels; ``peerDied(_:)``/``peerLeft(_:)``/``peerJoined(_:)``
/// from membership; ``flush()`` once per reactor turn to send the batched notices.
public struct ExecutorMachine: Sendable {
    public typealias Action = ExecutorAction

    public let configuration: ExecutorConfiguration
    public private(set) var counters = ExecutorCounters()
    /// Whether the node executes calls (``start()`` was called).
    public private(set) var isProcessing = false
    /// Slots taken by running tasks (suspended ones excluded).
    public private(set) var slotsInUse = 0

    private enum TaskState: Sendable, Equatable {
        case holding, suspended, awaitingSlot
    }

    private struct Task: Sendable {
        var call: CallID
        var memoKey: MemoKey?
        /// Whether the task's own call still wants the result.
        var ownSubscribed = true
        /// Identical memoized calls that joined the task; empty (unallocated) for most.
        var joined: [CallID] = []

        var hasSubscribers: Bool { ownSubscribed || !joined.isEmpty }
        var state: TaskState
        var cancelled = false
    }

    private var functions: Set<String> = []
    /// The function name of the last item decoded, reused for the next ones of the same name.
    private var functionNames = CallItem.FunctionNames()
    private var lastRegistered: String?
    /// By task ID, which this machine hands out in order: a window, no hashing per call.
    private var tasks = SequenceTable<Task>()
    /// Which task each call held here runs in, per caller by sequence: no hashing per call.
    private var calls = CallIndex()
    /// Calls in the books (for tests of the memory bound).
    var trackedCalls: Int { calls.count }
    /// Callers with books kept (for tests of the memory bound).
    var trackedCallers: Int { calls.callers }
    private var taskByMemo: [MemoKey: TaskID] = [:]
    private var nextTask: UInt64 = 1
    private var memo: LRUCache<MemoKey, [UInt8]>
    /// Items delivered while no slot was free (only if the shell overshoots its demand).
    private var backlog = FIFO<Backlogged>()

    private struct Backlogged: Sendable {
        var item: CallItem
        /// Came on credit: no started notice.
        var direct: Bool
    }
    /// Backlogged calls whose caller was already sent a started notice.
    private var backlogNotified: Set<CallID> = []
    private var resumers = FIFO<TaskID>()
    private var cancelled: BoundedSet<CallID>
    private var deadCallers: BoundedSet<PeerID>
    private var outboxes = Outboxes()
    private var demand = 0
    /// This node: credited like any caller, so its own calls spread over the local executor too.
    private let localPeer: PeerID?
    /// Callers to credit, least recent first (linked nodes that have not called yet first).
    private var creditedCallers: [PeerID] = []
    /// Credit each of them still holds, as far as this node knows.
    private var granted: [PeerID: Int] = [:]
    /// Calls outstanding per task that made calls of its own (`async let` makes several).
    private var nestedCalls: [TaskID: Int] = [:]


    /// An executor on node `localPeer` (needed for direct calls: a node does not credit itself).
    public init(configuration: ExecutorConfiguration = ExecutorConfiguration(), localPeer: PeerID? = nil) {
        self.localPeer = localPeer
        precondition(configuration.maxConcurrentCalls > 0, "maxConcurrentCalls must be positive")
        precondition(configuration.maxMessageBodySize >= 64, "maxMessageBodySize too small")
        self.configuration = configuration
        self.memo = LRUCache(maxEntries: configuration.memoCacheEntries, maxBytes: configuration.memoCacheBytes)
        self.cancelled = BoundedSet(capacity: configuration.rememberedCancels)
        self.deadCallers = BoundedSet(capacity: configuration.rememberedDeadCallers)
    }

    // MARK: Registration and queries

    /// Makes `function` callable here. Items naming other functions are answered
    /// ``CallOutcome/unknownFunction``.
    public mutating func register(_ function: String) {
        functions.insert(function)
    }

    /// Removes `function`; running tasks of it finish normally.
    public mutating func unregister(_ function: String) {
        functions.remove(function)
        if lastRegistered == function { lastRegistered = nil }
    }

    /// Whether `function` is registered.
    public func isRegistered(_ function: String) -> Bool { functions.contains(function) }

    /// Items the shell may take from the call queue now (the last `.setDemand`).
    public var freeSlots: Int { demand }
    /// Tasks alive (running, suspended or waiting for a slot).
    public var taskCount: Int { tasks.count }
    /// Suspended tasks waiting for a slot to resume.
    public var waitingResumers: Int { resumers.count }
    /// Items waiting for a slot.
    public var backlogCount: Int { backlog.count }
    /// Entries in the memo cache.
    public var memoCacheCount: Int { memo.count }

    // MARK: Inputs

    /// Starts executing: offers every free slot to the call queue, and as credit to callers
    /// at the next ``flush()``.
    public mutating func start() -> [Action] {
        isProcessing = true
        if let localPeer { offerCredit(to: localPeer) }
        var actions: [Action] = []
        fill(&actions)
        return actions
    }

    /// Stops taking new items (running tasks go on; their results are still sent). This
    /// node's own caller forgets the credit it held (``CallerMachine/executorStopped(_:now:)``).
    public mutating func stop() -> [Action] {
        isProcessing = false
        if let localPeer { forgetCredit(localPeer) }
        var actions: [Action] = []
        fill(&actions)
        return actions
    }

    /// The call queue delivered these items.
    ///
    /// - Parameters:
    ///   - items: encoded call items, in the order the queue delivered them.
    ///   - wallClock: wall-clock Unix time in ns, to skip items whose deadline passed.
    public mutating func popped(_ items: [[UInt8]], wallClock: UInt64) -> [Action] {
        intake(items.map(ItemPayload.init), from: nil, wallClock: wallClock)
    }

    /// As ``popped(_:wallClock:)-([[UInt8]],_)``, for items as the queue hands them over.
    public mutating func popped(_ items: [ItemPayload], wallClock: UInt64) -> [Action] {
        intake(items, from: nil, wallClock: wallClock)
    }

    /// `peer` sent these call items directly, on the credit this node granted it.
    ///
    /// An item must name `peer` as its caller (else it is discarded as malformed). Items run
    /// as slots allow, in order; they get no started notice (the caller already knows where
    /// they are).
    public mutating func direct(_ items: [[UInt8]], from peer: PeerID, wallClock: UInt64) -> [Action] {
        if let held = granted[peer] { granted[peer] = Swift.max(0, held - items.count) }
        return intake(items.map(ItemPayload.init), from: peer, wallClock: wallClock)
    }

    /// `peer` sent this run of calls directly, on the credit this node granted it: as
    /// ``direct(_:from:wallClock:)`` with the run's calls as items, in order, without decoding
    /// an item per call. A run that does not name `peer` as its caller is discarded whole (one
    /// `.discard`, every call counted malformed); a call whose arguments exceed
    /// ``ExecutorConfiguration/maxArgumentSize`` is answered ``CallOutcome/malformedCall(_:)``.
    public mutating func directRun(_ run: CallRun, from peer: PeerID, wallClock: UInt64) -> [Action] {
        if let held = granted[peer] { granted[peer] = Swift.max(0, held - run.count) }
        var actions: [Action] = []
        guard run.caller == peer else {
            counters.malformed += run.count
            actions.append(.discard(.malformed(field: "direct.caller", reason: "a direct run from \(peer) names caller \(run.caller)")))
            fill(&actions)
            return actions
        }
        var runs: [CallTask] = []
        let maxArgumentSize = configuration.maxArgumentSize
        run.forEachCall { (index, arguments) in
            let id = run.id(at: index)
            guard arguments.count <= maxArgumentSize else {
                counters.malformed += 1
                let error = WireError.malformed(field: "call.arguments", reason: "length \(arguments.count) exceeds the limit of \(maxArgumentSize) bytes")
                if deadCallers.contains(peer) {
                    actions.append(.discard(error))
                } else {
                    queueResult(.malformedCall(truncateUTF8(error.description, to: RemoteCallLimits.maxDescriptionLength)), for: id, actions: &actions)
                }
                return
            }
            counters.direct += 1
            let item = CallItem(id: id, attempt: run.attempt, function: run.function, memoize: run.memoize,
                                deadline: run.deadline, arguments: Array(arguments))
            admit(item, wallClock: wallClock, direct: true, runs: &runs, actions: &actions)
        }
        if !runs.isEmpty { actions.append(.run(runs)) }
        fill(&actions)
        return actions
    }

    /// Decodes and admits items, popped from the queue (`sender` nil) or sent directly by
    /// `sender`, which must then be their caller. A malformed item that names a (plausible)
    /// caller is answered; any other is discarded.
    private mutating func intake(_ items: [ItemPayload], from sender: PeerID?, wallClock: UInt64) -> [Action] {
        var actions: [Action] = []
        var runs: [CallTask] = []
        for bytes in items {
            let decoded: Result<CallItem, WireError> = bytes.withUnsafeBytes { raw in
                Result { () throws(WireError) in
                    try CallItem.decode(raw, maxArgumentSize: configuration.maxArgumentSize, names: &functionNames)
                }
            }
            switch decoded {
            case .success(let item) where sender == nil || item.id.caller == sender:
                if sender != nil { counters.direct += 1 }
                admit(item, wallClock: wallClock, direct: sender != nil, runs: &runs, actions: &actions)
            case .success(let item):
                counters.malformed += 1
                actions.append(.discard(.malformed(field: "direct.caller", reason: "a direct call from \(sender!) names caller \(item.id.caller)")))
            case .failure(let error):
                counters.malformed += 1
                if let id = CallItem.header(of: bytes), !deadCallers.contains(id.caller), sender == nil || id.caller == sender {
                    if sender == nil {
                        // Its attempt is unreadable; the notice only has to name this node.
                        outboxes.modify(id.caller) { $0.started.append(CallStartedEntry(sequence: id.sequence, attempt: 1)) }
                    }
                    queueResult(.malformedCall(truncateUTF8(error.description, to: RemoteCallLimits.maxDescriptionLength)), for: id, actions: &actions)
                } else {
                    actions.append(.discard(error))
                }
            }
        }
        if !runs.isEmpty { actions.append(.run(runs)) }
        fill(&actions)
        return actions
    }

    /// The link to `peer` went down or was replaced: the credit it held is void (it forgets it
    /// too); it is credited again when a link comes up (``peerConnected(_:)``) or after its
    /// next call runs here.
    public mutating func peerDisconnected(_ peer: PeerID) {
        forgetCredit(peer)
    }

    /// A link to `peer` came up: it is offered credit at the next ``flush()`` (if there is room
    /// among the credited callers), so its calls can come straight here before any of them
    /// ran here.
    public mutating func peerConnected(_ peer: PeerID) {
        guard !deadCallers.contains(peer) else { return }
        offerCredit(to: peer)
    }

    /// Adds `caller` as the least recent caller to credit, unless it is credited already or
    /// there is no room (callers whose calls ran here keep their place).
    private mutating func offerCredit(to caller: PeerID) {
        guard configuration.grantsCredit, !creditedCallers.contains(caller),
              creditedCallers.count < configuration.maxCreditedCallers else { return }
        creditedCallers.insert(caller, at: 0)
    }

    private mutating func forgetCredit(_ peer: PeerID) {
        granted[peer] = nil
        if let index = creditedCallers.firstIndex(of: peer) { creditedCallers.remove(at: index) }
    }

    /// A task ended (returned, threw, failed to decode its arguments, or stopped after a
    /// `.cancelTask`). Its slot is freed and its result queued for every caller still waiting.
    public mutating func finished(_ task: TaskID, outcome: CallOutcome) -> [Action] {
        var actions: [Action] = []
        finishOne(task, outcome: outcome, actions: &actions)
        fill(&actions)
        return actions
    }

    /// Many tasks ended (the shell hands outcomes back in batches): as ``finished(_:outcome:)``
    /// for each, with one demand update for the whole batch.
    public mutating func finished(_ batch: [(TaskID, CallOutcome)]) -> [Action] {
        var actions: [Action] = []
        for (task, outcome) in batch { finishOne(task, outcome: outcome, actions: &actions) }
        fill(&actions)
        return actions
    }

    private mutating func finishOne(_ task: TaskID, outcome: CallOutcome, actions: inout [Action]) {
        guard let record = tasks.remove(task.rawValue) else { return }
        switch record.state {
        case .holding: slotsInUse -= 1
        case .awaitingSlot: resumers.removeAll { $0 == task }
        case .suspended: break
        }
        // Only where a call still names this task: once out of the books (cancelled), it may
        // have been delivered again and run in another.
        calls.remove(record.call, ifNaming: task)
        for subscriber in record.joined { calls.remove(subscriber, ifNaming: task) }
        if let key = record.memoKey {
            if taskByMemo[key] == task { taskByMemo[key] = nil }
            if case .success(let bytes) = outcome, !record.cancelled {
                memo.insert(bytes, for: key, cost: key.byteCount + bytes.count)
            }
        }
        if record.ownSubscribed { queueResult(outcome, for: record.call, actions: &actions) }
        for subscriber in record.joined { queueResult(outcome, for: subscriber, actions: &actions) }
    }

    /// A running task is about to await another call: it gives its slot up.
    public mutating func suspend(_ task: TaskID) -> [Action] {
        guard tasks[task.rawValue]?.state == .holding else { return [] }
        _ = tasks.modify(task.rawValue) { $0.state = .suspended }
        slotsInUse -= 1
        var actions: [Action] = []
        fill(&actions)
        return actions
    }

    /// A suspended task's awaited call is done: it continues after a `.resume` (at once if a
    /// slot is free, else before any new item).
    public mutating func requestResume(_ task: TaskID) -> [Action] {
        guard tasks[task.rawValue]?.state == .suspended else { return [] }
        _ = tasks.modify(task.rawValue) { $0.state = .awaitingSlot }
        resumers.append(task)
        var actions: [Action] = []
        fill(&actions)
        return actions
    }

    /// Running task `task` made a call of its own and awaits it (`async let` makes several):
    /// its first outstanding call gives its slot up (``suspend(_:)``).
    public mutating func nestedCallMade(by task: TaskID) -> [Action] {
        nestedCalls[task, default: 0] += 1
        return nestedCalls[task] == 1 ? suspend(task) : []
    }

    /// A call `task` made was refused for the caller's outstanding-call limit and parked: it
    /// counts again when it is made again.
    public mutating func nestedCallParked(by task: TaskID) {
        nestedCalls[task, default: 1] -= 1
    }

    /// A call `task` made completed. While others are outstanding the task has its result at
    /// once (it still awaits them, holding no slot); the last one's result waits for the
    /// task's `.resume`: it continues only once it holds a slot again.
    public mutating func nestedCallCompleted(by task: TaskID) -> NestedCallCompletion {
        let left = (nestedCalls[task] ?? 1) - 1
        if left > 0 {
            nestedCalls[task] = left
            return .deliverNow
        }
        nestedCalls[task] = nil
        return .deliverOnResume(requestResume(task))
    }

    /// A remote-call message arrived from `peer` (cancels from callers).
    public mutating func received(_ message: RemoteCallMessage, from peer: PeerID) -> [Action] {
        guard case .cancel(let sequences) = message else { return [] }
        var actions: [Action] = []
        for sequence in sequences {
            let call = CallID(caller: peer, sequence: sequence)
            if let task = calls.task(for: call) {
                unsubscribe(call, from: task, actions: &actions)
            } else {
                // The item may still be on its way (or waiting in the backlog): drop it then.
                cancelled.insert(call)
            }
        }
        if outboxes.contains(peer) {
            let gone = Set(sequences)
            outboxes.modify(peer) { outbox in
                outbox.results.removeAll { gone.contains($0.sequence) }
                outbox.resultBytes = outbox.results.reduce(2) { $0 + $1.encodedSize }
            }
        }
        fill(&actions)
        return actions
    }

    /// Membership declared `peer` dead: its calls are dropped, tasks only it waits for cancelled.
    public mutating func peerDied(_ peer: PeerID) -> [Action] {
        callerGone(peer)
    }

    /// `peer` left: as ``peerDied(_:)``.
    public mutating func peerLeft(_ peer: PeerID) -> [Action] {
        callerGone(peer)
    }

    /// `peer` (re)joined: its calls are accepted again.
    public mutating func peerJoined(_ peer: PeerID) -> [Action] {
        deadCallers.remove(peer)
        return []
    }

    /// Sends the credit top-ups, then the started notices and results batched since the last
    /// flush, one message of each kind per caller (more if a batch exceeds the message size).
    public mutating func flush() -> [Action] {
        var actions: [Action] = []
        // Credit first, and even with nothing else to send (offers to callers that have not
        // called yet are made here): the calls a caller makes as its results arrive (a pipeline
        // refilling its window) then find the slots those results freed already granted,
        // instead of waiting in the caller for the credit behind them.
        grantCredit(&actions)
        guard !outboxes.isEmpty else { return actions }
        for (peer, outbox) in outboxes.drain() {
            // Every started notice goes, ahead of the results: a caller accepts a result only
            // from a peer it sent the call to or that announced it (even in the same batch).
            sendStarted(outbox.started, to: peer, actions: &actions)
            if !outbox.results.isEmpty { actions.append(.send(.results(outbox.results), to: peer)) }
        }
        return actions
    }

    private func sendStarted(_ started: [CallStartedEntry], to peer: PeerID, actions: inout [Action]) {
        var start = 0
        while start < started.count {
            let end = min(started.count, start + RemoteCallLimits.maxEntriesPerMessage, start + (configuration.maxMessageBodySize - 2) / 9)
            actions.append(.send(.started(Array(started[start..<end])), to: peer))
            start = end
        }
    }

    /// Tops every credited caller up to the free slots (this node's own caller included: it
    /// gets its credit through the shell like a peer).
    private mutating func grantCredit(_ actions: inout [Action]) {
        guard configuration.grantsCredit, isProcessing, backlog.isEmpty, resumers.isEmpty else { return }
        let free = configuration.maxConcurrentCalls - slotsInUse
        guard free > 0 else { return }
        for peer in creditedCallers {
            let held = granted[peer] ?? 0
            guard free > held else { continue }
            granted[peer] = free
            counters.creditGranted += free - held
            actions.append(.send(.credit(UInt32(clamping: free - held)), to: peer))
        }
    }

    /// Notes a remote caller whose call is admitted here, as the most recent one to credit.
    /// Whether `function` is registered; the last name found is remembered, so a stream of calls
    /// of one function compares a short string instead of hashing it for each.
    private mutating func runsHere(_ function: String) -> Bool {
        if function == lastRegistered { return true }
        guard functions.contains(function) else { return false }
        lastRegistered = function
        return true
    }

    private mutating func noteCaller(_ caller: PeerID) {
        guard configuration.grantsCredit, creditedCallers.last != caller else { return }
        if let index = creditedCallers.firstIndex(of: caller) {
            creditedCallers.remove(at: index)
        } else if creditedCallers.count >= configuration.maxCreditedCallers {
            granted[creditedCallers.removeFirst()] = nil  // its credit lapses into overcommit, never loss
        }
        creditedCallers.append(caller)
    }

    // MARK: Internals

    private mutating func admit(_ item: CallItem, wallClock: UInt64, direct: Bool, runs: inout [CallTask], actions: inout [Action]) {
        if deadCallers.count > 0 && deadCallers.contains(item.id.caller) {
            counters.droppedDeadCaller += 1
            return
        }
        noteCaller(item.id.caller)
        if cancelled.count > 0 && cancelled.contains(item.id) {
            cancelled.remove(item.id)
            counters.droppedCancelled += 1
            return
        }
        if item.deadline != 0 && wallClock > item.deadline &+ configuration.deadlineGrace {
            counters.droppedExpired += 1
            return
        }
        if calls.task(for: item.id) != nil {
            // Delivered again (queue redelivery, or the caller retried while it runs here).
            counters.duplicates += 1
            if !direct { queueStarted(item, actions: &actions) }
            return
        }
        guard runsHere(item.function) else {
            counters.unknownFunction += 1
            if !direct { queueStarted(item, actions: &actions) }
            queueResult(.unknownFunction, for: item.id, actions: &actions)
            return
        }
        let key = item.memoize ? MemoKey(function: item.function, arguments: item.arguments) : nil
        if let key {
            if let value = memo.value(for: key) {
                counters.memoHits += 1
                if !direct { queueStarted(item, actions: &actions) }
                queueResult(.success(value), for: item.id, actions: &actions)
                return
            }
            if let task = taskByMemo[key], tasks[task.rawValue].map({ !$0.cancelled }) == true {
                counters.coalesced += 1
                _ = tasks.modify(task.rawValue) { $0.joined.append(item.id) }
                calls.add(item.id, task: task)
                if !direct { queueStarted(item, actions: &actions) }
                return
            }
        }
        guard slotsInUse < configuration.maxConcurrentCalls, resumers.isEmpty else {
            // In this node's custody now (the queue counts it popped): tell the caller, so it
            // retries if this node dies before running it.
            if !direct && backlogNotified.insert(item.id).inserted { queueStarted(item, actions: &actions) }
            backlog.append(Backlogged(item: item, direct: direct))
            return
        }
        let id = TaskID(nextTask)
        nextTask += 1
        tasks.append(id.rawValue, Task(call: item.id, memoKey: key, state: .holding))
        calls.add(item.id, task: id)
        if let key { taskByMemo[key] = id }
        slotsInUse += 1
        counters.peakSlotsInUse = max(counters.peakSlotsInUse, slotsInUse)
        counters.executed += 1
        if !direct { queueStarted(item, actions: &actions) }
        runs.append(CallTask(id: id, call: item.id, function: item.function, arguments: item.arguments))
    }

    /// Gives free slots to resumers first, then to the backlog, and offers the rest to the queue.
    private mutating func fill(_ actions: inout [Action]) {
        var resumed: [TaskID] = []
        var runs: [CallTask] = []
        while slotsInUse < configuration.maxConcurrentCalls {
            if let task = resumers.popFirst() {
                guard tasks[task.rawValue]?.state == .awaitingSlot else { continue }
                _ = tasks.modify(task.rawValue) { $0.state = .holding }
                slotsInUse += 1
                counters.peakSlotsInUse = max(counters.peakSlotsInUse, slotsInUse)
                resumed.append(task)
            } else if let entry = backlog.popFirst() {
                // Its started notice may go out twice; the caller ignores the repeat.
                backlogNotified.remove(entry.item.id)
                admit(entry.item, wallClock: 0, direct: entry.direct, runs: &runs, actions: &actions)
            } else {
                break
            }
        }
        if !resumed.isEmpty { actions.append(.resume(resumed)) }
        if !runs.isEmpty { actions.append(.run(runs)) }
        let level = isProcessing && backlog.isEmpty ? configuration.maxConcurrentCalls - slotsInUse : 0
        if level != demand {
            demand = level
            actions.append(.setDemand(level))
        }
    }

    private mutating func unsubscribe(_ call: CallID, from task: TaskID, actions: inout [Action]) {
        calls.remove(call)
        detach(call, from: task, actions: &actions)
    }

    /// `call` no longer waits for `task`'s result (already out of `calls`); the task is cancelled
    /// if no call does.
    private mutating func detach(_ call: CallID, from task: TaskID, actions: inout [Action]) {
        guard var record = tasks[task.rawValue] else { return }
        if call == record.call { record.ownSubscribed = false } else { record.joined.removeAll { $0 == call } }
        if !record.hasSubscribers && !record.cancelled {
            record.cancelled = true
            if let key = record.memoKey, taskByMemo[key] == task { taskByMemo[key] = nil }
            actions.append(.cancelTask(task))
        }
        _ = tasks.modify(task.rawValue) { $0 = record }
    }

    private mutating func callerGone(_ peer: PeerID) -> [Action] {
        deadCallers.insert(peer)
        outboxes.remove(peer)
        var actions: [Action] = []
        for (sequence, task) in calls.removeAll(of: peer) {
            detach(CallID(caller: peer, sequence: sequence), from: task, actions: &actions)
        }
        backlog.removeAll { $0.item.id.caller == peer }
        forgetCredit(peer)
        backlogNotified = backlogNotified.filter { $0.caller != peer }
        fill(&actions)
        return actions
    }

    private mutating func queueStarted(_ item: CallItem, actions: inout [Action]) {
        outboxes.modify(item.id.caller) { $0.started.append(CallStartedEntry(sequence: item.id.sequence, attempt: item.attempt)) }
    }

    private mutating func queueResult(_ outcome: CallOutcome, for call: CallID, actions: inout [Action]) {
        guard deadCallers.count == 0 || !deadCallers.contains(call.caller) else { return }
        var entry = CallResultEntry(sequence: call.sequence, outcome: outcome)
        let limit = configuration.maxMessageBodySize
        if 2 + entry.encodedSize > limit {
            // The replacement must fit itself: cut its description to the room left.
            let typeName = "RemoteCallError.resultTooLarge"
            let room = max(0, limit - 2 - (8 + 1 + 4 + typeName.utf8.count + 4))
            entry.outcome = .thrown(
                typeName: typeName,
                description: truncateUTF8("the result (\(entry.encodedSize) bytes encoded) exceeds the message limit of \(limit) bytes", to: min(room, RemoteCallLimits.maxDescriptionLength))
            )
        }
        let size = entry.encodedSize
        let full: (started: [CallStartedEntry], results: [CallResultEntry])? = outboxes.modify(call.caller) { outbox in
            var full: (started: [CallStartedEntry], results: [CallResultEntry])?
            if outbox.resultBytes + size > limit || outbox.results.count == RemoteCallLimits.maxEntriesPerMessage {
                // The notices batched so far go first: they name this node for those results.
                full = (outbox.started, outbox.results)
                outbox.started = []
                outbox.results = []
                outbox.resultBytes = 2
            }
            outbox.results.append(entry)
            outbox.resultBytes += size
            return full
        }
        if let full {
            sendStarted(full.started, to: call.caller, actions: &actions)
            actions.append(.send(.results(full.results), to: call.caller))
        }
    }
}

/// What an executor has batched for one caller.
struct Outbox: Sendable {
    var results: [CallResultEntry] = []
    var resultBytes = 2
    var started: [CallStartedEntry] = []
}

/// Outboxes by caller, with the last one used cached: results mostly go to the same caller
/// run after run, so most accesses skip hashing a peer ID.
struct Outboxes: Sendable {
    private var peers: [PeerID] = []
    private var boxes: [Outbox] = []
    private var index: [PeerID: Int] = [:]
    private var last = -1

    var isEmpty: Bool { peers.isEmpty }

    func contains(_ peer: PeerID) -> Bool { index[peer] != nil }

    mutating func modify<R>(_ peer: PeerID, _ body: (inout Outbox) -> R) -> R {
        let slot: Int
        if last >= 0 && peers[last] == peer {
            slot = last
        } else if let found = index[peer] {
            slot = found
        } else {
            peers.append(peer)
            boxes.append(Outbox())
            slot = peers.count - 1
            index[peer] = slot
        }
        last = slot
        return body(&boxes[slot])
    }

    mutating func remove(_ peer: PeerID) {
        guard let slot = index.removeValue(forKey: peer) else { return }
        peers.remove(at: slot)
        boxes.remove(at: slot)
        for (other, position) in index where position > slot { index[other] = position - 1 }
        last = -1
    }

    /// Everything batched, by peer ID, leaving the outboxes empty.
    mutating func drain() -> [(PeerID, Outbox)] {
        let all = zip(peers, boxes).sorted { $0.0 < $1.0 }
        peers.removeAll(keepingCapacity: true)
        boxes.removeAll(keepingCapacity: true)
        index.removeAll(keepingCapacity: true)
        last = -1
        return all
    }
}

/// A first-in first-out queue on an array with a moving head (P2PQWire only, no Deque).
struct FIFO<Element: Sendable>: Sendable {
    private var elements: [Element] = []
    private var head = 0

    var count: Int { elements.count - head }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ element: Element) {
        elements.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        let element = elements[head]
        head += 1
        if head > 32 && head * 2 >= elements.count {
            elements.removeFirst(head)
            head = 0
        }
        return element
    }

    mutating func removeAll(where predicate: (Element) -> Bool) {
        elements = Array(elements[head...]).filter { !predicate($0) }
        head = 0
    }
}
