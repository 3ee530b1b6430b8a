import DequeModule
import P2PQWire

// After a death verdict: a peer's death re-queues what it held; this node's own verdict (or a
// stall) holds other owners' items back until they name the stale copies.

extension QueueMachine {
    /// One owner's items held back (this node may have been declared dead, so the owner may
    /// have re-queued them): in queue order, with the custody check asked about them.
    struct HeldBack: Sendable {
        var runs: [QueueRun] = []
        /// The check in flight to the owner; nil until sent (the owner may not be linked yet).
        var checkID: UInt64?
        /// With no verdict by then the items go back to consumers (a duplicate at worst).
        var deadline: UInt64
    }

    /// What ``peerDied(_:now:)`` does once the verdict is about another node. `processGone`:
    /// the peer is known to be a new process (``peerRestarted(_:linked:keepsReplicas:now:)``),
    /// so no release from the old one can still come.
    mutating func afterDeath(of peer: PeerID, processGone: Bool = false, _ actions: inout [Action], now: UInt64) {
        let linked = peers[peer]?.connected == true
        peers[peer] = nil
        // Transfers to it on a link still up stay in flight: a paused process reads and acks
        // them when it resumes, and taken back now their items would reach a consumer here
        // while it pops them too. They come back if the link fails, or if it is still dead at
        // their deadline; membership taking it back sends them again (it drops what it has).
        linkLost(peer, keepingTransfers: linked && !processGone, &actions, now: now)
        // Its notices stay (bounded per owner, for `deadOwnerRetention`): a verdict may be
        // one-sided (a paused owner, a one-way partition), and an owner that comes back must
        // learn of pops and custody changes, or a later death of the new holder loses items.
        appliedUpdates[peer] = nil
        if deadPeers.insert(peer).inserted {
            deadOrder.append(peer)
            diedAt[peer] = now
            if deadOrder.count > 1024, let oldest = deadOrder.popFirst() {
                deadPeers.remove(oldest)
                diedAt[oldest] = nil
                notices[oldest] = nil
            }
        }
        // Its items held back here can no longer be checked: consumers get them.
        release(heldBack.removeValue(forKey: peer), stale: [], &actions, now: now)
        // Own items held back for its verdict stay held (until the check's deadline, or its
        // answer if it comes back): right after this node's own stall, this verdict is the
        // suspect one, and the peer may well have re-queued them.
        // The replicas it asked this node to keep are the only copies now: queued here (once its
        // link is gone: what it sent before leaving counts).
        if linked && !processGone && shelf.holds(peer) {
            shelf.grace[peer] = now + configuration.stallThreshold
        } else {
            requeueShelf(of: peer, &actions, now: now)
        }
        releases[peer] = nil
        if replicaPeer == peer { replicaPeer = nil }
        if configuration.delivery == .atLeastOnce {
            if let handle = holders.handle(of: peer) {
                // The items it kept replicas of are here alone: replicated again elsewhere.
                let unreplicated = owned.sequences { $0.replica == handle }
                for sequence in unreplicated {
                    _ = owned.modify(sequence) { $0.replica = HolderTable.here }
                    if replicates { needReplicas(first: sequence, count: 1, &actions, now: now) }
                }
                let lost = owned.sequences { $0.holder == handle }
                requeue(lost, &actions, now: now)
                // No record names the peer any more (re-queued items are here).
                holders.forget(peer)
            }
        }
    }

    // MARK: After a death verdict

    /// Items are held back until an owner or replica holder names the stale copies (this node
    /// may have been declared dead).
    var isCheckingAfterStall: Bool { !heldOwn.isEmpty || !heldBack.isEmpty }

    /// A timer this machine armed that is met this late means the process was not running.
    mutating func detectStall(_ actions: inout [Action], now: UInt64) {
        // Measured from the latest input, not from the timer's deadline: that deadline may lie
        // up to a stats interval after the process stopped, which hid pauses just long enough
        // for a death verdict.
        defer { lastInputAt = Swift.max(lastInputAt ?? now, now) }
        guard let lastInputAt, now > lastInputAt, now - lastInputAt > configuration.stallThreshold else { return }
        holdBack(&actions, now: now)
    }

    /// Moves the queued items of other owners aside, out of consumers' reach, and asks each
    /// owner about them (at once if linked, else on its next link).
    mutating func holdBack(_ actions: inout [Action], now: UInt64) {
        guard configuration.delivery == .atLeastOnce else { return }
        holdBackReplicated(&actions, now: now)
        let here = localPeer
        guard local.runs.contains(where: { $0.origin != here }) else { return }
        var asked: Set<PeerID> = []
        for run in local.removeRuns(where: { $0.origin != here }) {
            heldBack[run.origin, default: HeldBack(deadline: now &+ configuration.custodyCheckTimeout)].runs.append(run)
            asked.insert(run.origin)
            heldBackItems += Int(run.count)
            heldBackBytes += Int(run.bytes)
        }
        for owner in asked.sorted() {
            heldBack[owner]?.checkID = nil  // a check already out did not cover the new items
            sendCheck(to: owner, &actions, now: now)
        }
    }

    /// Starts a check of the items held back for `peer` in `table` (``heldBack`` or
    /// ``heldOwn``): the new check's ID, which the entry now records, and the runs to ask
    /// about. Nil while a check is out, or while `peer` is not linked (asked on its next link).
    mutating func startCheck(of table: WritableKeyPath<QueueMachine, [PeerID: HeldBack]>,
                             for peer: PeerID) -> (id: UInt64, runs: [QueueRun])? {
        guard let held = self[keyPath: table][peer], held.checkID == nil, peers[peer]?.connected == true else { return nil }
        let id = nextCheckID
        nextCheckID += 1
        self[keyPath: table][peer]?.checkID = id
        return (id, held.runs)
    }

    /// Asks `owner` which of its items held back here are stale (a custody check).
    mutating func sendCheck(to owner: PeerID, _ actions: inout [Action], now: UInt64) {
        guard let (id, held) = startCheck(of: \.heldBack, for: owner) else { return }
        var checked: [CheckedRun] = []
        for run in held {
            if let last = checked.last, last.attempt == run.attempt, last.first &+ UInt64(last.count) == run.first,
               UInt64(last.count) + UInt64(run.count) <= UInt64(UInt32.max) {
                checked[checked.count - 1].count += run.count
            } else {
                checked.append(CheckedRun(first: run.first, count: run.count, attempt: run.attempt))
            }
        }
        // More runs than one frame holds (a queue fragmented item by item): the first ones are
        // checked, the rest released with them (a duplicate at worst).
        actions.append(.send(.custodyCheck(queue: name, checkID: id, runs: Array(checked.prefix(runsPerFrame(bytes: 16)))),
                             to: owner))
    }

    /// How many runs of `bytes` each a custody check or verdict may carry: one frame's worth.
    func runsPerFrame(bytes: Int) -> Int {
        Swift.min(QueueWire.maxRunsPerUpdate, (configuration.maxFrameSize - 1 - 4 - name.utf8.count - 8 - 4) / bytes)
    }

    /// The owner's side of a check: the copies it re-queued at another attempt, or whose
    /// record is gone (confirmed popped), as runs. Sequences it never made are left alone.
    func staleCopies(_ checked: [CheckedRun]) -> [SequenceRun] {
        guard configuration.delivery == .atLeastOnce else { return [] }
        var stale: [SequenceRun] = []
        let limit = runsPerFrame(bytes: 12)
        // A holder asks about at most what it may hold: a check claiming more gets no further.
        var budget = configuration.maxItems
        for run in checked {
            var sequence = Swift.max(run.first, configuration.firstSequence)
            let end = Swift.min(run.first &+ Swift.min(UInt64(run.count), UInt64(budget)), nextSequence)
            guard sequence < end else { continue }
            budget -= Int(end - sequence)
            while sequence < end {
                if owned[sequence].map({ $0.attempt != run.attempt }) ?? true,
                   Self.extend(&stale, with: SequenceRun(first: sequence, count: 1)), stale.count > limit {
                    // A verdict fits one frame: copies past that are not named (a duplicate at worst).
                    stale.removeLast()
                    return stale
                }
                sequence += 1
            }
        }
        return stale
    }

    /// Returns held-back items to the front of the queue (in their order), the `stale` ones
    /// (sorted runs) dropped.
    mutating func release(_ held: HeldBack?, stale: [SequenceRun], _ actions: inout [Action], now: UInt64) {
        guard let held else { return }
        let stale = stale.sorted { $0.first < $1.first }
        var back: [QueueRun] = []
        var dropped = 0
        for run in held.runs {
            heldBackItems -= Int(run.count)
            heldBackBytes -= Int(run.bytes)
            let ends = store.ends(run.slot)
            ends.withUnsafeBufferPointer { ends in
                var from: Int?
                func keep(upTo end: Int) {
                    guard let start = from else { return }
                    from = nil
                    back.append(start == 0 && end == Int(run.count) ? run : run.items(start..<end, ends))
                }
                for i in 0..<Int(run.count) {
                    let sequence = run.first &+ UInt64(i)
                    if Self.contains(stale, sequence) {
                        keep(upTo: i)
                        dropped += 1
                        store.release(run.slot)
                        // An own item its replica holder re-queued: that copy is the item now.
                        if run.origin == localPeer, let record = owned.remove(sequence) {
                            ownedBytes -= Int(record.extent.length)
                            store.release(record.extent.buffer)
                            // A replica sent elsewhere meanwhile is not needed either.
                            if record.replica != HolderTable.here && record.replica != HolderTable.inTransit {
                                release(SequenceRun(first: sequence, count: 1), replica: record.replica, now: now)
                            }
                        }
                    } else if from == nil {
                        from = i
                    }
                }
                keep(upTo: Int(run.count))
            }
        }
        counters.staleCopiesDropped += dropped
        local.putBack(back)
        serveWaiters(&actions, now: now)
    }

    /// Whether sorted, disjoint `runs` share a sequence with `run` (binary search).
    static func overlaps(_ run: SequenceRun, _ runs: [SequenceRun]) -> Bool {
        guard run.count > 0 else { return false }
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].first &+ UInt64(runs[mid].count) <= run.first { low = mid + 1 } else { high = mid }
        }
        return low < runs.count && runs[low].first < run.first &+ UInt64(run.count)
    }

    /// Whether sorted, disjoint `runs` contain `sequence` (binary search).
    static func contains(_ runs: [SequenceRun], _ sequence: UInt64) -> Bool {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].first &+ UInt64(runs[mid].count) <= sequence { low = mid + 1 } else { high = mid }
        }
        return low < runs.count && runs[low].first <= sequence
    }
}
