import DequeModule
import P2PQWire

// Ownership records and the pop confirmations and custody notices sent to owners.

extension QueueMachine {
    /// An owned item's bytes are a range of one of `store`'s arrays: a pushed batch's records
    /// share one entry, so keeping and dropping a copy updates a counter there instead of the
    /// array's reference count (an atomic operation per item, per push and per confirmation).
    struct OwnedRecord: Sendable {
        var extent: PayloadExtent
        /// ``HolderTable/here`` while the item is here (queued or on an unacknowledged transfer),
        /// else the handle of the peer holding it: 4 bytes, not a 33-byte optional peer ID, so a
        /// record is 24 bytes and the owner's window of them stays in cache.
        var holder: UInt32
        var attempt: UInt32
        var hops: UInt32
        /// The holder handle of the peer keeping this item's replica; `HolderTable.here`: none.
        var replica: UInt32 = HolderTable.here
    }

    struct CustodyKey: Hashable, Sendable {
        var holder: PeerID
        var attempt: UInt32
        var hops: UInt32
    }

    /// Pending pop confirmations and custody news for one owner.
    struct Notices: Sendable {
        var popped: [SequenceRun] = []
        var custody: [CustodyKey: [SequenceRun]] = [:]
        var custodyOrder: [CustodyKey] = []
        var runs = 0
        var items = 0
        var since: UInt64
    }

    struct SentUpdate: Sendable {
        var owner: PeerID
        var popped: [SequenceRun]
        var custody: [CustodyChange]
    }

    /// The last 1024 IDs, forgetting the oldest.
    struct RecentIDs: Sendable {
        var set = Set<UInt64>()
        var order = Deque<UInt64>()

        mutating func insert(_ id: UInt64) -> Bool {
            guard set.insert(id).inserted else { return false }
            order.append(id)
            if order.count > 1024, let oldest = order.popFirst() { set.remove(oldest) }
            return true
        }
    }

    /// Most unacknowledged owner updates per owner; more notices wait for acks.
    static let maxUpdatesInFlight = 8

    // MARK: Ownership

    mutating func requeue(_ sequences: [UInt64], _ actions: inout [Action], now: UInt64) {
        guard !sequences.isEmpty else { return }
        // A run of one item each: the copies' records say where each item's bytes are.
        var items: [QueueRun] = []
        items.reserveCapacity(sequences.count)
        for sequence in sequences {
            var attempt: UInt32 = 0
            guard owned.modify(sequence, { record in
                record.attempt &+= 1
                record.hops = 0
                record.holder = HolderTable.here
                if record.replica == HolderTable.inTransit { record.replica = HolderTable.here }
                attempt = record.attempt
            }), let record = owned[sequence] else { continue }
            store.retain(record.extent.buffer)
            items.append(QueueRun(origin: localPeer, first: sequence, count: 1, attempt: attempt, hops: 0,
                                  slot: record.extent.buffer, index: 0, start: record.extent.start, bytes: record.extent.length))
        }
        counters.requeuedAfterDeath += items.count
        local.putBack(items)
        // Here alone again: a second copy is made as for a push.
        if replicates {
            for item in items { needReplicas(first: item.first, count: 1, &actions, now: now) }
        }
        serveWaiters(&actions, now: now)
    }

    mutating func ownerUpdate(popped: [SequenceRun], custody: [CustodyChange], from peer: PeerID,
                                      _ actions: inout [Action], now: UInt64) {
        guard configuration.delivery == .atLeastOnce else { return }
        // Only the recorded holder may confirm: a member cannot make the owner forget items
        // someone else holds. Others' confirmations wait for the custody news that names them.
        // No record names an unknown sender: a handle no peer gets (they count up from 1).
        let sender = holders.handle(of: peer) ?? .max
        var freedBytes = 0
        for run in popped {
            var others = 0
            owned.modifyRun(first: run.first, count: Int(run.count)) { _, record in
                if record.holder != sender { others += 1 }
            }
            var refused: [UInt64] = []
            var removed = 0
            if others == 0 {
                // Runs straight through the ownership window: no lookup per sequence.
                removed = owned.removeRun(first: run.first, count: Int(run.count)) { record in
                    freedBytes += Int(record.extent.length)
                    store.release(record.extent.buffer)
                }
            } else {
                // Mixed holders (rare): one at a time, only over the records held.
                var matched: [UInt64] = []
                owned.modifyRun(first: run.first, count: Int(run.count)) { sequence, record in
                    if record.holder == sender { matched.append(sequence) } else { refused.append(sequence) }
                }
                for sequence in matched {
                    guard let record = owned.remove(sequence) else { continue }
                    freedBytes += Int(record.extent.length)
                    store.release(record.extent.buffer)
                    removed += 1
                }
                counters.confirmationsHeld += refused.count
                counters.confirmationsRefused += heldConfirmations.hold(refused, from: peer, now: now)
            }
            // The rest of the run's sequences made here were confirmed before: duplicate pops.
            let low = Swift.max(run.first, configuration.firstSequence)
            let high = Swift.min(run.first &+ UInt64(run.count), nextSequence)
            if low < high { counters.duplicatePops += Int(high - low) - removed - refused.count }
        }
        ownedBytes -= freedBytes
        var lost: [UInt64] = []
        for group in custody {
            let holderDead = deadPeers.contains(group.holder)
            // A dead holder is not interned: its items are re-queued below, here again.
            let holder = group.holder == localPeer || holderDead ? HolderTable.here : holders.handle(for: group.holder)
            for run in group.runs {
                owned.modifyRun(first: run.first, count: Int(run.count)) { sequence, record in
                    guard record.attempt == group.attempt, record.holder != HolderTable.here, group.hops > record.hops else { return }
                    record.holder = holder
                    record.hops = group.hops
                    if holderDead { lost.append(sequence) }
                }
            }
        }
        requeue(lost.sorted(), &actions, now: now)
        if !custody.isEmpty && !heldConfirmations.isEmpty { applyHeldConfirmations(named: custody, now: now) }
    }

    /// Custody news arrived: held confirmations from the peers it names are tried again.
    private mutating func applyHeldConfirmations(named custody: [CustodyChange], now: UInt64) {
        var freedBytes = 0
        // In ID order: two holders may hold a confirmation of one sequence, and the first
        // settles it.
        for holder in Set(custody.map(\.holder)).sorted() {
            guard let handle = holders.handle(of: holder) else { continue }
            heldConfirmations.retry(from: holder) { sequence in
                guard let record = owned[sequence] else { return true }  // confirmed or re-queued since
                guard record.holder == handle else { return false }
                owned.remove(sequence)
                freedBytes += Int(record.extent.length)
                store.release(record.extent.buffer)
                counters.confirmationsApplied += 1
                return true
            }
        }
        ownedBytes -= freedBytes
    }

    mutating func requeueNotices(_ update: SentUpdate, now: UInt64) {
        for run in update.popped { addRun(run, to: update.owner, custody: nil, now: now) }
        for group in update.custody {
            let key = CustodyKey(holder: group.holder, attempt: group.attempt, hops: group.hops)
            for run in group.runs { addRun(run, to: update.owner, custody: key, now: now) }
        }
    }

    /// Queues a confirmation (`custody == nil`) or custody run for `owner`.
    mutating func addRun(_ run: SequenceRun, to owner: PeerID, custody: CustodyKey?, now: UInt64) {
        // Taken out of the dictionary so its arrays are uniquely referenced and grow in place.
        var entry = notices.removeValue(forKey: owner) ?? Notices(since: now)
        if entry.runs == 0 && entry.items == 0 { entry.since = now }
        if let key = custody {
            if entry.custody[key] == nil { entry.custodyOrder.append(key) }
            if Self.extend(&entry.custody[key, default: []], with: run) { entry.runs += 1 }
        } else if Self.extend(&entry.popped, with: run) {
            entry.runs += 1
        }
        entry.items += Int(run.count)
        // Bound the backlog: drop the oldest confirmations first (the owner keeps those
        // records; at worst a later death re-queues them: a duplicate, never a loss).
        while entry.runs > configuration.maxPendingRunsPerOwner && !entry.popped.isEmpty {
            let dropped = entry.popped.removeFirst()
            entry.runs -= 1
            entry.items -= Int(dropped.count)
            counters.noticesDropped += Int(dropped.count)
        }
        notices[owner] = entry
    }

    /// Appends `run` to `runs`, merging with the last run when consecutive. True if a run was added.
    static func extend(_ runs: inout [SequenceRun], with run: SequenceRun) -> Bool {
        if let last = runs.last, last.first &+ UInt64(last.count) == run.first,
           UInt64(last.count) + UInt64(run.count) <= UInt64(UInt32.max) {
            runs[runs.count - 1].count += run.count
            return false
        }
        runs.append(run)
        return true
    }

    /// `uncapped`: also past ``maxUpdatesInFlight`` (before an owner change's ack, which must
    /// follow every custody notice for that owner).
    mutating func flushNotices(_ actions: inout [Action], now: UInt64, force: Bool, only: PeerID?, uncapped: Bool = false) {
        guard !notices.isEmpty else { return }
        let owners = only.map { [$0] } ?? notices.keys.sorted()
        for owner in owners {
            guard let entry = notices[owner], entry.items > 0 else { continue }
            guard force || entry.items >= configuration.confirmBatch || now >= entry.since + configuration.confirmDelay else { continue }
            guard peers[owner]?.connected == true else { continue }  // kept until the owner is back or dead
            guard uncapped || updatesInFlight(to: owner) < Self.maxUpdatesInFlight else { continue }  // acks will flush
            notices[owner] = nil
            // Split into messages that fit one frame.
            let budget = configuration.maxFrameSize - 1 - (4 + name.utf8.count + 4 + 2) - 16
            var popped: [SequenceRun] = []
            var custody: [CustodyChange] = []
            var used = 0
            var runs = 0
            func emit() {
                if popped.isEmpty && custody.isEmpty { return }
                let id = nextUpdateID
                nextUpdateID += 1
                sentUpdates[id] = SentUpdate(owner: owner, popped: popped, custody: custody)
                actions.append(.send(.ownerUpdate(queue: name, updateID: id, popped: popped, custody: custody), to: owner))
                popped = []
                custody = []
                used = 0
                runs = 0
            }
            for run in entry.popped {
                if used + 12 > budget || runs + 1 > QueueWire.maxRunsPerUpdate { emit() }
                popped.append(run)
                used += 12
                runs += 1
            }
            for key in entry.custodyOrder {
                guard let groupRuns = entry.custody[key] else { continue }
                var index = 0
                while index < groupRuns.count {
                    if used + 44 + 12 > budget || runs + 1 > QueueWire.maxRunsPerUpdate || custody.count == Int(UInt16.max) { emit() }
                    let room = Swift.min((budget - used - 44) / 12, QueueWire.maxRunsPerUpdate - runs, groupRuns.count - index)
                    custody.append(CustodyChange(holder: key.holder, attempt: key.attempt, hops: key.hops,
                                                 runs: Array(groupRuns[index..<index + room])))
                    used += 44 + 12 * room
                    runs += room
                    index += room
                }
            }
            emit()
        }
    }
}
