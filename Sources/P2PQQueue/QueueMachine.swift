import DequeModule
import P2PQWire

/// One named queue on one node, as a plain value: the local FIFO, its limits, waiting
/// consumers, transfers to and from peers, ownership records, and the balancer.
///
/// No I/O, clocks or threads: every input carries `now` (monotonic nanoseconds) and returns the
/// ``QueueAction``s the shell performs, in order. The shell routes the queue messages of this
/// queue (``QueueMessage/queue``) to ``received(_:from:now:)``.
///
/// ## Order
/// Items leave a node (popped or transferred) in the order they entered it; items taken back
/// from a failed transfer return to the front, in their original order. Across nodes there is
/// no global order.
///
/// ## Delivery (at-least-once)
/// - An item's owner is the node where it was pushed; it keeps a record (and a copy) of each
///   item until a pop confirmation comes back. Confirmations go to owners in batches.
/// - A transfer's sender keeps its items until the receiver acknowledges them; the receiver
///   drops copies it has seen recently (same id, attempt and hop count: a retransmission).
///   A link that fails, a send that fails, a refusal or a timeout returns the items.
/// - After an acknowledged transfer the sender tells the owner where its items now are
///   (custody), so when membership declares a node dead (``peerDied(_:now:)``), its owner
///   re-queues the items it held that were never confirmed popped.
/// - Duplicates only follow faults; they are counted (``QueueCounters``).
///
/// ## Balancing (``BalanceStrategy/adaptive``)
/// Every stats interval each node gossips its ``LoadStats``. A node whose consumers wait with an
/// empty queue steals from the peer with the most to give (one round trip, batch sized from both
/// rates so both would finish together). New items go straight to a peer known to have idle
/// consumers. A node whose finish time is well above the balanced one (total items over total
/// rate) pushes its surplus to the peers furthest below it. A node without consumers reports
/// itself as such: it gives all its items away and is never sent any.
public struct QueueMachine: Sendable {
    public typealias Action = QueueAction

    /// The queue's name, carried by every message.
    public let name: String
    /// This node.
    public let localPeer: PeerID
    public let configuration: QueueConfiguration
    /// The largest payload a push accepts (one item must fit in one transfer frame).
    public let maxItemSize: Int
    public internal(set) var counters = QueueCounters()
    /// True after ``close(now:)``.
    public internal(set) var isClosed = false
    /// True after ``drain(now:)``: the node is stopping and hands everything on.
    public internal(set) var isDraining = false

    // The state below is module-internal, not private (unless only this file uses it): the
    // concern files (QueueMachine+*.swift) extend this type and share it. Nothing outside
    // QueueMachine touches it.

    // Local queue and what is out on transfers.
    /// The local FIFO: runs of consecutive items and their counts.
    var local = LocalQueue()
    /// Outgoing transfers awaiting their ack, and the copies received lately.
    var transfers: TransferLedger

    var waiters = Deque<Waiter>()

    // Leases: items handed out and held here until acked (see `popLeased`).
    var leases: [LeaseToken: Lease] = [:]
    var leasedItems = 0
    var leasedBytes = 0
    var nextLeaseToken: UInt64 = 1
    /// No lease ends (or dead-letter retry falls due) before this; may be early (a tick then
    /// finds nothing due and recomputes it).
    var nextLeaseDeadline: UInt64?
    /// Deliveries of items on this node, for their delivery count (bounded by `maxItems`).
    var localDeliveries: [LeaseKey: UInt32] = [:]
    /// Their keys in first-delivery order (some forgotten since): the oldest goes for room, not
    /// the first in dictionary order, which differs from process to process.
    var deliveryOrder = Deque<LeaseKey>()

    // Ownership.
    var nextSequence: UInt64 = 1
    var owned = SequenceTable<OwnedRecord>()
    /// The arrays every queued, in-flight and owned item's bytes are ranges of.
    var store = PayloadStore()
    var holders = HolderTable()
    var ownedBytes = 0
    var notices: [PeerID: Notices] = [:]
    /// Owner updates sent and not acknowledged yet, by update ID.
    var sentUpdates: [UInt64: SentUpdate] = [:]
    /// Owner changes a draining owner sent (IDs from the update counter), until their ack.
    var sentChanges: [UInt64: SentChange] = [:]
    /// Owner changes received whose ack waits for this node's transfers that carried the
    /// owner's items when the change came (see ``PendingChange``).
    var pendingChanges: [PendingChange] = []
    var nextUpdateID: UInt64 = 1
    /// Update IDs recently applied, per sender, so a re-sent update is applied once.
    var appliedUpdates: [PeerID: RecentIDs] = [:]
    /// Pop confirmations from a peer this owner does not record as the items' holder, held
    /// until custody news names it (see ``HeldConfirmations``).
    var heldConfirmations = HeldConfirmations()

    var peers = PeerViews()
    var deadPeers = Set<PeerID>()
    var deadOrder = Deque<PeerID>()
    /// When each peer in `deadPeers` was declared dead: the notices kept for it (it may come
    /// back) go after `deadOwnerRetention`.
    var diedAt: [PeerID: UInt64] = [:]
    /// Other owners' items held back from consumers until the owner names the stale copies.
    var heldBack: [PeerID: HeldBack] = [:]
    /// Own items held back the same way, per peer keeping their replicas, until that peer names
    /// the ones it re-queued as its own (it believed this node dead).
    var heldOwn: [PeerID: HeldBack] = [:]
    var heldBackItems = 0
    var heldBackBytes = 0
    var nextCheckID: UInt64 = 1

    // Balancer.
    var steal: OutstandingSteal?
    var nextRequestID: UInt64 = 1
    var statsSequence: UInt64 = 0
    private var nextStatsAt: UInt64?
    var rate: Double = 0
    var popsSinceSample = 0
    var starvedSinceSample = false
    var lastSampleAt: UInt64 = 0
    var lastConsumerActivity: UInt64?
    var lastTransferReceivedAt: UInt64?
    var lastBroadcastLength = 0
    var lastBroadcastAt: UInt64?
    /// Rate assumed for a consumer node not measured yet (see ``LocalLoad/effectiveRate``).
    var priorRate: Double
    /// The configured strategy's decisions.
    var balancer: QueueBalancer

    var pushBlocked = false
    var armed: UInt64?
    /// The `now` of the latest input: the timer is always armed (stats), so a healthy node
    /// sees an input at least every `statsInterval`.
    var lastInputAt: UInt64?

    // Replication, owner side: own items here that need a replica (ascending, may hold
    // sequences popped since: skipped when sent), replica transfers awaiting their ack, and
    // releases for replica holders not sent yet.
    var replicaBacklog = Deque<SequenceRun>()
    var replicaSends: [UInt64: ReplicaSend] = [:]
    var releases: [PeerID: PendingReleases] = [:]
    // The peer replicas go to while it takes them (one holder for consecutive pushes).
    var replicaPeer: PeerID?
    // Replication, holder side: other owners' replicas, held in the store but not queued.
    var shelf = ReplicaShelf()

    /// A queue named `name` on node `localPeer`.
    public init(name: String, localPeer: PeerID, configuration: QueueConfiguration = QueueConfiguration()) {
        precondition((1...QueueWire.maxQueueNameLength).contains(name.utf8.count), "queue name must be 1...255 UTF-8 bytes")
        precondition(configuration.maxItems > 0 && configuration.maxBytes > 0, "queue limits must be positive")
        precondition(configuration.statsInterval > 0, "statsInterval must be positive")
        precondition(configuration.maxTransferItems > 0 && configuration.maxTransfersInFlightPerPeer > 0)
        precondition(configuration.rateSmoothing > 0 && configuration.rateSmoothing <= 1)
        precondition(configuration.minimumRate > 0)
        self.name = name
        self.localPeer = localPeer
        self.configuration = configuration
        self.maxItemSize = configuration.maxItemSize(queueNameLength: name.utf8.count)
        precondition(maxItemSize > 0, "maxFrameSize too small for the queue name")
        self.transfers = TransferLedger(dedupCapacity: max(1, configuration.dedupCapacity))
        self.priorRate = configuration.minimumRate
        self.nextSequence = configuration.firstSequence
        self.statsSequence = configuration.firstSequence
        self.nextLeaseToken = configuration.firstSequence
        self.balancer = QueueBalancer(configuration: configuration, localPeer: localPeer)
    }

    // MARK: Producer and consumer inputs

    /// Arms the first stats round. Optional: any input does it.
    public mutating func start(now: UInt64) -> [Action] {
        var actions: [Action] = []
        finish(&actions, now: now)
        return actions
    }

    /// Appends `payloads` to the queue, all or none, in order.
    ///
    /// Waiting consumers are served first; with none, new items may go straight to a peer with
    /// idle consumers.
    public mutating func push(_ payloads: [[UInt8]], now: UInt64) -> (PushOutcome, [Action]) {
        push(count: payloads.count, size: { payloads[$0].count }, hold: { store, holds in
            // An array each: a run of one item each.
            payloads.map { array in
                PushedRun(slot: store.hold(array, ends: [], holders: holds), start: 0, bytes: UInt32(array.count), count: 1)
            }
        }, now: now)
    }

    /// Appends `payloads` to the queue, all or none, in order (see ``push(_:now:)-([[UInt8]],_)``).
    public mutating func push(_ payloads: [ItemPayload], now: UInt64) -> (PushOutcome, [Action]) {
        push(count: payloads.count, size: { payloads[$0].count }, hold: { store, holds in
            payloads.map { payload in
                PushedRun(slot: store.hold(payload, holders: holds), start: UInt32(payload.storageOffset),
                          bytes: UInt32(payload.count), count: 1)
            }
        }, now: now)
    }

    /// Appends the batch's items to the queue, all or none, in order: one run, sharing the
    /// batch's buffer and its table of item ends.
    public mutating func push(_ batch: ItemBatch, now: UInt64) -> (PushOutcome, [Action]) {
        push(count: batch.count, size: { batch.byteCount(at: $0) }, hold: { store, holds in
            let slot = store.hold(batch.bytes, ends: batch.itemEnds, holders: batch.count * holds)
            return [PushedRun(slot: slot, start: 0, bytes: UInt32(batch.byteCount), count: UInt32(batch.count))]
        }, now: now)
    }

    /// A consumer asks for up to `max` items. If items are queued (and nobody waits before it),
    /// they are delivered at once; otherwise the consumer waits, if `waiter` is given, until
    /// items arrive (waiters are served first-in first-out), ``cancelWait(_:now:)`` or close.
    ///
    /// - Returns: the items delivered now (empty if none), and the actions. A waiter that
    ///   cannot wait gets a `.fail` action.
    public mutating func pop(max: Int = 1, waiter: WaiterID?, now: UInt64) -> (ItemPayloads, [Action]) {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        lastConsumerActivity = now
        if waiters.isEmpty && !local.isEmpty {
            let items = take(Swift.max(1, max), now: now)
            finish(&actions, now: now)
            return (items, actions)
        }
        if let waiter { wait(Waiter(id: waiter, max: Swift.max(1, max)), &actions, now: now) }
        finish(&actions, now: now)
        return ([], actions)
    }

    /// A waiting consumer gave up (its timeout passed, or its task was cancelled). Nothing is
    /// delivered to it after this; unknown waiters are ignored.
    public mutating func cancelWait(_ waiter: WaiterID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        if let index = waiters.firstIndex(where: { $0.id == waiter }) { waiters.remove(at: index) }
        finish(&actions, now: now)
        return actions
    }

    /// Removes the locally queued items whose payload `matches` (a caller withdrawing work it no
    /// longer wants), keeping the others in order. A removed item counts as consumed: its owner
    /// forgets it (a pop confirmation goes to a remote owner). Items on an outgoing transfer or
    /// on other nodes are not reached.
    ///
    /// - Returns: how many items were removed, and the actions.
    public mutating func remove(where matches: (ItemPayload) -> Bool, now: UInt64) -> (removed: Int, actions: [Action]) {
        var actions: [Action] = []
        let removed = removeQueued(where: matches, now: now)
        finish(&actions, now: now)
        return (removed, actions)
    }

    /// Stops accepting pushes and transfers, fails the waiting consumers with `.closed`, and
    /// hands the queued items to live peers (consumers first), in batches, until none are left.
    /// Ownership records stay: the node keeps running.
    public mutating func close(now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard !isClosed else { return actions }
        isClosed = true
        while let waiter = waiters.popFirst() { actions.append(.fail(waiter.id, .closed)) }
        if pushBlocked {
            pushBlocked = false
            actions.append(.spaceAvailable)  // blocked pushers retry and see `.closed`
        }
        handOff(&actions, now: now)
        sendStats(to: connectedPeers(), &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// The node is stopping (graceful stop): as ``close(now:)``, and the queued items (and
    /// those returned by failed transfers) go to live peers in ``TransferKind/drain``
    /// transfers, so each receiver becomes the owner of the items this node owned; pending pop
    /// confirmations and custody notices go to their owners at once. ``drainProgress``
    /// says when everything is acknowledged.
    public mutating func drain(now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard !isDraining else { return actions }
        isDraining = true
        // Un-acked leased items go with the queued ones, unconfirmed: their consumer's ack can
        // no longer be taken.
        returnAllLeases(now: now)
        // The drain transfers carry the items with their ownership: no replicas any more.
        replicaBacklog.removeAll()
        actions = close(now: now)  // hands off (as drain transfers now) and arms the timer
        flushNotices(&actions, now: now, force: true, only: nil)
        flushReleases(&actions, now: now, force: true)
        grantOwnership(&actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    // MARK: Peer inputs

    /// A link to `peer` is ready: it gets this node's stats at once. `adoptsOwnership`: its
    /// hello announced ``QueueWire/featureOwnershipHandover`` (a draining node then sends it
    /// ``TransferKind/drain`` transfers). `keepsReplicas`: its hello announced
    /// ``QueueWire/featureReplicas`` (it may be sent replicas).
    public mutating func peerConnected(_ peer: PeerID, adoptsOwnership: Bool = true, keepsReplicas: Bool = false,
                                       now: UInt64) -> [Action] {
        var actions: [Action] = []
        guard peer != localPeer else { return actions }
        detectStall(&actions, now: now)
        guard linkReady(peer, adoptsOwnership: adoptsOwnership, keepsReplicas: keepsReplicas, &actions, now: now) else {
            return actions
        }
        // Transfers kept in flight through the last link's loss (a duplicate the peer closed, a
        // death verdict with the link up) go again on this one; the peer drops what it has.
        sendTransfersAgain(to: peer, &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// The link to `peer` is gone: transfers to it not acknowledged yet come back to the front
    /// of the queue, in order. With `keepingTransfers` (the peer closed this link as a
    /// duplicate of another it keeps, which will come up here) they stay in flight and go again
    /// on the next link (``peerConnected(_:adoptsOwnership:keepsReplicas:now:)``); they come
    /// back if none comes before their deadline, or if the peer dies.
    public mutating func peerDisconnected(_ peer: PeerID, keepingTransfers: Bool = false, now: UInt64) -> [Action] {
        var actions: [Action] = []
        // Every input looks for a stall first: links dropped by a resumed process's own
        // keepalive timeout are often its first input, and `finish` re-arms the timer.
        detectStall(&actions, now: now)
        disconnected(peer, keepingTransfers: keepingTransfers, &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// The link to `peer` was replaced by another (two nodes that dialed each other keep one
    /// link): as ``peerDisconnected(_:now:)`` then ``peerConnected(_:adoptsOwnership:keepsReplicas:now:)``,
    /// except that the transfers to `peer` not acknowledged yet go out again on the new link,
    /// as they were. They may have arrived on the old one and lost their acks with it: taken
    /// back, their items could go to another peer while `peer` keeps them (popped twice);
    /// sent again, `peer` drops the copies it has (same attempts and hop counts) and acks.
    public mutating func peerLinkReplaced(_ peer: PeerID, adoptsOwnership: Bool = true, keepsReplicas: Bool = false,
                                          now: UInt64) -> [Action] {
        var actions: [Action] = []
        guard peer != localPeer else { return actions }
        detectStall(&actions, now: now)
        disconnected(peer, keepingTransfers: true, &actions, now: now)
        sendTransfersAgain(to: peer, &actions, now: now)
        _ = linkReady(peer, adoptsOwnership: adoptsOwnership, keepsReplicas: keepsReplicas, &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// Membership declared `peer` dead: as a disconnect, and the items this node owns that
    /// `peer` held, never confirmed popped, are re-queued at the front (oldest first).
    public mutating func peerDied(_ peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard peer != localPeer else { return actions }
        afterDeath(of: peer, &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// Membership took `peer` back after a death verdict (it refuted it, or a new process of it
    /// joined): its messages count again and, if its link is up (`linked`), it is a connected
    /// peer again at once (stats, and the notices kept for it go out); else when a link comes up.
    public mutating func peerRejoined(_ peer: PeerID, linked: Bool, keepsReplicas: Bool = false, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard peer != localPeer, deadPeers.contains(peer) else { return actions }
        forgetDeath(of: peer)
        if keepsReplicas { releaseAll(to: peer, &actions) }
        guard linked else { return actions }
        // Transfers kept in flight through the verdict go again (their acks, if they came while
        // it was dead here, were ignored).
        return actions + peerConnected(peer, keepsReplicas: keepsReplicas, now: now)
    }

    /// A new process of `peer` (a later start) replaced one never declared dead: as
    /// ``peerDied(_:now:)`` but with no grace for its replicas (no release can come any more),
    /// then ``peerRejoined(_:linked:keepsReplicas:now:)``.
    public mutating func peerRestarted(_ peer: PeerID, linked: Bool, keepsReplicas: Bool = false, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard peer != localPeer else { return actions }
        afterDeath(of: peer, processGone: true, &actions, now: now)
        finish(&actions, now: now)
        return actions + peerRejoined(peer, linked: linked, keepsReplicas: keepsReplicas, now: now)
    }

    /// This node was declared dead by its peers (membership heard the verdict and refuted it):
    /// owners that believed it re-queued their items it holds. Those items are held back from
    /// consumers and each owner is asked which copies are stale (a custody check); the verdict
    /// drops them and returns the rest to the front. The same happens on its own when an
    /// input arrives more than ``QueueConfiguration/stallThreshold`` after the armed timer.
    public mutating func declaredDead(now: UInt64) -> [Action] {
        var actions: [Action] = []
        holdBack(&actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// A queue message from `peer` (its ``QueueMessage/queue`` is this queue's name).
    ///
    /// Pass the message over (`consuming`): a transfer's items then move into the queue
    /// without reference counting.
    public mutating func received(_ message: consuming QueueMessage, from peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        guard peer != localPeer else { return actions }
        detectStall(&actions, now: now)
        if receive(consume message, from: peer, &actions, now: now) { finish(&actions, now: now) }
        return actions
    }

    /// A message this machine asked to send could not be sent (no ready link to `peer`).
    public mutating func sendFailed(_ message: QueueMessage, to peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        recoverFailedSend(message, to: peer, &actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    /// The timer armed by `.armTimer(at:)` fired (early or late calls are harmless).
    public mutating func tick(now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        armed = nil
        for owner in heldBack.keys.sorted() where heldBack[owner].map({ $0.deadline <= now }) == true {
            release(heldBack.removeValue(forKey: owner), stale: [], &actions, now: now)
        }
        for holder in heldOwn.keys.sorted() where heldOwn[holder]!.deadline <= now {
            release(heldOwn.removeValue(forKey: holder), stale: [], &actions, now: now)
        }
        shelf.forgetRequeued(now: now, retention: configuration.deadOwnerRetention)
        for (owner, at) in diedAt where now &- at >= configuration.deadOwnerRetention {
            notices[owner] = nil
            diedAt[owner] = nil
        }
        if let at = nextStatsAt, now >= at {
            nextStatsAt = now + configuration.statsInterval
            sampleRate(now: now)
            sendStats(to: connectedPeers(), &actions, now: now)
            let load = load(now: now)
            if let plan = balancer.rebalance(load, peers: peers) { carryOut(plan, &actions, now: now) }
        }
        let expired = transfers.ids { $0.deadline <= now }
        if !expired.isEmpty { transfersTimedOut(expired, &actions, now: now) }
        for owner in shelf.grace.filter({ $0.value <= now }).keys.sorted() {
            shelf.grace[owner] = nil
            requeueShelf(of: owner, &actions, now: now)
        }
        for id in replicaSends.filter({ $0.value.deadline <= now }).keys.sorted() {
            // The peer may still keep them (its ack late or lost): released at once, so the
            // release travels ahead of any copy sent again on the same link.
            if let send = replicaSends[id], peers[send.peer]?.connected == true {
                actions.append(.send(.replicaRelease(queue: name, runs: Array(send.runs.prefix(QueueWire.maxRunsPerUpdate))),
                                     to: send.peer))
            }
            replicaAcknowledged(id, status: .full, now: now, &actions)  // as a refusal: another peer is tried
        }
        flushReleases(&actions, now: now, force: isDraining)
        sendReplicas(&actions, now: now)
        if let at = nextLeaseDeadline, at <= now { expireLeases(&actions, now: now) }
        if let steal, steal.deadline <= now {
            self.steal = nil
            peers[steal.peer]?.reportedLength = 0
        }
        if isClosed { handOff(&actions, now: now) }
        counters.confirmationsRefused += heldConfirmations.expire(now: now)
        maybeSteal(&actions, now: now)
        flushNotices(&actions, now: now, force: isDraining, only: nil)
        grantOwnership(&actions, now: now)
        finish(&actions, now: now)
        return actions
    }

    // MARK: Timer

    /// Common epilogue: release blocked pushers, and re-arm the timer for the next deadline.
    mutating func finish(_ actions: inout [Action], now: UInt64) {
        if nextStatsAt == nil {
            nextStatsAt = now + configuration.statsInterval
            lastSampleAt = now
        }
        if pushBlocked && !isClosed && hasRoom(items: 1, bytes: 0) {
            pushBlocked = false
            actions.append(.spaceAvailable)
        }
        var deadline = nextStatsAt!
        for transfer in transfers.all { deadline = Swift.min(deadline, transfer.deadline) }
        for at in shelf.grace.values { deadline = Swift.min(deadline, at) }
        if !replicaSends.isEmpty || !releases.isEmpty || !replicaBacklog.isEmpty {
            sendReplicas(&actions, now: now)
            flushReleases(&actions, now: now, force: isDraining)
            replicaDeadline(&deadline, now: now)
        }
        if let steal { deadline = Swift.min(deadline, steal.deadline) }
        if let at = nextLeaseDeadline { deadline = Swift.min(deadline, at) }
        // Notices for an unreachable owner wait for its reconnection (or death), not the timer.
        for (owner, entry) in notices where entry.items > 0 && peers[owner]?.connected == true
            && updatesInFlight(to: owner) < Self.maxUpdatesInFlight {
            let due = entry.items >= configuration.confirmBatch ? now : entry.since + configuration.confirmDelay
            deadline = Swift.min(deadline, due)
        }
        if armed != deadline {
            armed = deadline
            actions.append(.armTimer(at: deadline))
        }
    }
}
