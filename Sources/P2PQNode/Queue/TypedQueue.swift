import P2PQCodable
import P2PQWire

/// Why a typed queue operation failed.
public enum TypedQueueError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The queue itself failed (timeout, closed, ...).
    case queue(QueueError)
    /// An item could not be encoded; nothing was pushed.
    case encoding(CompactCodingError)
    /// A popped item did not decode as the queue's type.
    ///
    /// The item has left the queue (it was popped and its owner told so); it is not dropped
    /// silently: `payloads` holds the raw bytes of the whole popped batch, in order, and `index`
    /// names the first that failed (the items before it decoded). Push them back, log them or
    /// park them elsewhere.
    case decoding(CompactCodingError, index: Int, payloads: [[UInt8]])

    public var description: String {
        switch self {
        case .queue(let error): return "\(error)"
        case .encoding(let error): return "item not encodable: \(error)"
        case .decoding(let error, let index, let payloads):
            return "item \(index) of \(payloads.count) popped is not decodable: \(error)"
        }
    }
}

extension Node {
    /// A typed view of the named queue: items are `T` values in the compact encoding
    /// (docs/encoding.md). Every node using the queue must use the same type.
    public func queue<T: Codable & Sendable>(named name: String = Node.defaultQueueName, of type: T.Type) -> TypedQueue<T> {
        TypedQueue(queue(named: name))
    }
}

/// A queue of `Codable` values over a ``QueueHandle``, encoded with `CompactEncoder`.
///
/// Same ordering, delivery and limits as the raw handle; the limits count encoded bytes.
public struct TypedQueue<T: Codable & Sendable>: Sendable {
    /// The raw queue underneath.
    public let raw: QueueHandle
    private let encoder = CompactEncoder()
    private let decoder = CompactDecoder()

    public init(_ raw: QueueHandle) {
        self.raw = raw
    }

    /// The items encoded back to back into one batch (no array per item).
    private func encode(_ items: some Sequence<T>) throws(TypedQueueError) -> ItemBatch {
        var batch = ItemBatch(capacity: items.underestimatedCount)
        for item in items {
            do throws(CompactCodingError) {
                try batch.append { (bytes: inout [UInt8]) throws(CompactCodingError) in try encoder.encode(item, into: &bytes) }
            } catch {
                throw .encoding(error)
            }
        }
        return batch
    }

    /// Decodes the items in place (no array per item).
    private func decode(_ payloads: ItemPayloads) throws(TypedQueueError) -> [T] {
        var out: [T] = []
        out.reserveCapacity(payloads.count)
        for index in payloads.indices {
            do throws(CompactCodingError) {
                out.append(try payloads.withUnsafeBytes(at: index) { (raw) throws(CompactCodingError) -> T in
                    try decoder.decode(T.self, from: raw)
                })
            } catch {
                throw .decoding(error, index: index, payloads: payloads.arrays)
            }
        }
        return out
    }

    /// Appends the items in order; waits while the queue is full.
    public func push(_ items: T...) async throws(TypedQueueError) {
        try await push(contentsOf: items)
    }

    /// Appends the items in order, as one batch; waits while the queue is full.
    public func push(contentsOf items: some Sequence<T>) async throws(TypedQueueError) {
        let batch = try encode(items)
        do {
            try await raw.push(batch)
        } catch {
            throw .queue(error)
        }
    }

    /// Appends the items if there is room now; false if the queue is full.
    public func tryPush(_ items: T...) async throws(TypedQueueError) -> Bool {
        let batch = try encode(items)
        do {
            return try await raw.tryPush(batch)
        } catch {
            throw .queue(error)
        }
    }

    /// One item; waits up to `timeout` (forever if nil).
    public func pop(timeout: Duration? = nil) async throws(TypedQueueError) -> T {
        try await pop(max: 1, timeout: timeout)[0]
    }

    /// Up to `max` items; waits up to `timeout` for the first.
    public func pop(max: Int, timeout: Duration? = nil) async throws(TypedQueueError) -> [T] {
        let payloads: ItemPayloads
        do {
            payloads = try await raw.popPayloads(max: max, timeout: timeout)
        } catch {
            throw .queue(error)
        }
        return try decode(payloads)
    }

    /// Up to `max` items under a lease (see ``QueueHandle/pop(max:lease:timeout:)``): each value
    /// with its ``LeasedItem`` to ack or nack. If an item does not decode, the whole batch is
    /// nacked (each delivery counts towards the dead-letter bound) and `.decoding` is thrown.
    public func pop(max: Int, lease: Duration, timeout: Duration? = nil) async throws(TypedQueueError) -> [(value: T, item: LeasedItem)] {
        let items: [LeasedItem]
        do {
            items = try await raw.pop(max: max, lease: lease, timeout: timeout)
        } catch {
            throw .queue(error)
        }
        var out: [(value: T, item: LeasedItem)] = []
        out.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            do throws(CompactCodingError) {
                let value = try ItemPayload(item.bytes).withUnsafeBytes { (bytes) throws(CompactCodingError) -> T in
                    try decoder.decode(T.self, from: bytes)
                }
                out.append((value, item))
            } catch {
                try? await raw.nack(items)
                throw .decoding(error, index: index, payloads: items.map(\.bytes))
            }
        }
        return out
    }

    /// Acknowledges leased items (see ``QueueHandle/ack(_:)``).
    public func ack(_ items: [LeasedItem]) async throws(TypedQueueError) {
        do { try await raw.ack(items) } catch { throw .queue(error) }
    }

    /// Gives leased items back (see ``QueueHandle/nack(_:)``).
    public func nack(_ items: [LeasedItem]) async throws(TypedQueueError) {
        do { try await raw.nack(items) } catch { throw .queue(error) }
    }

    /// The local count and the cluster estimate.
    public func size() async -> QueueSize { await raw.size() }

    /// Closes the queue on this node (see ``QueueHandle/close()``).
    public func close() async { await raw.close() }
}
