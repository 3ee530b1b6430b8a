import DequeModule
import P2PQWire

// MARK: - Replication

extension QueueMachine {
    struct ReplicaSend: Sendable {
        var peer: PeerID
        var runs: [SequenceRun]
        var count: Int
        var deadline: UInt64
    }

    struct PendingReleases: Sendable {
        var runs: [SequenceRun] = []
        var items = 0
        var since: UInt64
    }

    /// Whether pushed items get a replica (at least once, replicated).
    var replicates: Bool { configuration.delivery == .atLeastOnce && configuration.replication == .replicated }

    /// Whether an item pushed before `mark` (a value of ``nextItemSequence``) still waits for
    /// its replica to be acknowledged: its push has not completed yet. False when no peer
    /// keeps replicas (the push completes unreplicated).
    public func awaitsReplica(before mark: UInt64) -> Bool {
        if let first = replicaBacklog.first, first.first < mark { return true }
        if transfers.all.contains(where: { ($0.unreplicatedFrom ?? .max) < mark }) { return true }
        return replicaSends.values.contains { send in send.runs.contains { $0.first < mark } }
    }

    /// Replicas kept here for other owners (not queued), and their payload bytes.
    public var shelvedItems: Int { shelf.items }
    public var shelvedBytes: Int { shelf.bytes }
    /// Items on replica transfers awaiting their ack.
    public var replicasInFlight: Int { replicaSends.values.reduce(0) { $0 + $1.count } }
    /// Items whose release is not sent yet, all replica holders together.
    public var pendingReleases: Int { releases.values.reduce(0) { $0 + $1.items } }

    /// Distinct replica holders of the records of a run (mostly one, or none).
    struct ReplicaHandles {
        var first = HolderTable.here
        var others: [UInt32] = []

        @inline(__always)
        mutating func note(_ handle: UInt32) {
            guard handle != HolderTable.here, handle != HolderTable.inTransit, handle != first else { return }
            if first == HolderTable.here { first = handle } else if !others.contains(handle) { others.append(handle) }
        }
    }

    /// Own items `first ..< first + count`, here, need a replica (sent from `finish`).
    mutating func needReplicas(first: UInt64, count: Int, _ actions: inout [Action], now: UInt64) {
        guard count > 0 else { return }
        insertBacklog(SequenceRun(first: first, count: UInt32(count)))
    }

    /// Adds `run` to the backlog, which stays sorted (for the pushes' mark) and disjoint: an
    /// item listed twice would go twice in one replica transfer, or in two, and the second
    /// ack would release the copy the first one kept.
    mutating func insertBacklog(_ run: SequenceRun) {
        guard run.count > 0 else { return }
        if let last = replicaBacklog.last {
            let end = last.first &+ UInt64(last.count)
            if end == run.first && last.count <= UInt32.max - run.count {
                replicaBacklog[replicaBacklog.count - 1].count += run.count
                return
            }
            if end > run.first {
                // Older items (a holder died, a replica was refused): those not waiting already.
                var pieces: [SequenceRun] = []
                var from = run.first
                let runEnd = run.first &+ UInt64(run.count)
                for waiting in replicaBacklog {
                    let waitingEnd = waiting.first &+ UInt64(waiting.count)
                    if waitingEnd <= from { continue }
                    if waiting.first >= runEnd { break }
                    if waiting.first > from { pieces.append(SequenceRun(first: from, count: UInt32(waiting.first - from))) }
                    from = Swift.max(from, waitingEnd)
                    if from >= runEnd { break }
                }
                if from < runEnd { pieces.append(SequenceRun(first: from, count: UInt32(runEnd - from))) }
                for piece in pieces {
                    var low = 0, high = replicaBacklog.count
                    while low < high {
                        let mid = (low + high) / 2
                        if replicaBacklog[mid].first < piece.first { low = mid + 1 } else { high = mid }
                    }
                    replicaBacklog.insert(piece, at: low)
                }
                return
            }
        }
        replicaBacklog.append(run)
    }

    /// Sends the backlog's items as replica transfers to the replica peer (a live peer that
    /// keeps replicas and has not refused lately), while it has transfer slots free. With no
    /// live peer that keeps replicas, the backlog is dropped: the items stay unreplicated.
    mutating func sendReplicas(_ actions: inout [Action], now: UInt64) {
        guard !replicaBacklog.isEmpty, !isDraining else { return }
        let capable = peers.filter { $0.value.connected && $0.value.keepsReplicas && !$0.value.closed }.keys.sorted()
        guard replicates, !capable.isEmpty else {
            replicaBacklog.removeAll()
            return
        }
        while !replicaBacklog.isEmpty {
            func ready(_ peer: PeerID) -> Bool {
                (peers[peer]?.replicaRefusedUntil ?? .max) <= now
                    && replicaSends.values.reduce(0) { $0 + ($1.peer == peer ? 1 : 0) } < configuration.maxTransfersInFlightPerPeer
            }
            let peer: PeerID
            if let current = replicaPeer, capable.contains(current), (peers[current]?.replicaRefusedUntil ?? .max) <= now {
                // Consecutive items go to one holder; a busy one is waited for (its acks send more).
                guard ready(current) else { return }
                peer = current
            } else if let next = capable.first(where: ready) {
                peer = next
            } else {
                return  // every peer refused lately: retried when the first may take again
            }
            replicaPeer = peer
            sendReplica(to: peer, &actions, now: now)
        }
    }

    /// One replica transfer to `peer`, from the front of the backlog (items popped or moved on
    /// since are skipped).
    private mutating func sendReplica(to peer: PeerID, _ actions: inout [Action], now: UInt64) {
        let limit = Swift.min(configuration.maxTransferItems, QueueWire.maxTransferItems)
        var budget = configuration.maxFrameSize - 1 - QueueWire.transferOverhead(queueNameLength: name.utf8.count)
            - QueueWire.originSize
        var buffer: [UInt8] = []
        var ends: [UInt32] = []
        var wireRuns: [QueueRun] = []
        var sent: [SequenceRun] = []
        var count = 0
        var cachedSlot = UInt32.max
        var cached: [UInt8] = []
        var full = false
        while !full, count < limit, let front = replicaBacklog.first {
            var consumed: UInt32 = 0
            while consumed < front.count {
                let sequence = front.first &+ UInt64(consumed)
                guard let record = owned[sequence], record.holder == HolderTable.here, record.replica == HolderTable.here else {
                    consumed += 1
                    continue
                }
                let length = Int(record.extent.length)
                let continues = wireRuns.last.map { $0.first &+ UInt64($0.count) == sequence } ?? false
                let cost = length + QueueWire.itemOverhead + (continues ? 0 : QueueWire.runOverhead)
                guard count < limit, cost <= budget else {
                    full = true
                    break
                }
                budget -= cost
                if record.extent.buffer != cachedSlot {
                    cachedSlot = record.extent.buffer
                    cached = store.array(cachedSlot)
                }
                let start = Int(record.extent.start)
                buffer.append(contentsOf: cached[start..<start + length])
                ends.append(UInt32(buffer.count))
                if continues {
                    wireRuns[wireRuns.count - 1].count += 1
                    wireRuns[wireRuns.count - 1].bytes += UInt32(length)
                    sent[sent.count - 1].count += 1
                } else {
                    wireRuns.append(QueueRun(origin: localPeer, first: sequence, count: 1, attempt: 0, hops: 0, slot: 0,
                                             index: UInt32(ends.count - 1), start: UInt32(buffer.count - length),
                                             bytes: UInt32(length)))
                    sent.append(SequenceRun(first: sequence, count: 1))
                }
                count += 1
                consumed += 1
            }
            if consumed == front.count {
                replicaBacklog.removeFirst()
            } else {
                replicaBacklog[0] = SequenceRun(first: front.first &+ UInt64(consumed), count: front.count - consumed)
            }
        }
        guard count > 0 else { return }
        let id = transfers.takeID()
        replicaSends[id] = ReplicaSend(peer: peer, runs: sent, count: count, deadline: now + configuration.transferTimeout)
        let items = TransferItems(buffers: [buffer], ends: [ends], runs: wireRuns)
        actions.append(.send(.transfer(queue: name, transferID: id, kind: .replica, requestID: 0, items: items), to: peer))
    }

    /// The answer to a replica transfer (`nil`: it could not be sent). Accepted: each item
    /// still here names its replica holder, and the holder is told at once to drop the copies
    /// of items that left meanwhile. Refused: the items go back to the backlog and the peer is
    /// not asked for a stats interval.
    mutating func replicaAcknowledged(_ id: UInt64, status: TransferStatus?, now: UInt64, _ actions: inout [Action]) {
        guard let send = replicaSends.removeValue(forKey: id) else { return }
        guard status == .accepted else {
            if status != nil {
                peers[send.peer]?.replicaRefusedUntil = now + configuration.statsInterval
                counters.replicasRefused += send.count
            }
            if replicaPeer == send.peer { replicaPeer = nil }
            for run in send.runs { insertBacklog(run) }
            return
        }
        let handle = holders.handle(for: send.peer)
        counters.replicated += send.count
        for run in send.runs {
            for offset in 0..<UInt64(run.count) {
                let sequence = run.first &+ offset
                var kept = false
                _ = owned.modify(sequence) { record in
                    guard record.holder == HolderTable.here, record.replica == HolderTable.here else { return }
                    record.replica = handle
                    kept = true
                }
                if !kept { release(SequenceRun(first: sequence, count: 1), to: send.peer, now: now) }
            }
        }
    }

    /// Marks the records of own items without a replica in these runs (a transfer's) as in
    /// transit: no replica is sent for them unless the transfer comes back. Returns the
    /// lowest such sequence.
    mutating func markInTransit(_ sent: [QueueRun]) -> UInt64? {
        var lowest: UInt64?
        for run in sent where run.origin == localPeer {
            owned.modifyRun(first: run.first, count: Int(run.count)) { sequence, record in
                guard record.replica == HolderTable.here, record.holder == HolderTable.here else { return }
                record.replica = HolderTable.inTransit
                if lowest == nil || sequence < lowest! { lowest = sequence }
            }
        }
        return lowest
    }

    /// A transfer came back: its own items marked in transit need a replica again.
    mutating func returnedFromTransit(_ sent: [QueueRun]) {
        for run in sent where run.origin == localPeer {
            var any = false
            owned.modifyRun(first: run.first, count: Int(run.count)) { _, record in
                guard record.replica == HolderTable.inTransit else { return }
                record.replica = HolderTable.here
                any = true
            }
            if any { insertBacklog(SequenceRun(first: run.first, count: run.count)) }
        }
    }

    /// Puts every own item here with no replica (and none on the way) in the backlog.
    mutating func replicateUnreplicated() {
        let sequences = owned.sequences { $0.holder == HolderTable.here && $0.replica == HolderTable.here }
        var pending: SequenceRun?
        for sequence in sequences {
            if let run = pending, run.first &+ UInt64(run.count) == sequence, run.count < UInt32.max {
                pending!.count += 1
                continue
            }
            if let run = pending { insertBacklog(run) }
            pending = SequenceRun(first: sequence, count: 1)
        }
        if let run = pending { insertBacklog(run) }
    }

    /// `peer` is back after a death verdict: the replicas it may still keep for this node were
    /// sent to another peer meanwhile, so all it keeps is released (on the FIFO link, ahead of
    /// any replica sent to it from now on). Sent unbatched; if there is no link yet, kept for it.
    mutating func releaseAll(to peer: PeerID, _ actions: inout [Action]) {
        guard configuration.delivery == .atLeastOnce else { return }
        var runs: [SequenceRun] = []
        var first = configuration.firstSequence
        while first < nextSequence {
            let count = UInt32(Swift.min(UInt64(UInt32.max), nextSequence - first))
            runs.append(SequenceRun(first: first, count: count))
            first &+= UInt64(count)
        }
        guard !runs.isEmpty else { return }
        let perMessage = Swift.max(1, Swift.min(QueueWire.maxRunsPerUpdate,
                                                (configuration.maxFrameSize - 1 - (4 + name.utf8.count + 4)) / 12))
        var index = 0
        while index < runs.count {
            let end = Swift.min(runs.count, index + perMessage)
            actions.append(.send(.replicaRelease(queue: name, runs: Array(runs[index..<end])), to: peer))
            index = end
        }
    }

    /// The replicas of `run` at the holders `handles` are no longer needed.
    mutating func releaseReplicas(_ handles: ReplicaHandles, _ run: SequenceRun, now: UInt64) {
        guard handles.first != HolderTable.here else { return }
        release(run, replica: handles.first, now: now)
        for handle in handles.others { release(run, replica: handle, now: now) }
    }

    mutating func release(_ run: SequenceRun, replica handle: UInt32, now: UInt64) {
        guard let peer = holders.peer(of: handle) else { return }
        release(run, to: peer, now: now)
    }

    /// Queues a release for `peer` (sent in batches, like pop confirmations).
    mutating func release(_ run: SequenceRun, to peer: PeerID, now: UInt64) {
        var entry = releases.removeValue(forKey: peer) ?? PendingReleases(since: now)
        if let last = entry.runs.last, last.first &+ UInt64(last.count) == run.first, last.count <= UInt32.max - run.count {
            entry.runs[entry.runs.count - 1].count += run.count
        } else {
            entry.runs.append(run)
        }
        entry.items += Int(run.count)
        releases[peer] = entry
    }

    /// Sends the releases that are due (a full batch, older than `confirmDelay`, or `force`)
    /// to holders that are connected.
    mutating func flushReleases(_ actions: inout [Action], now: UInt64, force: Bool) {
        guard !releases.isEmpty else { return }
        let perMessage = Swift.max(1, Swift.min(QueueWire.maxRunsPerUpdate,
                                                (configuration.maxFrameSize - 1 - (4 + name.utf8.count + 4)) / 12))
        for peer in releases.keys.sorted() {
            guard let entry = releases[peer], peers[peer]?.connected == true,
                  force || entry.items >= configuration.confirmBatch || now >= entry.since + configuration.confirmDelay
            else { continue }
            releases[peer] = nil
            var index = 0
            while index < entry.runs.count {
                let end = Swift.min(entry.runs.count, index + perMessage)
                actions.append(.send(.replicaRelease(queue: name, runs: Array(entry.runs[index..<end])), to: peer))
                index = end
            }
        }
    }

    /// The earliest time replication needs the timer: a replica transfer's timeout, a release
    /// batch's delay, the end of a refusal while items wait.
    func replicaDeadline(_ deadline: inout UInt64, now: UInt64) {
        for send in replicaSends.values { deadline = Swift.min(deadline, send.deadline) }
        for (peer, entry) in releases where peers[peer]?.connected == true {
            deadline = Swift.min(deadline, entry.since + configuration.confirmDelay)
        }
        if !replicaBacklog.isEmpty {
            for view in peers.values where view.connected && view.keepsReplicas && view.replicaRefusedUntil > now {
                deadline = Swift.min(deadline, view.replicaRefusedUntil)
            }
        }
    }
}
