import DequeModule
import P2PQWire

// MARK: - Replication, holder side

extension QueueMachine {
    struct RequeuedReplicas: Sendable {
        /// Sorted, disjoint, merged where adjacent; at most `maxRequeuedRuns`.
        var runs: [SequenceRun] = []
        var at: UInt64
    }

    /// A replica transfer from `peer`: its items are kept on the shelf (bounded by the queue's
    /// limits, apart from them), not queued.
    mutating func shelve(_ items: TransferItems, id: UInt64, from peer: PeerID, _ actions: inout [Action], now: UInt64) {
        guard !isClosed else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .closed), to: peer))
            return
        }
        let bytes = items.payloadBytes
        guard shelfItems + items.count <= configuration.maxItems, shelfBytes + bytes <= configuration.maxBytes else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .full), to: peer))
            return
        }
        var shelf = shelves.removeValue(forKey: peer) ?? Deque()
        var slots = [UInt32](repeating: .max, count: items.buffers.count)
        for run in items.runs {
            // A copy sent again (after a timeout) replaces the one kept.
            unshelve(SequenceRun(first: run.first, count: run.count), in: &shelf)
            let buffer = Int(run.slot)
            if slots[buffer] == .max {
                slots[buffer] = store.hold(items.buffers[buffer], ends: items.ends[buffer], holders: Int(run.count))
            } else {
                store.retain(slots[buffer], count: Int(run.count))
            }
            var kept = run
            kept.slot = slots[buffer]
            var low = shelf.count
            if let last = shelf.last, last.first > kept.first {
                low = 0
                var high = shelf.count
                while low < high {
                    let mid = (low + high) / 2
                    if shelf[mid].first < kept.first { low = mid + 1 } else { high = mid }
                }
            }
            shelf.insert(kept, at: low)
            shelfItems += Int(run.count)
            shelfBytes += Int(run.bytes)
        }
        shelves[peer] = shelf
        counters.replicasKept += items.count
        actions.append(.send(.transferAck(queue: name, transferID: id, status: .accepted), to: peer))
    }

    /// Drops `owner`'s replicas of `run` (those kept).
    mutating func unshelve(_ run: SequenceRun, of owner: PeerID) {
        guard var shelf = shelves.removeValue(forKey: owner) else { return }
        unshelve(run, in: &shelf)
        if !shelf.isEmpty { shelves[owner] = shelf }
    }

    mutating func unshelve(_ run: SequenceRun, in shelf: inout Deque<QueueRun>) {
        let end = run.first &+ UInt64(run.count)
        // The first kept run that ends after `run.first` (kept runs do not overlap).
        var low = 0, high = shelf.count
        while low < high {
            let mid = (low + high) / 2
            if shelf[mid].first &+ UInt64(shelf[mid].count) <= run.first { low = mid + 1 } else { high = mid }
        }
        var index = low
        while index < shelf.count, shelf[index].first < end {
            let kept = shelf[index]
            let keptEnd = kept.first &+ UInt64(kept.count)
            let from = Int(Swift.max(kept.first, run.first) - kept.first)
            let to = Int(Swift.min(keptEnd, end) - kept.first)
            var pieces: [QueueRun] = []
            store.ends(kept.slot).withUnsafeBufferPointer { ends in
                if from > 0 { pieces.append(kept.items(0..<from, ends)) }
                if to < Int(kept.count) { pieces.append(kept.items(to..<Int(kept.count), ends)) }
            }
            let removed = to - from
            store.release(kept.slot, count: removed)
            shelfItems -= removed
            shelfBytes -= Int(kept.bytes) - pieces.reduce(0) { $0 + Int($1.bytes) }
            shelf.replaceSubrange(index..<index + 1, with: pieces)
            index += pieces.count
        }
    }

    /// `owner` died: its replicas kept here, never released, are queued at the front as this
    /// node's own items (and replicated again from here).
    mutating func requeueShelf(of owner: PeerID, _ actions: inout [Action], now: UInt64) {
        guard let shelf = shelves.removeValue(forKey: owner), !shelf.isEmpty else { return }
        var back: [QueueRun] = []
        back.reserveCapacity(shelf.count)
        var count = 0
        var requeued = requeuedReplicas.removeValue(forKey: owner) ?? RequeuedReplicas(at: now)
        requeued.at = now
        for var run in shelf {
            let n = Int(run.count)
            Self.insert(SequenceRun(first: run.first, count: run.count), into: &requeued.runs)
            shelfItems -= n
            shelfBytes -= Int(run.bytes)
            if configuration.delivery == .atLeastOnce {
                // Numbered as its own, and replicated again from here.
                store.ends(run.slot).withUnsafeBufferPointer { ends in adoptAsOwn(&run, count: n, ends) }
            }
            queuedItems += n
            queuedBytes += Int(run.bytes)
            count += n
            back.append(run)
        }
        if requeued.runs.count > Self.maxRequeuedRuns {
            // Remembered in part (a shelf fragmented item by item): the owner delivers the
            // rest as well (a duplicate at worst).
            requeued.runs.removeFirst(requeued.runs.count - Self.maxRequeuedRuns)
        }
        requeuedReplicas[owner] = requeued
        runs.insert(contentsOf: back, at: 0)
        counters.replicasRequeued += count
        serveWaiters(&actions, now: now)
    }

    /// How many runs of re-queued replicas are remembered per owner.
    static var maxRequeuedRuns: Int { 4096 }

    /// Inserts `run` into sorted, disjoint `runs`, merging with an adjacent neighbour.
    static func insert(_ run: SequenceRun, into runs: inout [SequenceRun]) {
        if runs.isEmpty || runs[runs.count - 1].first < run.first {
            if let last = runs.last, last.first &+ UInt64(last.count) == run.first,
               UInt64(last.count) + UInt64(run.count) <= UInt64(UInt32.max) {
                runs[runs.count - 1].count += run.count
            } else {
                runs.append(run)
            }
            return
        }
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].first < run.first { low = mid + 1 } else { high = mid }
        }
        runs.insert(run, at: low)
    }

    /// The holder's side of a replica check from `owner`: the checked items whose replicas
    /// were re-queued here. An owner still within its grace (declared dead, link up) is
    /// alive enough to ask: its shelf is re-queued now, so that the answer stays true.
    mutating func answerReplicaCheck(_ checkID: UInt64, _ checked: [SequenceRun], from owner: PeerID,
                                     _ actions: inout [Action], now: UInt64) {
        if shelfGrace.removeValue(forKey: owner) != nil { requeueShelf(of: owner, &actions, now: now) }
        var requeued: [SequenceRun] = []
        if let known = requeuedReplicas[owner]?.runs {
            let limit = runsPerFrame(bytes: 12)
            // Both lists are sorted and disjoint: one merge walk.
            var k = 0
            outer: for run in checked.sorted(by: { $0.first < $1.first }) {
                let end = run.first &+ UInt64(run.count)
                while k < known.count, known[k].first &+ UInt64(known[k].count) <= run.first { k += 1 }
                var j = k
                while j < known.count, known[j].first < end {
                    let from = Swift.max(known[j].first, run.first)
                    let to = Swift.min(known[j].first &+ UInt64(known[j].count), end)
                    if from < to {
                        guard requeued.count < limit else { break outer }  // the rest: a duplicate at worst
                        _ = Self.extend(&requeued, with: SequenceRun(first: from, count: UInt32(to - from)))
                    }
                    j += 1
                }
            }
        }
        actions.append(.send(.replicaVerdict(queue: name, checkID: checkID, requeued: requeued), to: owner))
    }

    /// This node may have been declared dead: its own queued items whose replica a peer keeps
    /// may have been re-queued there as that peer's own. They are held back from consumers and
    /// that peer is asked which (its verdict drops those here); items with no replica stay.
    mutating func holdBackReplicated(_ actions: inout [Action], now: UInt64) {
        guard configuration.delivery == .atLeastOnce, runs.contains(where: { $0.origin == localPeer }) else { return }
        var kept = Deque<QueueRun>()
        var asked: [UInt32] = []
        for run in runs {
            guard run.origin == localPeer else {
                kept.append(run)
                continue
            }
            // Split the run where the replica holder changes.
            store.ends(run.slot).withUnsafeBufferPointer { ends in
                var start = 0
                var current = owned[run.first]?.replica ?? HolderTable.here
                func flush(upTo end: Int) {
                    guard end > start else { return }
                    let piece = start == 0 && end == Int(run.count) ? run : run.items(start..<end, ends)
                    if current == HolderTable.here || current == HolderTable.inTransit || holders.peer(of: current) == nil {
                        kept.append(piece)
                        return
                    }
                    let holder = holders.peer(of: current)!
                    heldOwn[holder, default: HeldBack(deadline: now &+ configuration.custodyCheckTimeout)].runs.append(piece)
                    if !asked.contains(current) { asked.append(current) }
                    heldBackItems += end - start
                    heldBackBytes += Int(piece.bytes)
                    queuedItems -= end - start
                    queuedBytes -= Int(piece.bytes)
                }
                for i in 1..<Swift.max(1, Int(run.count)) {
                    let replica = owned[run.first &+ UInt64(i)]?.replica ?? HolderTable.here
                    if replica != current {
                        flush(upTo: i)
                        start = i
                        current = replica
                    }
                }
                flush(upTo: Int(run.count))
            }
        }
        runs = kept
        for holder in asked.compactMap({ holders.peer(of: $0) }).sorted() {
            heldOwn[holder]!.checkID = nil  // a check already out did not cover the new items
            sendReplicaCheck(to: holder, &actions, now: now)
        }
    }

    mutating func sendReplicaCheck(to holder: PeerID, _ actions: inout [Action], now: UInt64) {
        guard let held = heldOwn[holder], held.checkID == nil, peers[holder]?.connected == true else { return }
        let id = nextCheckID
        nextCheckID += 1
        heldOwn[holder]!.checkID = id
        var checked: [SequenceRun] = []
        for run in held.runs.sorted(by: { $0.first < $1.first }) {
            _ = Self.extend(&checked, with: SequenceRun(first: run.first, count: run.count))
        }
        // More runs than one frame holds: the first ones are checked, the rest released with
        // them (a duplicate at worst).
        let limit = runsPerFrame(bytes: 12)
        actions.append(.send(.replicaCheck(queue: name, checkID: id, runs: Array(checked.prefix(limit))), to: holder))
    }
}
