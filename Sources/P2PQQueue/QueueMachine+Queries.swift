import DequeModule
import P2PQWire

// What a queue machine reports: counts, limits, load and drain progress.

extension QueueMachine {
    // MARK: Queries

    /// Items in the local queue.
    public var count: Int { local.items }
    /// Payload bytes in the local queue.
    public var byteCount: Int { local.bytes }
    /// Items held against the limits: queued, on unacknowledged outgoing transfers, held back,
    /// and leased.
    public var heldItems: Int { local.items + transfers.items + heldBackItems + leasedItems }
    /// Payload bytes held against the limits.
    public var heldBytes: Int { local.bytes + transfers.bytes + heldBackBytes + leasedBytes }
    /// Items handed out under a lease and not acked yet (held here, counted in ``heldItems``).
    public var leasedCount: Int { leasedItems }
    /// Items of other owners held back from consumers until their owner names the stale copies
    /// (see ``declaredDead(now:)``).
    public var heldBackCount: Int { heldBackItems }
    /// Consumers waiting in a pop.
    public var waitingConsumers: Int { waiters.count }
    /// Items this node owns that are not confirmed popped yet.
    public var ownedItems: Int { owned.count }
    /// Arrays this node keeps for the items it queues, has in flight or owns: one per pushed
    /// batch or array, or received transfer, that some item still points into.
    public var heldBufferCount: Int { store.count }
    /// Slots of those arrays' table, free ones included: back to a few once all are confirmed.
    public var heldBufferSlots: Int { store.slotCapacity }
    /// Payload bytes of those records.
    public var ownedByteCount: Int { ownedBytes }
    /// Outgoing transfers awaiting their acknowledgement.
    public var transfersInFlight: Int { transfers.count }
    /// Item copies remembered for duplicate detection.
    public var dedupCount: Int { transfers.seen.count }
    /// Pending confirmation and custody runs, all owners together.
    public var pendingNoticeRuns: Int {
        notices.values.reduce(0) { $0 + $1.runs }
            + sentUpdates.values.reduce(0) { $0 + $1.popped.count + $1.custody.reduce(0) { $0 + $1.runs.count } }
    }
    /// Peers whose load is tracked.
    public var trackedPeers: Int { peers.count }
    /// The current service-rate estimate, pops per second.
    public var serviceRate: Double { rate }
    /// The local count plus the last reported lengths of peers with a fresh report.
    public func clusterEstimate(now: UInt64) -> Int {
        peers.values.reduce(local.items) { total, view in
            isFresh(view, now: now) ? total + Int(max(0, view.length)) : total
        }
    }
    /// What this node last knew of `peer`'s length (adjusted for what it sent since), if fresh.
    public func peerLength(_ peer: PeerID, now: UInt64) -> Int? {
        guard let view = peers[peer], isFresh(view, now: now) else { return nil }
        return Int(view.length)
    }
    /// Most peers with per-peer transfer counts (``QueueCounters/transferredOutByPeer``).
    static let maxCountedPeers = 1024

    /// The peers with a fresh load report: the length this node knows (as ``peerLength(_:now:)``)
    /// and the pops per second and finish time (seconds) they reported; in ascending peer order.
    public func peerLoads(now: UInt64) -> [(peer: PeerID, length: Int, rate: Double, finishTime: Double)] {
        peers.filter { isFresh($0.value, now: now) }.map { ($0.key, Int(max(0, $0.value.length)), $0.value.rate, $0.value.finishTime) }
    }
    /// Whether a push of `count` items of `bytes` payload would be accepted now.
    public func hasRoom(items count: Int, bytes: Int) -> Bool {
        guard heldItems + count <= configuration.maxItems, heldBytes + bytes <= configuration.maxBytes else { return false }
        if configuration.delivery == .atLeastOnce {
            guard owned.count + count <= configuration.maxOwnedItems,
                  ownedBytes + bytes <= configuration.maxOwnedBytes else { return false }
        }
        return true
    }

    /// Where a drain stands (see ``drain(now:)``); meaningful at any time.
    public var drainProgress: DrainProgress {
        var pending = 0
        var unreachable = 0
        for (owner, entry) in notices {
            if peers[owner]?.connected == true { pending += entry.items } else { unreachable += entry.items }
        }
        for update in sentUpdates.values {
            pending += update.popped.reduce(0) { $0 + Int($1.count) }
            for group in update.custody { pending += group.runs.reduce(0) { $0 + Int($1.count) } }
        }
        for change in sentChanges.values { pending += change.items }
        // Releases not sent yet: a holder that missed them would re-queue those replicas when
        // this node leaves (duplicates).
        for (holder, entry) in releases {
            if peers[holder]?.connected == true { pending += entry.items } else { unreachable += entry.items }
        }
        let replicating = replicaSends.values.reduce(0) { $0 + $1.count }
        // A full peer counts: it takes items again as its consumers make room.
        let live = peers.values.contains { $0.connected && !$0.closed }
        return DrainProgress(queued: local.items, inFlight: transfers.items + replicating, pendingNotices: pending,
                             unreachableNotices: unreachable, hasLivePeer: live)
    }

    /// Records of items this node owns that peers hold, not yet confirmed popped (a stopping
    /// node leaves them behind: their owner is gone). Counted by a scan: for reports, not per item.
    public var ownedHeldElsewhere: Int {
        owned.sequences { $0.holder != HolderTable.here }.count
    }

    /// Whether the item this node pushed as `sequence` has its only copy here: its ownership
    /// record says it is queued here (or leased here), and no peer keeps a replica of it. False
    /// once the record is gone (popped, or handed over with a drain) or a peer holds a copy.
    public func hasOnlyCopyHere(_ sequence: UInt64) -> Bool {
        guard let record = owned[sequence] else { return false }
        return record.holder == HolderTable.here && record.replica == HolderTable.here
    }

    /// The sequence number the next item pushed here gets: the mark for
    /// ``itemsHeldOnlyHere(before:)``.
    public var nextItemSequence: UInt64 { nextSequence }

    /// Items pushed here before `mark` (``nextItemSequence`` at that time) that no peer has
    /// acknowledged holding and nobody has popped: with at-least-once, those whose ownership
    /// record says they are here (queued or in a transfer not yet acknowledged); with
    /// at-most-once, those still queued or in flight. Counted by a scan (for `flush`).
    public func itemsHeldOnlyHere(before mark: UInt64) -> Int {
        if configuration.delivery == .atLeastOnce {
            return owned.sequences { $0.holder == HolderTable.here }.lazy.filter { $0 < mark }.count
        }
        func mine(_ run: QueueRun) -> Int {
            guard run.origin == localPeer, run.first < mark else { return 0 }
            return Int(Swift.min(run.first &+ UInt64(run.count), mark) - run.first)
        }
        return local.runs.reduce(0) { $0 + mine($1) }
            + transfers.all.reduce(0) { total, transfer in total + transfer.runs.reduce(0) { $0 + mine($1) } }
    }
}
