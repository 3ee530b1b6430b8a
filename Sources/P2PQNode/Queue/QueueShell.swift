import P2PQNodeMachine
import P2PQQueue
import P2PQReactor
import P2PQWire

/// The items of a push, in the form the caller gave them (each goes to the machine as it is:
/// no intermediate array of payloads).
enum PushItems: Sendable {
    case arrays([[UInt8]])
    case batch(ItemBatch)

    /// Items averaging at most this many bytes are copied into one buffer on the pushing
    /// task's thread: the queue then keeps, sends and pops them as one run, with a reference
    /// count per batch instead of per item (a copy costs less than that up to a few KiB).
    static let packedItemLimit = 4096

    /// `items` as pushed: small ones packed into an ``ItemBatch``, large ones as they are (no
    /// copy).
    init(_ items: [[UInt8]]) {
        let bytes = items.reduce(0) { $0 + $1.count }
        if items.count > 1 && bytes <= items.count * Self.packedItemLimit && bytes <= Int(UInt32.max) {
            var batch = ItemBatch(capacity: items.count, bytes: bytes)
            for item in items { batch.append(item) }
            self = .batch(batch)
        } else {
            self = .arrays(items)
        }
    }

    var count: Int {
        switch self {
        case .arrays(let items): items.count
        case .batch(let batch): batch.count
        }
    }

    /// Payload bytes (for the status of waiting pushes).
    var byteCount: Int {
        switch self {
        case .arrays(let items): items.reduce(0) { $0 + $1.count }
        case .batch(let batch): batch.byteCount
        }
    }

    func push(into machine: inout NodeCore.Machine, queue name: String, now: UInt64) -> (PushOutcome, [NodeCore.Action])? {
        switch self {
        case .arrays(let items): machine.push(items, into: name, now: now)
        case .batch(let batch): machine.push(batch, into: name, now: now)
        }
    }
}

/// Connects the node machine's queues to their callers: feeds it pushes, pops and queue
/// messages, performs the queues' actions (``NodeAction/queue(_:_:)``), and parks the async
/// callers until their items, room, replica or flush come. Reactor thread only.
final class QueueShell {
    typealias PopContinuation = CheckedContinuation<Result<ItemPayloads, QueueError>, Never>
    typealias PushContinuation = CheckedContinuation<Result<Void, QueueError>, Never>
    /// How a pop's outcome is handed back: a continuation's resume, or an HTTP route's answer.
    typealias PopCompletion = (Result<ItemPayloads, QueueError>) -> Void
    typealias PushCompletion = (Result<Void, QueueError>) -> Void

    unowned let core: NodeCore
    /// The callers waiting on each queue (the queues themselves are the node machine's).
    private var queues: [String: Entry] = [:]
    /// Queues with pushes waiting for a replica or flushes waiting (checked after each batch of actions).
    private var watched: Set<String> = []
    /// The node machine's queues (queries only).
    private var machines: [String: QueueMachine] { core.machine.queues }
    /// Pop confirmations refused by this node's queues (as owner), all queues together.
    var confirmationsRefused: Int { machines.values.reduce(0) { $0 + $1.counters.confirmationsRefused } }
    private var nextWaiter: UInt64 = 1
    /// After ``stop()`` every call fails with `.nodeStopped` (the reactor may still run a turn).
    private var isStopped = false
    /// After ``drain()`` callers fail with `.nodeStopped`, while peers' messages still count.
    private var isDraining = false
    private var isServing: Bool { !isStopped && !isDraining }
    /// The hello features this node announces (§5): it takes over ownership in drain transfers.
    static let helloFeatures = QueueWire.featureOwnershipHandover | QueueWire.featureReplicas
    /// Messages held back to be written one transfer at a time (``QueueOutbox``), and their
    /// run later in the turn.
    private var outbox = QueueOutbox()
    private lazy var outboxRun = LaterInTurn(reactor: core.reactor) { [weak self] in self?.drainOutbox() }

    private struct Entry {
        var pops: [WaiterID: PendingPop] = [:]
        var leasedPops: [WaiterID: PendingLeasedPop] = [:]
        /// Pushes waiting for room, served in order.
        var pushes: [PendingPush] = []
        /// The machine's transfer and duplicate totals already added to the node's metrics.
        var reportedTransfers = 0
        var reportedDuplicateDeliveries = 0
        var reportedDroppedRetransmissions = 0
        var reportedStaleCopies = 0
        /// Callers of `flush`, by ID.
        var flushes: [UInt64: PendingFlush] = [:]
        /// Pushes whose items are queued and wait for their replica's ack, in push order.
        var replicating: [ReplicatingPush] = []

        /// Runs `body` on this entry in place (`queues[name]?.update`: no copy of its machine).
        mutating func update<Result>(_ body: (inout Entry) -> Result) -> Result { body(&self) }
    }

    /// A push accepted by the machine whose items wait for a peer to acknowledge their replica
    /// (``Replication/replicated``): it completes when no item pushed before `mark` waits.
    private struct ReplicatingPush {
        var id: UInt64
        var mark: UInt64
        var continuation: PushSink
        var timer: TimerID?
    }

    /// A `flush` waiting until the items pushed before `mark` are held elsewhere (or popped).
    private struct PendingFlush {
        var mark: UInt64
        var sink: PushSink
        var timer: TimerID?
    }
    private var nextFlush: UInt64 = 1
    /// Flushes waiting in all queues (the hot path checks only this).
    private var waitingFlushes = 0

    /// Where a pop's outcome goes: an async caller's continuation, or (for layers inside the
    /// module such as remote calls) a callback run on the reactor thread at once. The items are
    /// handed over (`consuming`): the reactor keeps no reference past the call, so a consumer on
    /// another thread, not the reactor, lets their arrays go once it is done.
    typealias PopSink = (consuming Result<ItemPayloads, QueueError>) -> Void
    typealias PushSink = (Result<Void, QueueError>) -> Void

    private struct PendingPop {
        var continuation: PopSink
        var timer: TimerID?
    }

    /// Where a leased pop's items go (on the reactor thread).
    typealias LeasedSink = (Result<[LeasedPayload], QueueError>) -> Void

    private struct PendingLeasedPop {
        var continuation: LeasedSink
        var timer: TimerID?
    }

    /// A push waiting for room. Its ID lets a cancelled task or a deadline withdraw it, so that
    /// an abandoned push neither holds memory nor enters the queue later.
    private struct PendingPush {
        var id: UInt64
        var items: PushItems
        var continuation: PushSink
        var timer: TimerID?
    }

    init(core: NodeCore) {
        self.core = core
    }

    private var now: UInt64 { core.now }

    /// The queue named `name`, made by the node machine (and introduced to the linked peers)
    /// on first use; false when it cannot be (too many queues, or a bad name).
    private func ensure(_ name: String) -> Bool {
        if queues[name] != nil { return true }
        let (exists, actions) = core.machine.ensureQueue(name, now: now)
        guard exists else { return false }
        queues[name] = Entry()
        core.perform(actions)
        return true
    }

    // MARK: Callers

    /// Returns the push's ID while it waits for room (see ``withdrawPush(_:_:with:)``).
    @discardableResult
    func push(_ name: String, _ items: PushItems, wait: Bool, timeout: Duration? = nil, _ continuation: PushContinuation) -> UInt64? {
        push(name, items, wait: wait, timeout: timeout, sink: { continuation.resume(returning: $0) })
    }

    func push(_ name: String, _ items: [[UInt8]], wait: Bool, sink continuation: @escaping PushSink) {
        push(name, .arrays(items), wait: wait, sink: continuation)
    }

    /// As ``push(_:_:wait:timeout:_:)`` with a callback; it runs on the reactor thread, possibly
    /// before this returns. A waiting push fails with `.timeout` after `timeout` (nil: never).
    @discardableResult
    func push(_ name: String, _ items: PushItems, wait: Bool, timeout: Duration? = nil, sink continuation: @escaping PushSink) -> UInt64? {
        guard isServing else { continuation(.failure(.nodeStopped)); return nil }
        guard ensure(name) else { continuation(.failure(.tooManyQueues)); return nil }
        // Pushers already waiting go first (order across pushers).
        if queues[name]?.pushes.isEmpty == false {
            guard wait else { continuation(.failure(.timeout)); return nil }
            return park(name, items, timeout: timeout, continuation)
        }
        guard case let (outcome, actions)? = items.push(into: &core.machine, queue: name, now: now) else {
            continuation(.failure(.tooManyQueues))
            return nil
        }
        var parked: UInt64?
        switch outcome {
        case .accepted:
            countPushed(name, items.count)
            parked = complete(name, timeout: timeout, continuation)
        case .full:
            if wait {
                parked = park(name, items, timeout: timeout, continuation)
            } else {
                continuation(.failure(.timeout))
            }
        case .closed: continuation(.failure(.closed))
        case .itemTooLarge(let size, let limit): continuation(.failure(.itemTooLarge(size: size, limit: limit)))
        case .batchTooLarge: continuation(.failure(.batchTooLarge))
        }
        core.perform(actions)
        return parked
    }

    /// Completes an accepted push, or parks it until its items' replica is acknowledged;
    /// returns its ID while it waits (it can be withdrawn as a push waiting for room can).
    private func complete(_ name: String, timeout: Duration?, _ continuation: @escaping PushSink) -> UInt64? {
        guard let mark = core.machine.replicaMark(in: name) else {
            continuation(.success(()))
            return nil
        }
        let id = nextWaiter
        nextWaiter += 1
        var pending = ReplicatingPush(id: id, mark: mark, continuation: continuation)
        if let timeout {
            pending.timer = core.reactor.schedule(after: timeout) { [unowned self] in
                self.withdrawPush(name, id, with: .timeout, timerFired: true)
            }
        }
        queues[name]?.replicating.append(pending)
        watched.insert(name)
        return id
    }

    /// Completes the pushes whose items' replicas are all acknowledged (or that need none any
    /// more: no peer keeps replicas).
    private func checkReplicated(_ name: String) {
        guard let entry = queues[name], !entry.replicating.isEmpty, let machine = core.machine.queues[name] else { return }
        var done: [ReplicatingPush] = []
        queues[name]?.replicating.removeAll { pending in
            guard !machine.awaitsReplica(before: pending.mark) else { return false }
            done.append(pending)
            return true
        }
        for pending in done {
            if let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.success(()))
        }
    }

    private func park(_ name: String, _ items: PushItems, timeout: Duration?, _ continuation: @escaping PushSink) -> UInt64 {
        let id = nextWaiter
        nextWaiter += 1
        var pending = PendingPush(id: id, items: items, continuation: continuation)
        if let timeout {
            pending.timer = core.reactor.schedule(after: timeout) { [unowned self] in
                self.withdrawPush(name, id, with: .timeout, timerFired: true)
            }
        }
        queues[name]?.pushes.append(pending)
        return id
    }

    /// Removes a waiting push (its task was cancelled, or its deadline passed) and fails it
    /// with `error`; nothing if it already ended.
    func withdrawPush(_ name: String, _ id: UInt64, with error: QueueError, timerFired: Bool = false) {
        if let index = queues[name]?.replicating.firstIndex(where: { $0.id == id }) {
            // Its items stay queued (unreplicated until a peer takes the replica): the caller
            // hears it was not confirmed.
            guard let pending = queues[name]?.replicating.remove(at: index) else { return }
            if !timerFired, let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.failure(error))
            return
        }
        guard let index = queues[name]?.pushes.firstIndex(where: { $0.id == id }) else { return }
        guard let pending = queues[name]?.pushes.remove(at: index) else { return }
        if !timerFired, let timer = pending.timer { core.reactor.cancel(timer) }
        pending.continuation(.failure(error))
        // The pushes behind the first may fit where it did not.
        if index == 0 { retryPushes(name) }
    }

    /// Pushes waiting for room on `name`, and their payload bytes.
    func waitingPushes(_ name: String) -> (count: Int, bytes: Int) {
        guard let pushes = queues[name]?.pushes else { return (0, 0) }
        return (pushes.count, pushes.reduce(0) { $0 + $1.items.byteCount })
    }

    /// `timeout` nil waits forever; zero does not wait.
    func pop(_ name: String, max: Int, timeout: Duration?, _ continuation: PopContinuation) -> WaiterID? {
        pop(name, max: max, timeout: timeout, sink: { result in continuation.resume(returning: consume result) })
    }

    /// A new waiter ID, for ``pop(_:max:waiter:sink:)``.
    func makeWaiterID() -> WaiterID {
        defer { nextWaiter += 1 }
        return WaiterID(nextWaiter)
    }

    /// A waiting pop with a callback and a waiter ID chosen by the caller (so it can tell its
    /// waiters apart before this returns). The sink runs on the reactor thread, possibly before
    /// this returns, with the items once they are here (or the failure). Returns whether the
    /// pop waits (false: the sink already ran).
    @discardableResult
    func pop(_ name: String, max: Int, waiter: WaiterID, sink: @escaping PopSink) -> Bool {
        guard isServing else {
            sink(.failure(.nodeStopped))
            return false
        }
        guard ensure(name) else {
            sink(.failure(.tooManyQueues))
            return false
        }
        guard case let (items, actions)? = core.machine.pop(name, max: max, waiter: waiter, now: now) else {
            sink(.failure(.tooManyQueues))
            return false
        }
        if !items.isEmpty {
            countPopped(name, items.count)
            sink(.success(consume items))
            core.perform(actions)
            return false
        }
        queues[name]?.pops[waiter] = PendingPop(continuation: sink)
        core.perform(actions)
        return queues[name]?.pops[waiter] != nil
    }

    /// Removes the items of the local queue `name` whose payload `matches` (see
    /// ``QueueMachine/remove(where:now:)``). Returns how many went.
    @discardableResult
    func remove(_ name: String, where matches: (ItemPayload) -> Bool) -> Int {
        guard isServing else { return 0 }
        let (removed, actions) = core.machine.remove(from: name, where: matches, now: now)
        core.perform(actions)
        return removed
    }

    /// Withdraws a waiting pop made with ``pop(_:max:waiter:sink:)`` without calling its sink.
    func withdraw(_ name: String, _ waiter: WaiterID) {
        guard let pending = queues[name]?.pops.removeValue(forKey: waiter) else { return }
        if let timer = pending.timer { core.reactor.cancel(timer) }
        core.perform(core.machine.cancelWait(waiter, in: name, now: now))
    }

    /// A pop with a timeout and a callback (run on the reactor thread, possibly before this
    /// returns). Returns the waiter if the pop waits.
    @discardableResult
    func pop(_ name: String, max: Int, timeout: Duration?, sink continuation: @escaping PopSink) -> WaiterID? {
        guard isServing else {
            continuation(.failure(.nodeStopped))
            return nil
        }
        guard ensure(name) else {
            continuation(.failure(.tooManyQueues))
            return nil
        }
        let waits = timeout.map { $0 > .zero } ?? true
        let waiter = WaiterID(nextWaiter)
        nextWaiter += 1
        guard case let (items, actions)? = core.machine.pop(name, max: max, waiter: waits ? waiter : nil, now: now) else {
            continuation(.failure(.tooManyQueues))
            return nil
        }
        if !items.isEmpty {
            countPopped(name, items.count)
            continuation(.success(consume items))
            core.perform(actions)
            return nil
        }
        if !waits {
            continuation(.failure(core.machine.queues[name]?.isClosed == true ? .closed : .timeout))
            core.perform(actions)
            return nil
        }
        var pending = PendingPop(continuation: continuation)
        if let timeout {
            pending.timer = core.reactor.schedule(after: timeout) { [unowned self] in
                self.endWait(name, waiter, with: .timeout)
            }
        }
        queues[name]?.pops[waiter] = pending
        core.perform(actions)  // may deliver or fail it at once
        return waiter
    }

    /// A waiting pop's task was cancelled.
    func cancel(_ name: String, _ waiter: WaiterID) {
        endWait(name, waiter, with: .cancelled)
    }

    private func endWait(_ name: String, _ waiter: WaiterID, with error: QueueError) {
        if let pending = queues[name]?.leasedPops.removeValue(forKey: waiter) {
            if let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.failure(error))
            core.perform(core.machine.cancelWait(waiter, in: name, now: now))
            return
        }
        guard let pending = queues[name]?.pops.removeValue(forKey: waiter) else { return }
        if let timer = pending.timer { core.reactor.cancel(timer) }
        pending.continuation(.failure(error))
        core.perform(core.machine.cancelWait(waiter, in: name, now: now))
    }

    // MARK: Leases

    /// A leased pop (``QueueMachine/popLeased(max:lease:waiter:now:)``) with a timeout (nil:
    /// forever; zero: no wait) and a callback run on the reactor thread, possibly before this
    /// returns. Returns the waiter if the pop waits (``cancel(_:_:)`` withdraws it).
    @discardableResult
    func popLeased(_ name: String, max: Int, lease: UInt64, timeout: Duration?, sink: @escaping LeasedSink) -> WaiterID? {
        guard isServing else { sink(.failure(.nodeStopped)); return nil }
        guard ensure(name) else { sink(.failure(.tooManyQueues)); return nil }
        let waits = timeout.map { $0 > .zero } ?? true
        let waiter = makeWaiterID()
        guard case let (items, actions)? = core.machine.popLeased(name, max: max, lease: lease, waiter: waits ? waiter : nil, now: now) else {
            sink(.failure(.tooManyQueues))
            return nil
        }
        if !items.isEmpty {
            sink(.success(items))
            core.perform(actions)
            return nil
        }
        if !waits {
            sink(.failure(core.machine.queues[name]?.isClosed == true ? .closed : .timeout))
            core.perform(actions)
            return nil
        }
        var pending = PendingLeasedPop(continuation: sink)
        if let timeout {
            pending.timer = core.reactor.schedule(after: timeout) { [unowned self] in
                self.endWait(name, waiter, with: .timeout)
            }
        }
        queues[name]?.leasedPops[waiter] = pending
        core.perform(actions)
        return waiter
    }

    /// Acknowledges leased items (``QueueMachine/ack(_:now:)``); fails with `.unknownLease`
    /// naming the tokens not leased here (the others are acknowledged).
    func ack(_ name: String, _ tokens: [LeaseToken]) -> Result<Int, QueueError> {
        guard !isStopped else { return .failure(.nodeStopped) }
        guard case let (count, unknown, actions)? = core.machine.ack(tokens, in: name, now: now) else {
            return .failure(.unknownLease(tokens))
        }
        countPopped(name, count)
        core.perform(actions)
        return unknown.isEmpty ? .success(count) : .failure(.unknownLease(unknown))
    }

    /// Gives leased items back (``QueueMachine/nack(_:now:)``); errors as ``ack(_:_:)``.
    func nack(_ name: String, _ tokens: [LeaseToken]) -> Result<Int, QueueError> {
        guard !isStopped else { return .failure(.nodeStopped) }
        guard case let (count, unknown, actions)? = core.machine.nack(tokens, in: name, now: now) else {
            return .failure(.unknownLease(tokens))
        }
        core.perform(actions)
        return unknown.isEmpty ? .success(count) : .failure(.unknownLease(unknown))
    }

    /// Leased items of `name` not acked yet (for tests).
    func leasedItems(_ name: String) -> Int { core.machine.queues[name]?.leasedCount ?? 0 }

    private func deliverLeased(_ name: String, _ waiter: WaiterID, _ items: [LeasedPayload]) {
        guard let pending = queues[name]?.leasedPops.removeValue(forKey: waiter) else {
            // Nobody takes them: straight back to the queue rather than waiting out the lease.
            if let (_, _, actions) = core.machine.nack(items.map(\.token), in: name, now: now) { core.perform(actions) }
            return
        }
        if let timer = pending.timer { core.reactor.cancel(timer) }
        pending.continuation(.success(items))
    }

    /// The node machine settled a dead letter of `name`: pushed into `target` (`refusals` 0),
    /// or refused there (held and retried; warned about at the first and every 1000th).
    func deadLettered(from name: String, into target: String, refusals: Int) {
        guard refusals > 0 else {
            countPushed(target, 1)
            return
        }
        if refusals == 1 || refusals.isMultiple(of: 1000) {
            core.logger.warning("dead-letter queue \(target) refused an item of \(name); it stays held and is retried (\(refusals) refusals)")
        }
    }

    func size(_ name: String) -> QueueSize {
        guard let machine = core.machine.queues[name] else { return QueueSize(local: 0, cluster: 0) }
        return QueueSize(local: machine.count, cluster: machine.clusterEstimate(now: now))
    }

    func counters(_ name: String) -> QueueCounters? { core.machine.queues[name]?.counters }

    /// Items of `name` this node owns and no confirmation has released yet (for tests).
    func ownedItems(_ name: String) -> Int { core.machine.queues[name]?.ownedItems ?? 0 }

    /// Every queue's state for `/status`, sorted by name.
    func statuses() -> [NodeStatus.Queue] {
        machines.keys.sorted().compactMap { name in
            syncMetrics(name)
            guard let machine = core.machine.queues[name] else { return nil }
            let pushes = waitingPushes(name)
            return NodeStatus.Queue(
                name: name, localCount: machine.count, clusterEstimate: machine.clusterEstimate(now: now),
                waitingConsumers: machine.waitingConsumers, waitingPushes: pushes.count, waitingPushBytes: pushes.bytes,
                leased: machine.leasedCount, counters: machine.counters.named)
        }
    }

    /// The queues' totals for the dashboard's sample (once a second; internal `p2pq.` queues
    /// left out).
    func dashboardInput() -> [String: DashboardInput.Queue] {
        let now = self.now
        var out: [String: DashboardInput.Queue] = [:]
        for (name, machine) in machines where !name.hasPrefix("p2pq.") {
            let counters = machine.counters
            out[name] = DashboardInput.Queue(
                length: machine.count, popped: counters.popped, requeued: counters.requeuedAfterDeath,
                duplicates: counters.duplicatePops, peers: machine.peerLoads(now: now),
                transferredOut: counters.transferredOutByPeer, transferredIn: counters.transferredInByPeer)
        }
        return out
    }

    /// Adds the machine's new transfers and duplicates to the node's counters (once per timer
    /// tick and status request, not per item).
    func syncMetrics(_ name: String) {
        guard let entry = queues[name], let counters = core.machine.queues[name]?.counters else { return }
        let transfers = counters.transferredOut
        core.metrics.itemsTransferred += transfers - entry.reportedTransfers
        queues[name]?.reportedTransfers = transfers
        // Second pops the owner saw, apart from retransmitted copies receivers dropped.
        core.metrics.duplicateDeliveries += counters.duplicatePops - entry.reportedDuplicateDeliveries
        core.metrics.droppedRetransmissions += counters.duplicatesDropped - entry.reportedDroppedRetransmissions
        queues[name]?.reportedDuplicateDeliveries = counters.duplicatePops
        queues[name]?.reportedDroppedRetransmissions = counters.duplicatesDropped
        core.metrics.staleCopiesDropped += counters.staleCopiesDropped - entry.reportedStaleCopies
        queues[name]?.reportedStaleCopies = counters.staleCopiesDropped
    }

    func close(_ name: String) {
        guard isServing, ensure(name) else { return }
        core.perform(core.machine.close(name, now: now))
        failPushes(name, with: .closed)
    }

    // MARK: Node events

    /// A queue message from `peer`. Returns a description of the error if it is malformed
    /// (the caller closes the link).
    func receive(_ type: MessageType, _ body: UnsafeRawBufferPointer, from peer: PeerID) -> WireError? {
        let message: QueueMessage
        do throws(WireError) {
            message = try QueueMessage.decode(type: type, body: body)
        } catch {
            return error
        }
        guard !isStopped else { return nil }
        let name = message.queue
        core.perform(core.machine.received(consume message, from: peer, now: now))
        noteQueue(name)
        return nil
    }

    /// Keeps the callers' entry of a queue a peer's message made (over the limit, the machine
    /// made none, and there is none here either: a stranger cannot grow this table).
    private func noteQueue(_ name: String) {
        if queues[name] == nil, core.machine.queues[name] != nil { queues[name] = Entry() }
    }

    /// A queue message as if `peer` had sent it (for tests).
    func receiveForTesting(_ message: QueueMessage, from peer: PeerID) {
        guard !isStopped else { return }
        core.perform(core.machine.received(message, from: peer, now: now))
        noteQueue(message.queue)
    }

    // MARK: Graceful stop and flush

    /// The node begins a graceful stop: callers fail with `.nodeStopped`, and every queue
    /// hands its items (with their ownership) and its pending confirmations on
    /// (``QueueMachine/drain(now:)``). Peers' messages are still served; ``drainProgress``
    /// says when it is done.
    func drain() {
        guard isServing else { return }
        isDraining = true
        for name in queues.keys.sorted() { failParked(name) }
        core.perform(core.machine.drainQueues(now: now))
    }

    /// Every queue's drain, summed: complete when all are, stuck when each unfinished one is.
    var drainProgress: (progress: DrainProgress, stuck: Bool) {
        var total = DrainProgress(queued: 0, inFlight: 0, pendingNotices: 0, unreachableNotices: 0, hasLivePeer: false)
        var stuck = true
        for machine in machines.values {
            let progress = machine.drainProgress
            total.queued += progress.queued
            total.inFlight += progress.inFlight
            total.pendingNotices += progress.pendingNotices
            total.unreachableNotices += progress.unreachableNotices
            total.hasLivePeer = total.hasLivePeer || progress.hasLivePeer
            if !progress.isComplete && !progress.isStuck { stuck = false }
        }
        return (total, stuck && !total.isComplete)
    }

    /// Totals over the queues, for the stop report.
    var handOverTotals: (transferredOut: Int, noticesAcknowledged: Int, ownedHeldElsewhere: Int) {
        machines.values.reduce((0, 0, 0)) { total, machine in
            (total.0 + machine.counters.transferredOut, total.1 + machine.counters.noticesAcknowledged,
             total.2 + machine.ownedHeldElsewhere)
        }
    }

    /// Completes `sink` once every item pushed into `name` before now is acknowledged by a peer
    /// holding it or popped; fails it on `timeout` or when items wait here and no peer is live.
    func flush(_ name: String, timeout: Duration, sink: @escaping PushSink) {
        guard isServing else { return sink(.failure(.nodeStopped)) }
        guard queues[name] != nil, let mark = core.machine.queues[name]?.nextItemSequence else { return sink(.success(())) }  // nothing pushed
        let id = nextFlush
        nextFlush += 1
        var pending = PendingFlush(mark: mark, sink: sink)
        pending.timer = core.reactor.schedule(after: timeout) { [unowned self] in
            self.endFlush(name, id, with: .failure(.timeout))
        }
        queues[name]?.flushes[id] = pending
        waitingFlushes += 1
        watched.insert(name)
        checkFlushes(name)
    }

    private func endFlush(_ name: String, _ id: UInt64, with result: Result<Void, QueueError>) {
        guard let pending = queues[name]?.flushes.removeValue(forKey: id) else { return }
        waitingFlushes -= 1
        if let timer = pending.timer { core.reactor.cancel(timer) }
        pending.sink(result)
    }

    /// Completes the flushes whose items are safe (a scan of the ownership records: only while
    /// a flush waits).
    private func checkFlushes(_ name: String) {
        guard waitingFlushes > 0, let entry = queues[name], !entry.flushes.isEmpty,
              let machine = core.machine.queues[name] else { return }
        let live = machine.drainProgress.hasLivePeer
        for (id, pending) in entry.flushes.sorted(by: { $0.key < $1.key }) {
            if machine.itemsHeldOnlyHere(before: pending.mark) == 0 {
                endFlush(name, id, with: .success(()))
            } else if !live {
                endFlush(name, id, with: .failure(.noLivePeer))
            }
        }
    }

    /// Fails the parked pops, pushes and flushes of `name` with `.nodeStopped`.
    private func failParked(_ name: String) {
        guard let entry = queues[name] else { return }
        for (_, pending) in entry.pops {
            if let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.failure(.nodeStopped))
        }
        queues[name]?.pops = [:]
        for (_, pending) in entry.leasedPops {
            if let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.failure(.nodeStopped))
        }
        queues[name]?.leasedPops = [:]
        failPushes(name, with: .nodeStopped)
        for id in entry.flushes.keys.sorted() { endFlush(name, id, with: .failure(.nodeStopped)) }
    }

    /// The node stops: every parked caller fails with `.nodeStopped`.
    func stop() {
        // Held messages go out ahead of the goodbyes that follow.
        if !outbox.isEmpty { outboxRun.runNow() }
        isStopped = true
        for name in machines.keys.sorted() { core.cancelTimer(.queue(name)) }
        for name in queues.keys.sorted() {
            failParked(name)
            // Pushes still waiting for a replica (a drain completes them: its transfers carry
            // the items with their ownership).
            let replicating = queues[name]?.replicating ?? []
            queues[name]?.replicating = []
            for pending in replicating {
                if let timer = pending.timer { core.reactor.cancel(timer) }
                pending.continuation(.failure(.nodeStopped))
            }
        }
    }

    /// Writes `message` now, or holds it for later in the turn, as ``QueueOutbox`` says.
    private func send(_ message: QueueMessage, to peer: PeerID, queue name: String) {
        guard let ready = outbox.send(message, to: peer, queue: name) else {
            // After the handlers still to come this turn, before the links seal their output.
            outboxRun.schedule()
            return
        }
        write(ready, to: peer, queue: name)
    }

    private func drainOutbox() {
        for held in outbox.takeHeld() {
            guard write(held.message, to: held.peer, queue: held.queue), held.flushAfter else { continue }
            core.flushLink(to: held.peer)
        }
    }

    @discardableResult
    private func write(_ message: QueueMessage, to peer: PeerID, queue name: String) -> Bool {
        if core.send(message, to: peer) { return true }
        // Not sent (no link, or it went down meanwhile): the machine takes it back.
        if !isStopped { core.perform(core.machine.sendFailed(message, to: peer, now: now)) }
        return false
    }

    private func deliver(_ name: String, _ action: consuming QueueAction) {
        guard case .deliver(let waiter, let items) = consume action,
              let pending = queues[name]?.pops.removeValue(forKey: waiter) else { return }
        if let timer = pending.timer { core.reactor.cancel(timer) }
        countPopped(name, items.count)
        pending.continuation(.success(consume items))
    }

    private func failPushes(_ name: String, with error: QueueError) {
        let pushes = queues[name]?.pushes ?? []
        queues[name]?.pushes = []
        for push in pushes {
            if let timer = push.timer { core.reactor.cancel(timer) }
            push.continuation(.failure(error))
        }
    }

    // MARK: Actions

    /// Completes the pushes and flushes that the actions just performed made safe (the node's
    /// driver runs this each time its actions run out).
    func checkWaiting() {
        guard !watched.isEmpty else { return }
        for name in watched.sorted() {
            checkFlushes(name)
            checkReplicated(name)
            if queues[name].map({ $0.replicating.isEmpty && $0.flushes.isEmpty }) ?? true { watched.remove(name) }
        }
    }

    /// Performs one action of queue `name` (``NodeAction/queue(_:_:)``).
    func handle(_ name: String, _ action: consuming QueueAction) {
        // Moved, not copied: a delivery's items must have no reference left here when they
        // are handed over (see `PopSink`).
        if case .deliver = action {
            deliver(name, consume action)
            return
        }
        switch action {
        case .send(let message, let peer):
            send(message, to: peer, queue: name)
        case .deliver:
            break  // handed over above
        case .deliverLeased(let waiter, let items):
            deliverLeased(name, waiter, items)
        case .deadLetter:
            break  // settled by the node machine (``NodeAction/deadLettered(from:into:refusals:)``)
        case .fail(let waiter, let failure):
            if let pending = queues[name]?.leasedPops.removeValue(forKey: waiter) {
                if let timer = pending.timer { core.reactor.cancel(timer) }
                pending.continuation(.failure(failure == .closed ? .closed : .tooManyWaiters))
                return
            }
            guard let pending = queues[name]?.pops.removeValue(forKey: waiter) else { return }
            if let timer = pending.timer { core.reactor.cancel(timer) }
            pending.continuation(.failure(failure == .closed ? .closed : .tooManyWaiters))
        case .spaceAvailable:
            retryPushes(name)
        case .armTimer(let at):
            core.armTimer(.queue(name), at: at)
        }
    }

    /// Waiting pushers, in order, until one does not fit.
    private func retryPushes(_ name: String) {
        let now = self.now
        while let push = queues[name]?.pushes.first,
              case let (outcome, actions)? = push.items.push(into: &core.machine, queue: name, now: now) {
            if outcome == .full {
                core.perform(actions)
                return
            }
            queues[name]?.pushes.removeFirst()
            if let timer = push.timer { core.reactor.cancel(timer) }
            switch outcome {
            case .accepted:
                countPushed(name, push.items.count)
                // Waits for its replica under the same ID, without its timer (it had its turn).
                if complete(name, timeout: nil, push.continuation) != nil,
                   let last = queues[name]?.replicating.indices.last {
                    queues[name]?.replicating[last].id = push.id
                }
            case .closed: push.continuation(.failure(.closed))
            case .itemTooLarge(let size, let limit): push.continuation(.failure(.itemTooLarge(size: size, limit: limit)))
            case .batchTooLarge, .full: push.continuation(.failure(.batchTooLarge))
            }
            core.perform(actions)
        }
    }

    // Items of the node's internal queues (names starting with "p2pq.", e.g. remote calls'
    // "p2pq.calls") are counted as calls by their layer, not as queue items.
    private func countPushed(_ name: String, _ count: Int) {
        if !name.hasPrefix("p2pq.") { core.metrics.itemsPushed += count }
    }

    private func countPopped(_ name: String, _ count: Int) {
        if !name.hasPrefix("p2pq.") { core.metrics.itemsPopped += count }
    }
}
