import DequeModule
import P2PQWire

// The local queue's producer and consumer paths: pushes, pops, removal, waiting consumers.

extension QueueMachine {
    struct Waiter: Sendable {
        var id: WaiterID
        var max: Int
        /// A leased pop's lease duration; nil for a plain pop.
        var lease: UInt64? = nil
    }

    // MARK: Pushing

    /// A run a push makes: its items are the first `count` of the slot's array.
    struct PushedRun {
        var slot: UInt32
        var start: UInt32
        var bytes: UInt32
        var count: UInt32
    }

    /// The pushes' common path. `hold` holds the items' arrays in `store`, `holds` times for
    /// each item (its queue entry, and its ownership record when at least once), and returns
    /// the runs they make, in order.
    mutating func push(
        count n: Int, size: (Int) -> Int, hold: (inout PayloadStore, _ holds: Int) -> [PushedRun], now: UInt64
    ) -> (PushOutcome, [Action]) {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        guard !isClosed else { return (.closed, actions) }
        var bytes = 0
        for index in 0..<n {
            let itemSize = size(index)
            guard itemSize <= maxItemSize else { return (.itemTooLarge(size: itemSize, limit: maxItemSize), actions) }
            bytes += itemSize
        }
        if n == 0 { return (.accepted, actions) }
        guard n <= configuration.maxItems, bytes <= configuration.maxBytes,
              configuration.delivery == .atMostOnce
                || (n <= configuration.maxOwnedItems && bytes <= configuration.maxOwnedBytes)
        else { return (.batchTooLarge, actions) }
        guard hasRoom(items: n, bytes: bytes) else {
            pushBlocked = true
            return (.full, actions)
        }
        let first = nextSequence
        nextSequence += UInt64(n)
        let tracked = configuration.delivery == .atLeastOnce
        var sequence = first
        for pushed in hold(&store, tracked ? 2 : 1) {
            let run = QueueRun(origin: localPeer, first: sequence, count: pushed.count, attempt: 0, hops: 0,
                               slot: pushed.slot, index: 0, start: pushed.start, bytes: pushed.bytes)
            if tracked {
                store.ends(run.slot).withUnsafeBufferPointer { ends in
                    owned.append(first: sequence, count: Int(run.count)) { i in
                        let begin = run.itemStart(i, ends)
                        return OwnedRecord(extent: PayloadExtent(buffer: run.slot, start: begin, length: run.itemEnd(i, ends) &- begin),
                                           holder: HolderTable.here, attempt: 0, hops: 0)
                    }
                }
            }
            local.append(run)
            sequence &+= UInt64(run.count)
        }
        if tracked { ownedBytes += bytes }
        counters.pushed += n
        if replicates { needReplicas(first: first, count: n, &actions, now: now) }
        serveWaiters(&actions, now: now)
        dispatchToIdlePeers(&actions, now: now)
        feedFromSource(&actions, now: now)
        announceGrowth(&actions, now: now)
        finish(&actions, now: now)
        return (.accepted, actions)
    }

    // MARK: Removing

    /// Removes the queued items whose payload `matches` (see ``remove(where:now:)``), settling
    /// each as consumed; returns how many.
    mutating func removeQueued(where matches: (ItemPayload) -> Bool, now: UInt64) -> Int {
        // The removed items are runs of one, settled once the queue is rebuilt.
        let removed = local.removeItems(in: store, where: matches)
        let tracked = configuration.delivery == .atLeastOnce
        for item in removed {
            store.release(item.slot)
            guard tracked else { continue }
            if item.origin == localPeer {
                if let record = owned.remove(item.first) { drop(record, item.first, now: now) }
            } else {
                confirm(SequenceRun(first: item.first, count: 1), to: item.origin, now: now)
            }
        }
        counters.removed += removed.count
        return removed.count
    }

    // MARK: Consuming

    /// Takes up to `max` items from the front for a consumer, recording the pops a run at a
    /// time.
    mutating func take(_ max: Int, now: UInt64) -> ItemPayloads {
        let n = Swift.min(max, local.items)
        var payloads = ItemPayloads()
        payloads.reserveCapacity(items: n, arrays: 1)
        // The batch holds each array once (the consumer lets it go on its own thread); the
        // store's counts are plain integers: no reference-count operation per item.
        store.startNumbering()
        let tracked = configuration.delivery == .atLeastOnce
        // Confirmations for other owners, gathered as runs (a batch is mostly one run).
        var remoteOwner: PeerID?
        var remote = SequenceRun(first: 0, count: 0)
        var left = n
        while left > 0 {
            let (run, ends) = local.takeFront(upTo: left, in: store)
            left -= Int(run.count)
            let (index, isNew) = store.number(run.slot)
            if isNew { _ = payloads.appendArray(store.array(run.slot)) }
            ends.withUnsafeBufferPointer { ends in
                var begin = run.start
                for i in 0..<Int(run.count) {
                    let end = run.itemEnd(i, ends)
                    payloads.append(PayloadExtent(buffer: index, start: begin, length: end &- begin))
                    begin = end
                }
            }
            store.release(run.slot, count: Int(run.count))
            guard tracked else { continue }
            if run.origin == localPeer {
                var freed = 0
                var replicas = ReplicaHandles()
                let removed = owned.removeRun(first: run.first, count: Int(run.count)) { record in
                    freed += Int(record.extent.length)
                    store.release(record.extent.buffer)
                    replicas.note(record.replica)
                }
                ownedBytes -= freed
                counters.duplicatePops += Int(run.count) - removed
                releaseReplicas(replicas, SequenceRun(first: run.first, count: run.count), now: now)
            } else if run.origin == remoteOwner && remote.first &+ UInt64(remote.count) == run.first
                        && remote.count <= UInt32.max - run.count {
                remote.count += run.count
            } else {
                if let owner = remoteOwner { confirm(remote, to: owner, now: now) }
                remoteOwner = run.origin
                remote = SequenceRun(first: run.first, count: run.count)
            }
        }
        if let owner = remoteOwner { confirm(remote, to: owner, now: now) }
        popsSinceSample += n
        counters.popped += n
        return payloads
    }

    /// An ownership record is gone: its bytes no longer count, its buffer loses a holder.
    mutating func drop(_ record: OwnedRecord, _ sequence: UInt64, now: UInt64) {
        ownedBytes -= Int(record.extent.length)
        store.release(record.extent.buffer)
        if record.replica != HolderTable.here && record.replica != HolderTable.inTransit {
            release(SequenceRun(first: sequence, count: 1), replica: record.replica, now: now)
        }
    }

    mutating func confirm(_ run: SequenceRun, to owner: PeerID, now: UInt64) {
        // Also for an owner believed dead: kept until it is back (or its retention ends).
        addRun(run, to: owner, custody: nil, now: now)
    }

    /// A consumer found nothing to take: it waits (for a pop or a leased pop, as `waiter`
    /// says), or fails at once if the queue is closed or has its most waiters. A new waiter
    /// means starved consumers: a steal may start.
    mutating func wait(_ waiter: Waiter, _ actions: inout [Action], now: UInt64) {
        if isClosed {
            actions.append(.fail(waiter.id, .closed))
        } else if waiters.count >= configuration.maxWaiters {
            actions.append(.fail(waiter.id, .tooManyWaiters))
        } else {
            waiters.append(waiter)
            starvedSinceSample = true
            maybeSteal(&actions, now: now)
        }
    }

    mutating func serveWaiters(_ actions: inout [Action], now: UInt64) {
        while !local.isEmpty, let waiter = waiters.popFirst() {
            lastConsumerActivity = now
            if let duration = waiter.lease {
                actions.append(.deliverLeased(waiter.id, takeLeased(waiter.max, for: duration, now: now)))
            } else {
                actions.append(.deliver(waiter.id, take(waiter.max, now: now)))
            }
        }
    }
}
