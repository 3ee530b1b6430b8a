/// Why a queue operation failed.
public enum QueueError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `pop(timeout:)` found nothing before the timeout.
    case timeout
    /// The queue is closed (on this node).
    case closed
    /// An item is larger than one frame can carry.
    case itemTooLarge(size: Int, limit: Int)
    /// A batch larger than the queue's limits: it could never be accepted whole.
    case batchTooLarge
    /// Too many pops are waiting already.
    case tooManyWaiters
    /// The node is not running.
    case nodeStopped
    /// The waiting task was cancelled.
    case cancelled
    /// Too many named queues on this node.
    case tooManyQueues
    /// ``QueueHandle/flush(timeout:)``: items are held only here and no peer that takes
    /// transfers is connected.
    case noLivePeer
    /// ``QueueHandle/ack(_:)`` or ``QueueHandle/nack(_:)``: these tokens name no item leased on
    /// this node (the lease ended and the item went back to the queue, it was acked already, or
    /// the token is from another node or an earlier run). The other tokens were applied.
    case unknownLease([LeaseToken])
    /// A lease must last more than 0 and at most 12 hours.
    case invalidLease

    public var description: String {
        switch self {
        case .timeout: return "timed out"
        case .closed: return "the queue is closed"
        case .itemTooLarge(let size, let limit): return "item of \(size) bytes exceeds the limit of \(limit)"
        case .batchTooLarge: return "the batch exceeds the queue's limits"
        case .tooManyWaiters: return "too many waiting pops"
        case .nodeStopped: return "the node is not running"
        case .cancelled: return "cancelled"
        case .tooManyQueues: return "too many named queues"
        case .noLivePeer: return "no live peer to hold the items"
        case .unknownLease(let tokens):
            return "no item is leased under \(tokens.count == 1 ? "token" : "tokens") \(tokens.prefix(8).map(\.description).joined(separator: ", "))"
                + (tokens.count > 8 ? " (and \(tokens.count - 8) more)" : "") + " (the lease ended, or it was acked)"
        case .invalidLease: return "a lease lasts more than 0 and at most 12 hours"
        }
    }
}

/// A queue's size: the local count, and an estimate for the cluster from gossip.
public struct QueueSize: Sendable, Equatable {
    /// Items queued on this node.
    public var local: Int
    /// This node's count plus the latest counts its peers reported (fresh reports only).
    public var cluster: Int
}
