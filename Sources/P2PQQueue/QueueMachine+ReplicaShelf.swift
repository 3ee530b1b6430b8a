import DequeModule
import P2PQWire

// MARK: - Replication, holder side (the shelf itself is a ReplicaShelf)

extension QueueMachine {
    /// A replica transfer from `peer`: its items are kept on the shelf (bounded by the queue's
    /// limits, apart from them), not queued.
    mutating func shelve(_ items: TransferItems, id: UInt64, from peer: PeerID, _ actions: inout [Action], now: UInt64) {
        guard !isClosed else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .closed), to: peer))
            return
        }
        let bytes = items.payloadBytes
        guard shelf.items + items.count <= configuration.maxItems, shelf.bytes + bytes <= configuration.maxBytes else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .full), to: peer))
            return
        }
        shelf.keep(items, from: peer, store: &store)
        counters.replicasKept += items.count
        actions.append(.send(.transferAck(queue: name, transferID: id, status: .accepted), to: peer))
    }

    /// `owner` died: its replicas kept here, never released, are queued at the front as this
    /// node's own items (and replicated again from here).
    mutating func requeueShelf(of owner: PeerID, _ actions: inout [Action], now: UInt64) {
        guard let taken = shelf.takeAll(of: owner, now: now) else { return }
        var back: [QueueRun] = []
        back.reserveCapacity(taken.count)
        var count = 0
        for var run in taken {
            let n = Int(run.count)
            if configuration.delivery == .atLeastOnce {
                // Numbered as its own, and replicated again from here.
                store.ends(run.slot).withUnsafeBufferPointer { ends in adoptAsOwn(&run, count: n, ends) }
            }
            count += n
            back.append(run)
        }
        local.putBack(back)
        counters.replicasRequeued += count
        serveWaiters(&actions, now: now)
    }

    /// The holder's side of a replica check from `owner`: the checked items whose replicas
    /// were re-queued here. An owner still within its grace (declared dead, link up) is
    /// alive enough to ask: its shelf is re-queued now, so that the answer stays true.
    mutating func answerReplicaCheck(_ checkID: UInt64, _ checked: [SequenceRun], from owner: PeerID,
                                     _ actions: inout [Action], now: UInt64) {
        if shelf.grace.removeValue(forKey: owner) != nil { requeueShelf(of: owner, &actions, now: now) }
        var requeued: [SequenceRun] = []
        if let known = shelf.requeuedRuns(of: owner) {
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
        guard configuration.delivery == .atLeastOnce, local.runs.contains(where: { $0.origin == localPeer }) else { return }
        var asked: [UInt32] = []
        // Every run comes out; the kept ones (and kept pieces) go back in order.
        for run in local.removeAll() {
            guard run.origin == localPeer else {
                local.append(run)
                continue
            }
            // Split the run where the replica holder changes.
            store.ends(run.slot).withUnsafeBufferPointer { ends in
                var start = 0
                var current = owned[run.first]?.replica ?? HolderTable.here
                func flush(upTo end: Int) {
                    guard end > start else { return }
                    let piece = start == 0 && end == Int(run.count) ? run : run.items(start..<end, ends)
                    guard current != HolderTable.here && current != HolderTable.inTransit, let holder = holders.peer(of: current) else {
                        local.append(piece)
                        return
                    }
                    heldOwn[holder, default: HeldBack(deadline: now &+ configuration.custodyCheckTimeout)].runs.append(piece)
                    if !asked.contains(current) { asked.append(current) }
                    heldBackItems += end - start
                    heldBackBytes += Int(piece.bytes)
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
        for holder in asked.compactMap({ holders.peer(of: $0) }).sorted() {
            heldOwn[holder]?.checkID = nil  // a check already out did not cover the new items
            sendReplicaCheck(to: holder, &actions, now: now)
        }
    }

    /// Asks `holder` which of this node's items held back here it re-queued as its own (a
    /// replica check).
    mutating func sendReplicaCheck(to holder: PeerID, _ actions: inout [Action], now: UInt64) {
        guard let (id, held) = startCheck(of: \.heldOwn, for: holder) else { return }
        var checked: [SequenceRun] = []
        for run in held.sorted(by: { $0.first < $1.first }) {
            _ = Self.extend(&checked, with: SequenceRun(first: run.first, count: run.count))
        }
        // More runs than one frame holds: the first ones are checked, the rest released with
        // them (a duplicate at worst).
        let limit = runsPerFrame(bytes: 12)
        actions.append(.send(.replicaCheck(queue: name, checkID: id, runs: Array(checked.prefix(limit))), to: holder))
    }
}
