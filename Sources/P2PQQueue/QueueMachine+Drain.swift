import DequeModule
import P2PQWire

// Ownership hand-over: a draining owner passes its records to the items' holders.

extension QueueMachine {
    struct SentChange: Sendable {
        var holder: PeerID
        var groups: [CustodyChange]
        var items: Int
    }

    /// An owner change from a stopping owner, not acknowledged yet: the owner drops the records
    /// it offered on the ack, so the ack waits until the transfers in flight with the owner's
    /// items are settled (their custody news, or the returned items adopted) and goes out
    /// right after that custody news: the owner then offers those records to their new holder.
    struct PendingChange: Sendable {
        var owner: PeerID
        var changeID: UInt64
        var groups: [CustodyChange]
        var transfers: Set<UInt64>
    }

    // MARK: Ownership hand-over (drain)

    /// Takes the `count` items of `run` over as this node's own: numbered anew (origin here,
    /// attempt and hops 0), with ownership records that hold the run's buffer too.
    mutating func adoptAsOwn(_ run: inout QueueRun, count: Int, _ ends: UnsafeBufferPointer<UInt32>) {
        run.origin = localPeer
        run.first = nextSequence
        run.attempt = 0
        run.hops = 0
        nextSequence &+= UInt64(count)
        store.retain(run.slot, count: count)
        let adopted = run
        owned.append(first: adopted.first, count: count) { k in
            let begin = adopted.itemStart(k, ends)
            return OwnedRecord(extent: PayloadExtent(buffer: adopted.slot, start: begin, length: adopted.itemEnd(k, ends) &- begin),
                               holder: HolderTable.here, attempt: 0, hops: 0)
        }
        ownedBytes += Int(run.bytes)
        counters.ownershipAdopted += count
        if replicates { insertBacklog(SequenceRun(first: adopted.first, count: UInt32(count))) }
    }

    /// A draining owner gives its records of items peers hold to those peers in owner changes
    /// (each takes over the items it holds queued): a holder that passes them on can then
    /// re-queue them when the next node dies. The records wait, marked, for the ack.
    mutating func grantOwnership(_ actions: inout [Action], now: UInt64) {
        guard isDraining, configuration.delivery == .atLeastOnce, owned.count > ownedHereCount() else { return }
        // Worst case every run in a group of its own.
        let perMessage = Swift.min(QueueWire.maxRunsPerUpdate,
                                   (configuration.maxFrameSize - 1 - (4 + name.utf8.count + 8 + 2)) / (44 + 12))
        for (peer, view) in peers where view.connected && view.adoptsOwnership && !view.closed {
            guard let handle = holders.handle(of: peer) else { continue }
            let sequences = owned.sequences { $0.holder == handle }
            guard !sequences.isEmpty else { continue }
            var groups: [CustodyChange] = []
            var runs = 0
            var items = 0
            func emit() {
                guard !groups.isEmpty else { return }
                let id = nextUpdateID
                nextUpdateID += 1
                sentChanges[id] = SentChange(holder: peer, groups: groups, items: items)
                actions.append(.send(.ownerChange(queue: name, changeID: id, groups: groups), to: peer))
                groups = []
                runs = 0
                items = 0
            }
            for sequence in sequences {
                var attempt: UInt32 = 0
                _ = owned.modify(sequence) { record in
                    attempt = record.attempt
                    record.holder = HolderTable.granted(to: handle)
                }
                items += 1
                if let group = groups.last, group.attempt == attempt, let run = group.runs.last,
                   run.first &+ UInt64(run.count) == sequence, run.count < UInt32.max {
                    groups[groups.count - 1].runs[group.runs.count - 1].count += 1
                    continue
                }
                if runs == perMessage {
                    items -= 1
                    emit()
                    items = 1
                }
                if let group = groups.last, group.attempt == attempt {
                    groups[groups.count - 1].runs.append(SequenceRun(first: sequence, count: 1))
                } else {
                    groups.append(CustodyChange(holder: peer, attempt: attempt, hops: 0, runs: [SequenceRun(first: sequence, count: 1)]))
                }
                runs += 1
            }
            emit()
        }
    }

    /// Records here (not held by a peer): the rest are what ``grantOwnership(_:now:)`` may give.
    private func ownedHereCount() -> Int {
        owned.sequences { $0.holder == HolderTable.here }.count
    }

    /// The holder took the ownership: the records it was offered go (not those that custody
    /// news it sent first moved on to a later holder).
    mutating func ownershipGranted(_ change: SentChange, now: UInt64) {
        guard let handle = holders.handle(of: change.holder) else { return }
        let granted = HolderTable.granted(to: handle)
        for group in change.groups {
            for run in group.runs {
                for offset in 0..<UInt64(run.count) {
                    let sequence = run.first &+ offset
                    guard owned[sequence]?.holder == granted, let record = owned.remove(sequence) else { continue }
                    drop(record, sequence, now: now)
                    counters.ownershipHandedOver += 1
                }
            }
        }
    }

    /// An owner change that did not arrive: its records point at the holder again.
    mutating func revertGrant(_ change: SentChange) {
        let handle = holders.handle(for: change.holder)
        for group in change.groups {
            for run in group.runs {
                owned.modifyRun(first: run.first, count: Int(run.count)) { _, record in
                    if record.holder == HolderTable.granted(to: handle) { record.holder = handle }
                }
            }
        }
    }

    /// `owner` (stopping) gives this node the ownership of its items in `groups`: those
    /// queued here with the attempt named are numbered as this node's own, where they are,
    /// with records. Items already passed on or popped are not affected.
    private mutating func adoptHeld(_ groups: [CustodyChange], from owner: PeerID) {
        guard configuration.delivery == .atLeastOnce, !groups.isEmpty, !local.isEmpty else { return }
        var ranges: [(first: UInt64, end: UInt64, attempt: UInt32)] = []
        for group in groups {
            for run in group.runs { ranges.append((run.first, run.first &+ UInt64(run.count), group.attempt)) }
        }
        ranges.sort { $0.first < $1.first }
        // Every run comes out and goes back in order, the adopted pieces renumbered.
        for run in local.removeAll() {
            guard run.origin == owner else {
                local.append(run)
                continue
            }
            let n = Int(run.count)
            store.ends(run.slot).withUnsafeBufferPointer { ends in
                var i = 0
                while i < n {
                    let sequence = run.first &+ UInt64(i)
                    if let range = ranges.first(where: { $0.attempt == run.attempt && $0.first <= sequence && sequence < $0.end }) {
                        let upTo = range.end - run.first >= UInt64(n) ? n : Int(range.end - run.first)
                        var piece = run.items(i..<upTo, ends)
                        let count = upTo - i
                        i = upTo
                        guard owned.count + count <= configuration.maxOwnedItems else {
                            local.append(piece)
                            continue
                        }
                        adoptAsOwn(&piece, count: count, ends)
                        local.append(piece)
                    } else {
                        // Kept as it is up to the next range that starts inside the run.
                        let end = run.first &+ UInt64(n)
                        let next = ranges.lazy.filter { $0.attempt == run.attempt && $0.first > sequence && $0.first < end }.map(\.first).min()
                        let upTo = next.map { Int($0 - run.first) } ?? n
                        local.append(i == 0 && upTo == n ? run : run.items(i..<upTo, ends))
                        i = upTo
                    }
                }
            }
        }
    }

    /// A stopping `owner` offers this node its items in `groups`. Those queued here are adopted
    /// at once. The ack waits for the transfers now in flight with the owner's items: an
    /// acknowledged one yields custody news (sent before the ack, so the owner offers those
    /// records to the node that holds the items now), a returned one's items are adopted.
    mutating func receiveOwnerChange(_ changeID: UInt64, groups: [CustodyChange], from owner: PeerID,
                                             _ actions: inout [Action], now: UInt64) {
        adoptHeld(groups, from: owner)
        let carrying = transfers.ids { $0.runs.contains { $0.origin == owner } }
        let change = PendingChange(owner: owner, changeID: changeID, groups: groups, transfers: Set(carrying))
        if change.transfers.isEmpty || configuration.delivery != .atLeastOnce {
            answerOwnerChange(change, &actions, now: now)
        } else {
            pendingChanges.append(change)
        }
    }

    /// Transfers `ids` were acknowledged or `returned`: owner changes waiting for them are
    /// answered once none is left.
    mutating func settlePendingChanges(_ ids: [UInt64], returned: Bool, _ actions: inout [Action], now: UInt64) {
        var index = 0
        while index < pendingChanges.count {
            var change = pendingChanges[index]
            guard !change.transfers.isDisjoint(with: ids) else {
                index += 1
                continue
            }
            change.transfers.subtract(ids)
            if returned { adoptHeld(change.groups, from: change.owner) }
            if change.transfers.isEmpty {
                pendingChanges.remove(at: index)
                answerOwnerChange(change, &actions, now: now)
            } else {
                pendingChanges[index] = change
                index += 1
            }
        }
    }

    /// Every pending notice for the owner first (FIFO link: the owner applies the custody news
    /// before the ack), then the ack.
    private mutating func answerOwnerChange(_ change: PendingChange, _ actions: inout [Action], now: UInt64) {
        flushNotices(&actions, now: now, force: true, only: change.owner, uncapped: true)
        actions.append(.send(.ownerUpdateAck(queue: name, updateID: change.changeID), to: change.owner))
    }
}
