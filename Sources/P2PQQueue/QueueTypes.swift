import P2PQWire

/// How a queue balances load between nodes.
public enum BalanceStrategy: Hashable, Sendable {
    /// Gossip every stats interval, steal on idle, dispatch new items to idle peers, push
    /// surplus from nodes whose finish time is well above the balanced one. The default.
    case adaptive
    /// p2pqueue's scheme, for comparison: every stats interval (2 s in
    /// ``QueueConfiguration/legacy``) a node about 10% above the average finish time E sends
    /// `round((F - E) / (popTime + avgPopTime))` items, split over up to 4 random peers. No
    /// stealing, no dispatch; producer-only nodes report finish time 0 and attract work.
    case legacy
}

/// Whether the owner of an item tracks it until it is popped.
public enum DeliveryMode: Hashable, Sendable {
    /// The owner keeps a copy of each item until it hears the item was popped, and re-queues
    /// the items a dead node held. Duplicates arise only from faults. The default.
    case atLeastOnce
    /// No ownership records and no pop confirmations: faster, but items held by a node that
    /// dies are lost. Transfers are still acknowledged (a failed link loses nothing).
    case atMostOnce
}

/// Whether an owner keeps a second copy of the items it queues itself on a peer
/// (``DeliveryMode/atLeastOnce`` only; ``DeliveryMode/atMostOnce`` never replicates).
public enum Replication: Hashable, Sendable {
    /// Each pushed item is copied to one live peer that keeps replicas
    /// (``QueueWire/featureReplicas``) and the push completes when that peer acknowledges the
    /// copy. The peer re-queues the copies of an owner declared dead that were not released
    /// (popped, or acknowledged by a holder). Only the death of both the owner and the replica
    /// holder before the item moves can lose it. With no such peer alive, a push completes at
    /// once, unreplicated (as ``local``). The default.
    case replicated
    /// No replicas: a push completes as soon as the item is queued here; the items an owner
    /// still queues itself are lost if it dies (SIGKILL, power loss). Faster.
    case local
}

/// The knobs of a ``QueueMachine``. Durations are monotonic nanoseconds.
///
/// ## Memory bounds
/// - Local queue plus outgoing transfers in flight plus leased items not acked yet: ``maxItems``
///   items and ``maxBytes`` payload bytes. A push that would exceed them is refused
///   (backpressure); so is a transfer. Delivery counts of items leased here: at most
///   ``maxItems`` entries (beyond, an arbitrary one is forgotten: that item counts lower).
/// - In-flight transfers: at most ``maxTransfersInFlightPerPeer`` per peer, each at most
///   ``maxTransferItems`` items and one frame (``maxFrameSize``); counted in the limits above.
/// - Ownership records: at most ``maxOwnedItems`` items and ``maxOwnedBytes`` bytes (shared with
///   the local queue while the item is here); pushes are refused beyond them.
/// - Duplicate detection: the last ``dedupCapacity`` to `2 × dedupCapacity` received item
///   copies (two generations), and up to 65,536 interned origins.
/// - Pending pop confirmations and custody notices: at most ``maxPendingRunsPerOwner`` runs per
///   owner (consecutive sequence numbers share a run); beyond, the oldest are dropped (the owner
///   then keeps those records until the holder's death re-queues them: a duplicate, never a loss).
/// - Replicas kept for peers (the shelf): at most ``maxItems`` items and ``maxBytes`` bytes,
///   besides the limits above; a replica beyond them is refused (the owner tries another peer).
///   Runs this node re-queued from a dead owner's replicas: the last 1,024.
/// - Owner updates awaiting their ack: at most 8 per owner (one frame each); applied update
///   IDs remembered: 1,024 per peer.
/// - Peer load views: at most ``maxTrackedPeers``; waiting consumers: at most ``maxWaiters``;
///   dead peers remembered: 1024; holder handles of the ownership records: one per peer that
///   took custody of an item and has not been declared dead since.
/// - The byte limits count payload bytes. Items may share a buffer (a received transfer of
///   small items, a pushed `ItemBatch`), which lives until its last item is gone: a transfer's
///   when its items have left the queue (in order, so only the head's is partly used), a
///   batch's when its owner has heard all of its items were popped.
public struct QueueConfiguration: Hashable, Sendable {
    public var strategy: BalanceStrategy
    public var delivery: DeliveryMode
    /// Whether pushed items are replicated on a peer (``Replication``); at least once only.
    public var replication: Replication = .replicated
    /// Most items held (queued plus outgoing in flight). The default, 131,072, is 32 full
    /// transfers: ample for the pipeline to peers, and a producer that runs ahead waits instead
    /// of growing a backlog whose memory (about 200 bytes per small item, owner's record
    /// included) costs more to fault in than the items cost to move.
    public var maxItems: Int
    /// Most payload bytes held (queued plus outgoing in flight).
    public var maxBytes: Int
    /// The peers' frame limit: a transfer never exceeds it, and an item must fit in one.
    public var maxFrameSize: Int
    /// How often load stats are gossiped (and, for the legacy strategy, how often it pushes).
    public var statsInterval: UInt64
    /// A peer's report older than this is ignored for decisions.
    public var statsMaxAge: UInt64
    /// Weight of the newest sample in the service-rate EWMA, in (0, 1].
    public var rateSmoothing: Double
    /// Rate assumed for a node with consumers but no measured rate yet, pops per second.
    public var minimumRate: Double
    /// Push to balance only when the finish time exceeds the balanced one by this fraction.
    public var balanceThreshold: Double
    /// ... and by at least this many seconds.
    public var minimumImbalance: Double
    /// After receiving a transfer, no push to balance for this long (no ping-pong on stale stats).
    public var rebalanceCooldown: UInt64
    /// Most items in one transfer.
    public var maxTransferItems: Int
    /// Most unacknowledged transfers to one peer.
    public var maxTransfersInFlightPerPeer: Int
    /// An unacknowledged transfer is taken back after this long (its link may have changed).
    public var transferTimeout: UInt64
    /// A steal request without answer is given up after this long (default: two stats intervals).
    public var stealTimeout: UInt64
    /// Pop confirmations wait at most this long to be batched.
    public var confirmDelay: UInt64
    /// ... or until this many are pending for one owner.
    public var confirmBatch: Int
    public var maxOwnedItems: Int
    public var maxOwnedBytes: Int
    public var dedupCapacity: Int
    public var maxPendingRunsPerOwner: Int
    public var maxWaiters: Int
    public var maxTrackedPeers: Int
    /// A node that has not popped for this long (and has nobody waiting) counts as having no
    /// consumers: a pure source.
    public var consumerIdleTimeout: UInt64
    /// Seeds the legacy strategy's random peer choice.
    public var seed: UInt64
    /// The first item sequence number. A node that restarts under the same identity must
    /// start above every number its previous run used (the shell passes its incarnation, the
    /// wall-clock nanoseconds at start), so old copies are never taken for new items.
    public var firstSequence: UInt64
    /// An input this much later than the one before means the process was not running
    /// (SIGSTOP, a paused VM; the stats timer brings an input every ``statsInterval``): owners
    /// may have declared it dead and re-queued what it holds, so their items are held back until
    /// each owner names the stale copies. Below the fastest death verdict of a silent node (a
    /// failed probe plus the minimum suspicion, about 1.25 s with the default membership
    /// settings) and well above ``statsInterval``.
    public var stallThreshold: UInt64 = 1_000_000_000
    /// Items held back after a stall or a death verdict wait this long for their owner's
    /// custody verdict, then are released unchecked (a duplicate at worst). Long enough for a
    /// link to come back after a long pause (the redial backoff reaches 10 s); an owner this
    /// node declares dead releases them at once.
    public var custodyCheckTimeout: UInt64 = 30_000_000_000
    /// Confirmations and custody news for an owner declared dead are kept this long (it may
    /// have been paused or cut off one way and come back), then dropped.
    public var deadOwnerRetention: UInt64 = 60_000_000_000
    /// Leased items delivered this often without an ack go to a dead-letter queue on this node
    /// (then count as consumed); nil: they are delivered again as often as it takes.
    public var deadLetter: DeadLetterPolicy? = nil
    /// A dead-lettered item the dead-letter queue could not take (full) is tried again this
    /// much later; it stays held here meanwhile.
    public var deadLetterRetry: UInt64 = 1_000_000_000

    public init(
        strategy: BalanceStrategy = .adaptive,
        delivery: DeliveryMode = .atLeastOnce,
        maxItems: Int = 131_072,
        maxBytes: Int = 256 << 20,
        maxFrameSize: Int = WireProtocol.defaultMaxFrameSize,
        statsInterval: UInt64 = 250_000_000,
        statsMaxAge: UInt64? = nil,
        rateSmoothing: Double = 0.3,
        minimumRate: Double = 1,
        balanceThreshold: Double = 0.25,
        minimumImbalance: Double = 0.1,
        rebalanceCooldown: UInt64? = nil,
        maxTransferItems: Int = 4096,
        maxTransfersInFlightPerPeer: Int = 4,
        transferTimeout: UInt64 = 5_000_000_000,
        stealTimeout: UInt64? = nil,
        confirmDelay: UInt64 = 10_000_000,
        confirmBatch: Int = 4096,
        maxOwnedItems: Int = 2_000_000,
        maxOwnedBytes: Int = 512 << 20,
        dedupCapacity: Int = 1 << 16,
        maxPendingRunsPerOwner: Int = 1 << 16,
        maxWaiters: Int = 1 << 16,
        maxTrackedPeers: Int = 1024,
        consumerIdleTimeout: UInt64 = 5_000_000_000,
        seed: UInt64 = 0x9E37_79B9_7F4A_7C15,
        firstSequence: UInt64 = 1
    ) {
        self.strategy = strategy
        self.delivery = delivery
        self.maxItems = maxItems
        self.maxBytes = maxBytes
        self.maxFrameSize = maxFrameSize
        self.statsInterval = statsInterval
        self.statsMaxAge = statsMaxAge ?? 4 * statsInterval
        self.rateSmoothing = rateSmoothing
        self.minimumRate = minimumRate
        self.balanceThreshold = balanceThreshold
        self.minimumImbalance = minimumImbalance
        self.rebalanceCooldown = rebalanceCooldown ?? 2 * statsInterval
        self.maxTransferItems = maxTransferItems
        self.maxTransfersInFlightPerPeer = maxTransfersInFlightPerPeer
        self.transferTimeout = transferTimeout
        self.stealTimeout = stealTimeout ?? 2 * statsInterval
        self.confirmDelay = confirmDelay
        self.confirmBatch = confirmBatch
        self.maxOwnedItems = maxOwnedItems
        self.maxOwnedBytes = maxOwnedBytes
        self.dedupCapacity = dedupCapacity
        self.maxPendingRunsPerOwner = maxPendingRunsPerOwner
        self.maxWaiters = maxWaiters
        self.maxTrackedPeers = maxTrackedPeers
        self.consumerIdleTimeout = consumerIdleTimeout
        self.seed = seed
        self.firstSequence = Swift.max(1, firstSequence)
    }

    /// p2pqueue's scheme: the legacy strategy, gossiping and pushing every 2 s.
    public static var legacy: QueueConfiguration {
        QueueConfiguration(strategy: .legacy, statsInterval: 2_000_000_000)
    }

    /// The largest payload one item may have: it must fit in one transfer frame.
    public func maxItemSize(queueNameLength: Int) -> Int {
        maxFrameSize - 1 - QueueWire.transferOverhead(queueNameLength: queueNameLength)
            - QueueWire.originSize - QueueWire.runOverhead - QueueWire.itemOverhead
    }
}

/// Names a consumer waiting in a pop; allocated by the shell, never reused while it waits.
public struct WaiterID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "waiter \(rawValue)" }
}

/// What became of a push.
public enum PushOutcome: Hashable, Sendable {
    /// The items are in the local queue (or on their way to an idle peer) and tracked.
    case accepted
    /// The queue (or its ownership records) is at its limit: try again after `.spaceAvailable`.
    case full
    /// The queue is closed.
    case closed
    /// An item is larger than one transfer frame can carry (`limit` bytes).
    case itemTooLarge(size: Int, limit: Int)
    /// The batch alone exceeds the queue's limits; it could never be accepted whole.
    case batchTooLarge
}

/// Why a waiting pop failed.
public enum PopFailure: Hashable, Sendable {
    /// The queue was closed.
    case closed
    /// Too many consumers are already waiting (``QueueConfiguration/maxWaiters``).
    case tooManyWaiters
}

/// What the shell must do after an input to ``QueueMachine``, in order.
public enum QueueAction: Sendable, Equatable {
    /// Send the message to the peer. If it cannot be sent (no ready link), report it back with
    /// ``QueueMachine/sendFailed(_:to:now:)``.
    case send(QueueMessage, to: PeerID)
    /// Hand these payloads, in this order, to the waiting consumer.
    case deliver(WaiterID, ItemPayloads)
    /// Hand these leased items, in this order, to the waiting consumer of a leased pop.
    case deliverLeased(WaiterID, [LeasedPayload])
    /// Push the item into the dead-letter queue `queue` on this node, then report it with
    /// ``QueueMachine/deadLettered(_:now:)``; if the push fails, do nothing: the machine
    /// asks again after ``QueueConfiguration/deadLetterRetry``.
    case deadLetter(LeaseToken, ItemPayload, queue: String)
    /// The waiting consumer's pop failed.
    case fail(WaiterID, PopFailure)
    /// A push refused as `.full` may now succeed: retry the waiting pushers (in order).
    case spaceAvailable
    /// Arm the queue's single timer for this monotonic time, replacing any earlier one; call
    /// ``QueueMachine/tick(now:)`` when it fires.
    case armTimer(at: UInt64)
}

/// Counters of a queue, for stats output and tests.
public struct QueueCounters: Hashable, Sendable {
    /// Items pushed here.
    public var pushed = 0
    /// Items popped here.
    public var popped = 0
    /// Items sent to peers and acknowledged.
    public var transferredOut = 0
    /// Items accepted from peers.
    public var transferredIn = 0
    /// ``transferredOut`` and ``transferredIn`` by peer (counted per transfer, not per item),
    /// for the dashboard's flows. Past 1,024 peers, those the machine no longer tracks are
    /// dropped.
    public var transferredOutByPeer: [PeerID: Int] = [:]
    public var transferredInByPeer: [PeerID: Int] = [:]
    /// Transfers by kind, counted when acknowledged.
    public var transfersByKind: [TransferKind: Int] = [:]
    /// Received item copies dropped as duplicates of a recent one (a retransmission after a
    /// lost acknowledgement).
    public var duplicatesDropped = 0
    /// Pop confirmations for items this owner had no record of any more: the item was popped
    /// twice (a duplicate caused by a fault).
    public var duplicatePops = 0
    /// Items this owner re-queued because the node holding them died.
    public var requeuedAfterDeath = 0
    /// Items taken back from a transfer that failed, timed out or was refused.
    public var returnedFromTransfers = 0
    /// Items of unacknowledged transfers sent again on a peer's new link when its link was
    /// replaced (``QueueMachine/peerLinkReplaced(_:adoptsOwnership:keepsReplicas:now:)``).
    public var transfersSentAgain = 0
    /// Peers' load reports rejected (invalid or stale).
    public var statsRejected = 0
    /// Steal requests sent, answered with items, answered empty.
    public var stealsSent = 0
    public var stealsAnswered = 0
    public var stealsEmpty = 0
    /// Pending confirmations dropped because an owner's backlog was full.
    public var noticesDropped = 0
    /// Items removed from the local queue by ``QueueMachine/remove(where:now:)``.
    public var removed = 0
    /// Items this node owned that a peer acknowledged in a ``TransferKind/drain`` transfer: the
    /// peer owns them now.
    public var ownershipHandedOver = 0
    /// Items received in a ``TransferKind/drain`` transfer whose ownership this node took over.
    public var ownershipAdopted = 0
    /// Items of pop confirmations and custody notices their owners acknowledged.
    public var noticesAcknowledged = 0

    // Leases.
    /// Items handed out under a lease (each delivery counts).
    public var leased = 0
    /// Leased items acknowledged (also counted in ``popped``).
    public var acknowledged = 0
    /// Leased items nacked, and leases that ended without an ack: the items went back to the
    /// front of the local queue (or to the dead-letter queue).
    public var nacked = 0
    public var leasesExpired = 0
    /// Items pushed into the dead-letter queue after too many deliveries.
    public var deadLettered = 0

    // Trust: what members may not do (docs/operations.md, "Trust model").
    /// Pop confirmations (items) held because their sender was not the items' recorded
    /// holder when they arrived; applied if custody news then names the sender.
    public var confirmationsHeld = 0
    /// Of those, applied once custody news named their sender (the race, not a forgery).
    public var confirmationsApplied = 0
    /// Held pop confirmations dropped: no custody news named their sender in time (a forged
    /// confirmation, or one of a duplicate delivery). The items stay owned.
    public var confirmationsRefused = 0
    /// Copies dropped before any consumer got them because their owner had re-queued the item
    /// (this node had been declared dead) or had it confirmed popped elsewhere.
    public var staleCopiesDropped = 0
    /// Own items whose replica a peer acknowledged.
    public var replicated = 0
    /// Own items whose replica a peer refused (full or closed) or did not acknowledge in time.
    public var replicasRefused = 0
    /// Replicas kept here for other owners.
    public var replicasKept = 0
    /// Replicas of a dead owner queued here as this node's own items.
    public var replicasRequeued = 0

    public init() {}
}

extension QueueCounters {
    /// The scalar counters by field name, for a node's `/status` (the per-peer and per-kind
    /// tables are left out: the dashboard shows those). Beside the fields, so that a new
    /// counter is listed where it is declared.
    public var named: [String: Int] {
        [
            "pushed": pushed, "popped": popped, "transferredOut": transferredOut, "transferredIn": transferredIn,
            "duplicatesDropped": duplicatesDropped, "duplicatePops": duplicatePops, "requeuedAfterDeath": requeuedAfterDeath,
            "returnedFromTransfers": returnedFromTransfers, "transfersSentAgain": transfersSentAgain,
            "statsRejected": statsRejected, "stealsSent": stealsSent, "stealsAnswered": stealsAnswered, "stealsEmpty": stealsEmpty,
            "noticesDropped": noticesDropped, "removed": removed, "ownershipHandedOver": ownershipHandedOver,
            "ownershipAdopted": ownershipAdopted, "noticesAcknowledged": noticesAcknowledged, "leased": leased,
            "acknowledged": acknowledged, "nacked": nacked, "leasesExpired": leasesExpired, "deadLettered": deadLettered,
            "confirmationsHeld": confirmationsHeld, "confirmationsApplied": confirmationsApplied,
            "confirmationsRefused": confirmationsRefused, "staleCopiesDropped": staleCopiesDropped, "replicated": replicated,
            "replicasRefused": replicasRefused, "replicasKept": replicasKept, "replicasRequeued": replicasRequeued,
        ]
    }
}

/// Why a peer's load report was rejected.
public enum StatsRejection: Equatable, Sendable {
    /// A field was NaN, infinite, negative or absurd.
    case invalid(WireError)
    /// Its sequence number was not above the last accepted one.
    case stale(sequence: UInt64, last: UInt64)
    /// Too many peers are tracked already.
    case tooManyPeers
}

/// Where a queue's graceful stop (``QueueMachine/drain(now:)``) stands.
public struct DrainProgress: Hashable, Sendable {
    /// Items still queued here.
    public var queued: Int
    /// Items in transfers not acknowledged yet.
    public var inFlight: Int
    /// Items of pop confirmations and custody notices for connected owners, not acknowledged yet.
    public var pendingNotices: Int
    /// Items of pop confirmations and custody notices whose owner has no link now.
    public var unreachableNotices: Int
    /// A connected peer that takes transfers exists.
    public var hasLivePeer: Bool

    public init(queued: Int, inFlight: Int, pendingNotices: Int, unreachableNotices: Int, hasLivePeer: Bool) {
        self.queued = queued
        self.inFlight = inFlight
        self.pendingNotices = pendingNotices
        self.unreachableNotices = unreachableNotices
        self.hasLivePeer = hasLivePeer
    }

    /// Nothing left to hand over or to confirm to a reachable owner.
    public var isComplete: Bool { queued == 0 && inFlight == 0 && pendingNotices == 0 }
    /// Waiting longer cannot help: what is left needs a peer and none is connected.
    public var isStuck: Bool { !isComplete && inFlight == 0 && pendingNotices == 0 && !hasLivePeer }
}

// MARK: Leases (consumer acknowledgements)

/// Names one leased item on the node that leased it (see ``QueueMachine/popLeased(max:lease:waiter:now:)``).
/// Numbered from the queue's first sequence (the node's start time), so a token from an
/// earlier run of the node is not taken for a new lease.
public struct LeaseToken: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: LeaseToken, rhs: LeaseToken) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }
}

/// An item handed out under a lease: it stays held on this node until ``QueueMachine/ack(_:now:)``
/// (then its owner hears it was popped), ``QueueMachine/nack(_:now:)`` or the lease's end (then
/// it goes back to the front of the local queue).
public struct LeasedPayload: Sendable, Equatable {
    public var token: LeaseToken
    public var payload: ItemPayload
    /// How many times the item has been handed out, this time included: deliveries on this node
    /// plus the times its owner re-queued it after the node holding it died.
    public var deliveryCount: Int

    public init(token: LeaseToken, payload: ItemPayload, deliveryCount: Int) {
        self.token = token
        self.payload = payload
        self.deliveryCount = deliveryCount
    }
}

/// Where items go that were delivered too often without an ack (``QueueConfiguration/deadLetter``).
public struct DeadLetterPolicy: Hashable, Sendable {
    /// An item whose lease ends or is nacked after this many deliveries (at least 1) goes to ``queue``.
    public var maxDeliveries: Int
    /// The dead-letter queue, on the same node. Its own items are never dead-lettered.
    public var queue: String

    public init(maxDeliveries: Int, queue: String) {
        precondition(maxDeliveries >= 1, "maxDeliveries must be at least 1")
        precondition((1...QueueWire.maxQueueNameLength).contains(queue.utf8.count), "queue name must be 1...255 UTF-8 bytes")
        self.maxDeliveries = maxDeliveries
        self.queue = queue
    }
}
