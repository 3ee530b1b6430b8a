import P2PQQueue
import P2PQWire

/// An item popped under a lease (``QueueHandle/pop(max:lease:timeout:)``). It stays held on the
/// node that handed it out until ``ack()``; ``nack()``, the lease's end, or that node's stop
/// or death puts it back in the queue to be delivered again.
public struct LeasedItem: Sendable, Equatable {
    /// The queue it came from.
    public let queue: QueueHandle
    /// Names the lease on the node that handed the item out.
    public let token: LeaseToken
    public let bytes: [UInt8]
    /// How many times the item has been handed out, this time included (see
    /// ``LeasedPayload/deliveryCount``).
    public let deliveryCount: Int

    public init(queue: QueueHandle, token: LeaseToken, bytes: [UInt8], deliveryCount: Int) {
        self.queue = queue
        self.token = token
        self.bytes = bytes
        self.deliveryCount = deliveryCount
    }

    public static func == (lhs: LeasedItem, rhs: LeasedItem) -> Bool {
        lhs.queue.name == rhs.queue.name && lhs.token == rhs.token && lhs.bytes == rhs.bytes && lhs.deliveryCount == rhs.deliveryCount
    }

    /// Done: the item is consumed (see ``QueueHandle/ack(tokens:)``).
    public func ack() async throws(QueueError) { try await queue.ack(tokens: [token]) }
    /// Not done: the item goes back to the front of the queue (see ``QueueHandle/nack(tokens:)``).
    public func nack() async throws(QueueError) { try await queue.nack(tokens: [token]) }
}

extension QueueHandle {
    /// The longest lease a pop may ask for.
    public static let maxLease: Duration = .seconds(12 * 3600)

    /// Up to `max` items under a lease of `lease` (at least one item; waits up to `timeout` for
    /// the first, forever if nil). Unlike ``pop(max:timeout:)``, an item is not consumed when
    /// it is returned: ack it when the work is done. An item not acked before its lease ends,
    /// nacked, or held by a node that stops or dies, is queued again (at the front) and
    /// delivered again with a higher ``LeasedItem/deliveryCount``; after
    /// ``QueueConfiguration/deadLetter``'s maximum it goes to the dead-letter queue instead.
    /// Leased items stay on this node and count against its limits until acked.
    ///
    /// - Throws: ``QueueError/invalidLease`` (not in 1 ns ... ``maxLease``), and as
    ///   ``pop(max:timeout:)``.
    public func pop(max: Int, lease: Duration, timeout: Duration? = nil) async throws(QueueError) -> [LeasedItem] {
        let payloads = try await popLeasedPayloads(max: max, lease: lease, timeout: timeout)
        return payloads.map { LeasedItem(queue: self, token: $0.token, bytes: $0.payload.bytes, deliveryCount: $0.deliveryCount) }
    }

    func popLeasedPayloads(max: Int, lease: Duration, timeout: Duration?) async throws(QueueError) -> [LeasedPayload] {
        guard lease > .zero, lease <= Self.maxLease else { throw .invalidLease }
        let (seconds, attoseconds) = lease.components
        let nanoseconds = Swift.max(1, UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000))
        let name = self.name
        let node = self.node
        let waiter = WaiterBox()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<[LeasedPayload], QueueError>, Never>) in
                let running = node.executeOnCore { core in
                    let id = core.queues.popLeased(name, max: Swift.max(1, max), lease: nanoseconds, timeout: timeout) {
                        continuation.resume(returning: $0)
                    }
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

    /// Acknowledges leased items: each is consumed (its owner hears it was popped).
    ///
    /// - Throws: ``QueueError/unknownLease(_:)`` naming the items no longer leased (their lease
    ///   ended and they went back to the queue, or they were acked already); the others are
    ///   acknowledged all the same. ``QueueError/nodeStopped``.
    public func ack(_ items: [LeasedItem]) async throws(QueueError) {
        try await ack(tokens: items.map(\.token))
    }

    /// Acknowledges leased items by token (as ``ack(_:)``).
    public func ack(tokens: [LeaseToken]) async throws(QueueError) {
        let name = self.name
        let result = await node.withCore { core in core.queues.ack(name, tokens) } ?? .failure(.nodeStopped)
        _ = try result.get()
    }

    /// Gives leased items back undone: each goes to the front of this node's queue and is
    /// delivered again (or dead-lettered). Throws as ``ack(_:)``.
    public func nack(_ items: [LeasedItem]) async throws(QueueError) {
        try await nack(tokens: items.map(\.token))
    }

    /// Gives leased items back by token (as ``nack(_:)``).
    public func nack(tokens: [LeaseToken]) async throws(QueueError) {
        let name = self.name
        let result = await node.withCore { core in core.queues.nack(name, tokens) } ?? .failure(.nodeStopped)
        _ = try result.get()
    }

    /// Items leased on this node and not acked yet.
    public func leasedCount() async -> Int {
        let name = self.name
        return await node.withCore { core in core.queues.leasedItems(name) } ?? 0
    }
}
