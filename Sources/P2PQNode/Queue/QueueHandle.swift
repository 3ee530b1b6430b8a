import P2PQQueue
import P2PQWire
import Synchronization

extension Node {
    /// The name of the default queue.
    public static let defaultQueueName = "default"

    /// A handle on the named queue of this node (created on first use; peers' queues of the
    /// same name form one distributed queue). Handles are cheap values: make as many as needed.
    public func queue(named name: String = Node.defaultQueueName) -> QueueHandle {
        QueueHandle(node: self, name: name)
    }
}

/// A named queue, usable from any task.
///
/// Items leave a node in the order they entered it; across nodes there is no global order.
/// Delivery is at-least-once (see `QueueConfiguration.delivery`): nothing is lost when a link or
/// a node fails, and duplicates only follow faults.
/// A plain pop consumes its items when it returns; ``pop(max:lease:timeout:)`` leases them
/// until the application acks them, so work a crashed consumer had popped is delivered again.
public struct QueueHandle: Sendable {
    public let node: Node
    /// The queue's name (1...255 UTF-8 bytes).
    public let name: String

    /// Appends the items in order; waits while the queue is full (backpressure). Returns once
    /// they are in the local queue and tracked.
    ///
    /// A waiting push is withdrawn, and none of its items enters the queue, when its task is
    /// cancelled (``QueueError/cancelled``) or its `timeout` passes (``QueueError/timeout``;
    /// nil waits as long as it takes).
    ///
    /// - Throws: ``QueueError/closed``, ``QueueError/itemTooLarge(size:limit:)``,
    ///   ``QueueError/batchTooLarge``, ``QueueError/nodeStopped``, ``QueueError/cancelled``,
    ///   ``QueueError/timeout``.
    public func push(_ items: [UInt8]..., timeout: Duration? = nil) async throws(QueueError) {
        try await push(contentsOf: items, timeout: timeout)
    }

    /// Appends the items in order, as one batch; waits while the queue is full, up to
    /// `timeout` (as the variadic `push(_:timeout:)`).
    public func push(contentsOf items: [[UInt8]], timeout: Duration? = nil) async throws(QueueError) {
        try await pushResult(PushItems(items), wait: true, timeout: timeout).get()
    }

    /// Appends the batch's items in order; waits while the queue is full, up to `timeout`. The
    /// queue keeps the batch's one buffer (no allocation per item).
    public func push(_ batch: ItemBatch, timeout: Duration? = nil) async throws(QueueError) {
        try await pushResult(.batch(batch), wait: true, timeout: timeout).get()
    }

    /// Appends the items if there is room now; false if the queue is full.
    ///
    /// - Throws: as ``push(contentsOf:)``, never waiting.
    public func tryPush(_ items: [UInt8]...) async throws(QueueError) -> Bool {
        try await tryPush(contentsOf: items)
    }

    /// Appends the items, as one batch, if there is room for all of them now; false if not.
    public func tryPush(contentsOf items: [[UInt8]]) async throws(QueueError) -> Bool {
        try await tryPushItems(PushItems(items))
    }

    /// Appends the batch's items if there is room for all of them now; false if not.
    public func tryPush(_ batch: ItemBatch) async throws(QueueError) -> Bool {
        try await tryPushItems(.batch(batch))
    }

    private func tryPushItems(_ items: PushItems) async throws(QueueError) -> Bool {
        switch await pushResult(items, wait: false) {
        case .success: return true
        case .failure(.timeout): return false
        case .failure(let error): throw error
        }
    }

    private func pushResult(_ items: PushItems, wait: Bool, timeout: Duration? = nil) async -> Result<Void, QueueError> {
        let name = self.name
        let node = self.node
        guard wait else {
            return await withCheckedContinuation { (continuation: QueueShell.PushContinuation) in
                // The payloads are made on the reactor thread: all the per-item reference
                // counting on a batch's shared buffer stays on one core.
                let running = node.executeOnCore { core in core.queues.push(name, items, wait: false, continuation) }
                if !running { continuation.resume(returning: .failure(.nodeStopped)) }
            }
        }
        // A waiting push must leave the queue's books when its task is cancelled: otherwise it
        // holds its items' memory and pushes them later for a caller that has gone.
        let waiter = WaiterBox()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: QueueShell.PushContinuation) in
                let running = node.executeOnCore { core in
                    let id = core.queues.push(name, items, wait: true, timeout: timeout, continuation)
                    if let id, waiter.set(WaiterID(id)) { core.queues.withdrawPush(name, id, with: .cancelled) }
                }
                if !running { continuation.resume(returning: .failure(.nodeStopped)) }
            }
        } onCancel: {
            if let id = waiter.cancel() {
                _ = node.executeOnCore { core in core.queues.withdrawPush(name, id.rawValue, with: .cancelled) }
            }
        }
    }

    /// Pushes waiting for room in this queue on this node, and the bytes they hold.
    public func waitingPushes() async -> (count: Int, bytes: Int) {
        let name = self.name
        return await node.withCore { core in core.queues.waitingPushes(name) } ?? (0, 0)
    }

    /// One item; waits up to `timeout` (forever if nil). Waiting pops are served first-in
    /// first-out.
    ///
    /// - Throws: ``QueueError/timeout``, ``QueueError/closed``, ``QueueError/cancelled``,
    ///   ``QueueError/nodeStopped``.
    public func pop(timeout: Duration? = nil) async throws(QueueError) -> [UInt8] {
        try await pop(max: 1, timeout: timeout)[0]
    }

    /// Up to `max` items (at least one); waits up to `timeout` for the first.
    public func pop(max: Int, timeout: Duration? = nil) async throws(QueueError) -> [[UInt8]] {
        // Each item is copied out of the shared buffers here, on the caller's thread (an item
        // that is a whole array, as large ones are, is handed out as it is).
        try await popItems(max: max, timeout: timeout).arrays
    }

    /// As ``pop(max:timeout:)``, without copying: the items share the buffers they arrived in
    /// (one per received transfer of small items, or the pushed ``ItemBatch``), and the batch
    /// holds each buffer once, so it is handed over and let go without a reference-count
    /// operation per item. Read items in place with ``ItemPayloads/withUnsafeBytes(at:_:)``;
    /// an element (``ItemPayload``) keeps its buffer alive while it is kept.
    public func popPayloads(max: Int, timeout: Duration? = nil) async throws(QueueError) -> ItemPayloads {
        try await popItems(max: max, timeout: timeout)
    }

    func popItems(max: Int, timeout: Duration?) async throws(QueueError) -> ItemPayloads {
        let name = self.name
        let node = self.node
        let waiter = WaiterBox()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: QueueShell.PopContinuation) in
                let running = node.executeOnCore { core in
                    let id = core.queues.pop(name, max: Swift.max(1, max), timeout: timeout, continuation)
                    if let id, waiter.set(id) { core.queues.cancel(name, id) }
                }
                if !running { continuation.resume(returning: .failure(.nodeStopped)) }
            }
        } onCancel: {
            if let id = waiter.cancel() {
                _ = node.executeOnCore { core in core.queues.cancel(name, id) }
            }
        }
        return try result.get()
    }

    /// Waits until every item pushed into this queue on this node before the call is safe from
    /// this node's loss: a peer acknowledged holding it (its transfer's ack), or it was popped.
    /// It does not move items: a node without consumers gives its items to consumer peers as
    /// fast as they take them; a node with consumers keeps its items, so its flush waits for
    /// their pops. With ``DeliveryMode/atMostOnce`` it waits until those items left the local
    /// queue and their transfers were acknowledged.
    ///
    /// - Throws: ``QueueError/timeout`` after `timeout`; ``QueueError/noLivePeer`` when such
    ///   items are only here and no peer that takes transfers is connected;
    ///   ``QueueError/nodeStopped``.
    public func flush(timeout: Duration = .seconds(30)) async throws(QueueError) {
        let name = self.name
        let result = await withCheckedContinuation { (continuation: QueueShell.PushContinuation) in
            let running = node.executeOnCore { core in
                core.queues.flush(name, timeout: timeout) { continuation.resume(returning: $0) }
            }
            if !running { continuation.resume(returning: .failure(.nodeStopped)) }
        }
        try result.get()
    }

    /// The local count and an estimate of the cluster-wide count.
    public func size() async -> QueueSize {
        let name = self.name
        return await node.withCore { core in core.queues.size(name) } ?? QueueSize(local: 0, cluster: 0)
    }

    /// Counters of the local queue (pushes, pops, transfers, duplicates), nil before first use.
    public func counters() async -> QueueCounters? {
        let name = self.name
        return await node.withCore { core in core.queues.counters(name) } ?? nil
    }

    /// Stops accepting pushes on this node, fails its waiting pops with ``QueueError/closed``
    /// and hands its items to live peers (those that accept work; with none connected the items
    /// stay here and peers can still steal them). The node keeps running.
    public func close() async {
        let name = self.name
        _ = await node.withCore { core in core.queues.close(name) }
    }
}

/// The waiter ID of a pop, shared between the reactor and a cancellation handler.
final class WaiterBox: Sendable {
    private enum State: Sendable { case pending, waiting(WaiterID), cancelled }
    private let state = Mutex<State>(.pending)

    /// Records the waiter; true if the pop was already cancelled (the caller cancels it).
    func set(_ id: WaiterID) -> Bool {
        state.withLock { state in
            if case .cancelled = state { return true }
            state = .waiting(id)
            return false
        }
    }

    /// Marks the pop cancelled; the waiter to cancel, if it is already registered.
    func cancel() -> WaiterID? {
        state.withLock { state in
            defer { state = .cancelled }
            if case .waiting(let id) = state { return id }
            return nil
        }
    }
}
