import DequeModule
import P2PQWire

// Transfers of queued items between nodes: sending, acknowledging, returning, receiving.

extension QueueMachine {
    // MARK: Transfers

    /// Sends up to `count` items from the front of the queue to `peer` in one transfer. Returns
    /// how many went.
    @discardableResult
    mutating func sendTransfer(
        to peer: PeerID, count: Int, kind: TransferKind, requestID: UInt64 = 0, _ actions: inout [Action], now: UInt64
    ) -> Int {
        guard count > 0, !local.isEmpty, transfers.count(to: peer) < configuration.maxTransfersInFlightPerPeer else { return 0 }
        // A stopping node's items leave with their ownership, whatever sends them.
        let kind = isDraining && peers[peer]?.adoptsOwnership == true ? TransferKind.drain : kind
        var budget = configuration.maxFrameSize - 1 - QueueWire.transferOverhead(queueNameLength: name.utf8.count)
        var origins: [PeerID] = []
        var sent: [QueueRun] = []
        let limit = Swift.min(count, configuration.maxTransferItems, QueueWire.maxTransferItems)
        var items = 0
        var bytes = 0
        // Runs are taken from the front whole, or the part of one that fits (the rest stays in
        // front), sized as `QueueMessage` encodes them: a run header unless the run continues
        // the one before, the origin once, a length per item and the bytes.
        while items < limit, var run = local.first {
            run.hops &+= 1
            var fixed = 0
            if sent.isEmpty || !sent[sent.count - 1].isContinued(by: run) { fixed += QueueWire.runOverhead }
            let newOrigin = !origins.contains(run.origin)
            if newOrigin { fixed += QueueWire.originSize }
            let wanted = Swift.min(Int(run.count), limit - items)
            let fitting = store.ends(run.slot).withUnsafeBufferPointer { ends -> (Int, QueueRun?) in
                // The cost of the first `n` items.
                func cost(_ n: Int) -> Int {
                    guard n > 0 else { return fixed }
                    return fixed + n * QueueWire.itemOverhead + Int(run.itemEnd(n - 1, ends) &- run.start)
                }
                var n = wanted
                if cost(n) > budget {
                    // The largest n that fits (cost grows with n).
                    var low = 0, high = n - 1
                    while low < high {
                        let mid = (low + high + 1) / 2
                        if cost(mid) <= budget { low = mid } else { high = mid - 1 }
                    }
                    n = low
                    if n > 0 && cost(n) > budget { n = 0 }
                }
                guard n > 0 else { return (0, nil) }
                budget -= cost(n)
                guard n < Int(run.count) else { return (n, nil) }
                var (head, tail) = run.split(at: n, ends)
                tail.hops &-= 1
                run = head
                return (n, tail)
            }
            guard fitting.0 > 0 else { break }
            local.removeFirst(leaving: fitting.1)
            if newOrigin { origins.append(run.origin) }
            items += Int(run.count)
            bytes += Int(run.bytes)
            sent.append(run)
        }
        guard !sent.isEmpty else { return 0 }
        let carried = transferItems(sent)
        let id = transfers.takeID()
        transfers.record(OutgoingTransfer(peer: peer, runs: sent, count: items, bytes: bytes, kind: kind, requestID: requestID,
                                          deadline: now + configuration.transferTimeout,
                                          unreplicatedFrom: replicates && kind != .drain ? markInTransit(sent) : nil), id: id)
        peers.update(peer) { $0.inFlight += items }
        actions.append(.send(.transfer(queue: name, transferID: id, kind: kind, requestID: requestID, items: carried), to: peer))
        return items
    }

    /// `runs` (their arrays held in `store`) as a transfer message carries them: each array
    /// (with its table of ends) once, and the runs pointing into them.
    mutating func transferItems(_ runs: [QueueRun]) -> TransferItems {
        var buffers: [[UInt8]] = []
        var ends: [[UInt32]] = []
        store.startNumbering()
        let carried = runs.map { run in
            var run = run
            let (index, isNew) = store.number(run.slot)
            if isNew {
                buffers.append(store.array(run.slot))
                ends.append(store.ends(run.slot))
            }
            run.slot = index
            return run
        }
        return TransferItems(buffers: buffers, ends: ends, runs: carried)
    }

    /// Sends the transfers to `peer` not acknowledged yet again, as they were (IDs, attempts,
    /// hop counts): the peer drops the copies it already has and acknowledges each.
    mutating func sendTransfersAgain(to peer: PeerID, _ actions: inout [Action], now: UInt64) {
        for id in transfers.ids(where: { $0.peer == peer }) { _ = sendAgain(id, &actions, now: now) }
    }

    /// Sends transfer `id` again as it was, with a new deadline; false if it is not in flight.
    private mutating func sendAgain(_ id: UInt64, _ actions: inout [Action], now: UInt64) -> Bool {
        guard let transfer = transfers.renew(id, deadline: now + configuration.transferTimeout) else { return false }
        counters.transfersSentAgain += transfer.count
        actions.append(.send(.transfer(queue: name, transferID: id, kind: transfer.kind, requestID: transfer.requestID,
                                       items: transferItems(transfer.runs)), to: transfer.peer))
        return true
    }

    /// Transfers unacknowledged past their deadline. To a peer still linked the transfer goes
    /// again, as it was: on a live link it is most likely still on its way (a slow or busy
    /// link), and taken back its items would go to another consumer while the peer pops them
    /// too; the peer drops copies it already has and acks, so a lost ack costs one resend.
    /// A link that dies takes them back (``peerDisconnected(_:now:)``), as do these to a peer
    /// no longer linked.
    mutating func transfersTimedOut(_ ids: [UInt64], _ actions: inout [Action], now: UInt64) {
        // While this node checks what it holds after a stall (it may have been declared dead),
        // its items in flight come back to be held and checked with the rest, never sent on.
        var back: [UInt64] = []
        for id in ids {
            if !isCheckingAfterStall, let peer = transfers[id]?.peer, peers[peer]?.connected == true,
               sendAgain(id, &actions, now: now) { continue }
            back.append(id)
        }
        if !back.isEmpty { returnTransfers(back, &actions, now: now) }
    }

    func updatesInFlight(to owner: PeerID) -> Int {
        sentUpdates.values.reduce(0) { $0 + ($1.owner == owner ? 1 : 0) }
    }

    /// Puts the items of these transfers back at the front, oldest transfer's items first.
    mutating func returnTransfers(_ ids: [UInt64], _ actions: inout [Action], now: UInt64) {
        for id in ids.sorted(by: >) {
            guard let transfer = transfers.remove(id) else { continue }
            // Back as they were before the transfer (the hop it did not make undone).
            local.putBack(transfer.runs.lazy.map { run in
                var run = run
                run.hops &-= 1
                return run
            })
            counters.returnedFromTransfers += transfer.count
            peers.update(transfer.peer) { $0.inFlight -= transfer.count }
            if transfer.unreplicatedFrom != nil { returnedFromTransit(transfer.runs) }
        }
        if !pendingChanges.isEmpty { settlePendingChanges(ids, returned: true, &actions, now: now) }
        // Back during a check after a stall: held and checked like the items that stayed here
        // (an owner may have re-queued them meanwhile), not handed to consumers.
        if isCheckingAfterStall { holdBack(&actions, now: now) }
        serveWaiters(&actions, now: now)
    }

    /// `keepingTransfers`: the link was replaced, and the transfers to `peer` go again on the
    /// new one (``sendTransfersAgain(to:_:now:)``) instead of coming back.
    mutating func linkLost(_ peer: PeerID, keepingTransfers: Bool = false, _ actions: inout [Action], now: UInt64) {
        // A check on the lost link may be lost with it: asked again on the next one.
        if heldBack[peer] != nil { heldBack[peer]!.checkID = nil }
        if heldOwn[peer] != nil { heldOwn[peer]!.checkID = nil }
        // Updates the owner may not have got go out again on the next link (applied once).
        for id in sentUpdates.filter({ $0.value.owner == peer }).keys.sorted() {
            requeueNotices(sentUpdates.removeValue(forKey: id)!, now: now)
        }
        // Ownership offered to it stays here (and with it the re-queue if it dies).
        for id in sentChanges.filter({ $0.value.holder == peer }).keys.sorted() {
            revertGrant(sentChanges.removeValue(forKey: id)!)
        }
        // Its owner changes cannot be acknowledged on this link: it keeps the records (and
        // offers them again on the next one).
        pendingChanges.removeAll { $0.owner == peer }
        if !keepingTransfers { returnTransfers(transfers.ids { $0.peer == peer }, &actions, now: now) }
        // Replicas sent on the lost link go to the backlog (sent again, maybe elsewhere).
        for id in replicaSends.filter({ $0.value.peer == peer }).keys.sorted() {
            replicaAcknowledged(id, status: nil, now: now, &actions)
        }
        if let steal, steal.peer == peer {
            self.steal = nil
            maybeSteal(&actions, now: now)
        }
    }

    mutating func receiveTransfer(
        _ items: TransferItems, id: UInt64, kind: TransferKind, requestID: UInt64, from peer: PeerID,
        _ actions: inout [Action], now: UInt64
    ) {
        if requestID != 0, let steal, steal.peer == peer, steal.requestID == requestID { self.steal = nil }
        if kind == .replica {
            shelve(items, id: id, from: peer, &actions, now: now)
            return
        }
        guard !isClosed else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .closed), to: peer))
            return
        }
        let bytes = items.payloadBytes
        // A stopping peer's own items become ours (the receiver of a drain owns them).
        let adopts = kind == .drain && configuration.delivery == .atLeastOnce
        guard heldItems + items.count <= configuration.maxItems, heldBytes + bytes <= configuration.maxBytes,
              !adopts || (owned.count + items.count <= configuration.maxOwnedItems
                          && ownedBytes + bytes <= configuration.maxOwnedBytes) else {
            actions.append(.send(.transferAck(queue: name, transferID: id, status: .full), to: peer))
            return
        }
        var accepted = 0
        // Each of the message's arrays (and its table of ends) gets a slot in the store when its
        // first item is kept.
        var slots = [UInt32](repeating: .max, count: items.buffers.count)
        let tracksOwn = configuration.delivery == .atLeastOnce && owned.count > 0
        for run in items.runs {
            let buffer = Int(run.slot)
            items.ends[buffer].withUnsafeBufferPointer { ends in
                // The run's items new here, as runs: a retransmitted copy is dropped.
                var keptFrom: Int?
                func keep(upTo end: Int) {
                    guard let from = keptFrom else { return }
                    keptFrom = nil
                    let n = end - from
                    if slots[buffer] == .max {
                        slots[buffer] = store.hold(items.buffers[buffer], ends: items.ends[buffer], holders: n)
                    } else {
                        store.retain(slots[buffer], count: n)
                    }
                    var kept = run.items(from..<end, ends)
                    kept.slot = slots[buffer]
                    // Replicas of these items kept here: the queued copy stands for them now
                    // (their owner releases them once it has the ack, but an owner paused or
                    // killed before that release would have them re-queued here a second time).
                    if run.origin != localPeer, shelf.holds(run.origin) {
                        shelf.drop(SequenceRun(first: kept.first, count: UInt32(n)), of: run.origin, store: &store)
                    }
                    if adopts && run.origin == peer {
                        // The dedup above keeps the old ids, so a retransmission is still dropped.
                        adoptAsOwn(&kept, count: n, ends)
                    } else if tracksOwn && run.origin == localPeer {
                        owned.modifyRun(first: kept.first, count: n) { _, record in
                            guard record.attempt == kept.attempt, kept.hops > record.hops else { return }
                            record.holder = HolderTable.here
                            record.hops = kept.hops
                        }
                        // Back here alone (the holder that passed them on forgets them).
                        if replicates { needReplicas(first: kept.first, count: n, &actions, now: now) }
                    }
                    accepted += n
                    local.append(kept)
                }
                // Originals of an owner whose replicas this node re-queued as its own (it was
                // declared dead here, then came back without learning it in time): the
                // re-queued copies stand for them, so they are dropped and confirmed to it as
                // consumed here.
                let requeued = run.origin == localPeer ? nil : shelf.requeuedRuns(of: run.origin)
                let stale = requeued.map { Self.overlaps(SequenceRun(first: run.first, count: run.count), $0) } ?? false
                // A run all new here (the common case) is remembered at once; else item by item.
                if !stale, transfers.seen.insertRun(origin: run.origin, first: run.first, count: Int(run.count), attempt: run.attempt, hops: run.hops) {
                    keptFrom = 0
                    keep(upTo: Int(run.count))
                    return
                }
                for i in 0..<Int(run.count) {
                    let sequence = run.first &+ UInt64(i)
                    if stale, let requeued, Self.contains(requeued, sequence) {
                        counters.staleCopiesDropped += 1
                        confirm(SequenceRun(first: sequence, count: 1), to: run.origin, now: now)
                        keep(upTo: i)
                        continue
                    }
                    if transfers.seen.insert(ItemID(origin: run.origin, sequence: sequence), attempt: run.attempt, hops: run.hops) {
                        if keptFrom == nil { keptFrom = i }
                    } else {
                        counters.duplicatesDropped += 1
                        keep(upTo: i)
                    }
                }
                keep(upTo: Int(run.count))
            }
        }
        counters.transferredIn += accepted
        if accepted > 0 {
            counters.transferredInByPeer[peer, default: 0] += accepted
            if counters.transferredInByPeer.count > Self.maxCountedPeers {
                counters.transferredInByPeer = counters.transferredInByPeer.filter { peers[$0.key] != nil }
            }
        }
        if kind != .steal && kind != .dispatch { lastTransferReceivedAt = now }
        actions.append(.send(.transferAck(queue: name, transferID: id, status: .accepted), to: peer))
        serveWaiters(&actions, now: now)
        guard accepted > 0 else { return }
        // Passed on at once, not at the next stats round: beyond the first node's links, work
        // pushed at one node would otherwise move one hop per round (250 ms).
        dispatchToIdlePeers(&actions, now: now)
        announceGrowth(&actions, now: now)
    }

    mutating func acknowledge(_ id: UInt64, status: TransferStatus, from peer: PeerID, _ actions: inout [Action], now: UInt64) {
        if replicaSends[id]?.peer == peer {
            replicaAcknowledged(id, status: status, now: now, &actions)
            return
        }
        guard let transfer = transfers[id], transfer.peer == peer else { return }
        guard status == .accepted else {
            peers[peer]?.accepting = false  // until its next report
            if status == .closed { peers[peer]?.closed = true }
            returnTransfers([id], &actions, now: now)
            return
        }
        _ = transfers.remove(id)
        for run in transfer.runs { store.release(run.slot, count: Int(run.count)) }
        peers.update(peer) { view in
            // Until its next report, the peer holds them and its idle consumers are busy.
            view.inFlight -= transfer.count
            view.reportedLength += Double(transfer.count)
            view.reportedWaiting = Swift.max(0, view.reportedWaiting - transfer.count)
        }
        counters.transferredOut += transfer.count
        counters.transferredOutByPeer[peer, default: 0] += transfer.count
        if counters.transferredOutByPeer.count > Self.maxCountedPeers {
            // Peers this machine no longer tracks (dead, new identities): their counts go.
            counters.transferredOutByPeer = counters.transferredOutByPeer.filter { peers[$0.key] != nil }
        }
        counters.transfersByKind[transfer.kind, default: 0] += transfer.count
        // A pure source sends on as acks free its transfer slots (ack-clocked, no gossip round).
        defer { feedFromSource(&actions, now: now) }
        guard configuration.delivery == .atLeastOnce else { return }
        // Custody news, a run at a time: this node's own items in its ownership window, the
        // others' gathered for their owners (consecutive runs of one owner, attempt and hop
        // count merge).
        let holder = holders.handle(for: peer)
        var runOwner: PeerID?
        var runKey = CustodyKey(holder: peer, attempt: 0, hops: 0)
        var pending = SequenceRun(first: 0, count: 0)
        for run in transfer.runs {  // hop counts already raised for the transfer
            if run.origin == localPeer && transfer.kind == .drain {
                // The receiver owns them now (it numbered them as its own).
                var freed = 0
                var replicas = ReplicaHandles()
                counters.ownershipHandedOver += owned.removeRun(first: run.first, count: Int(run.count)) { record in
                    freed += Int(record.extent.length)
                    store.release(record.extent.buffer)
                    replicas.note(record.replica)
                }
                ownedBytes -= freed
                releaseReplicas(replicas, SequenceRun(first: run.first, count: run.count), now: now)
            } else if run.origin == localPeer {
                // The holder's copy and this record are the two copies now: the replica goes.
                var replicas = ReplicaHandles()
                owned.modifyRun(first: run.first, count: Int(run.count)) { _, record in
                    guard record.attempt == run.attempt, run.hops > record.hops else { return }
                    record.holder = holder
                    record.hops = run.hops
                    replicas.note(record.replica)
                    record.replica = HolderTable.here
                }
                releaseReplicas(replicas, SequenceRun(first: run.first, count: run.count), now: now)
            } else if run.origin != peer {
                if run.origin == runOwner && runKey.attempt == run.attempt && runKey.hops == run.hops
                    && pending.first &+ UInt64(pending.count) == run.first && pending.count <= UInt32.max - run.count {
                    pending.count += run.count
                } else {
                    if let owner = runOwner { addRun(pending, to: owner, custody: runKey, now: now) }
                    runOwner = run.origin
                    runKey = CustodyKey(holder: peer, attempt: run.attempt, hops: run.hops)
                    pending = SequenceRun(first: run.first, count: run.count)
                }
            }
        }
        if let owner = runOwner { addRun(pending, to: owner, custody: runKey, now: now) }
        if !pendingChanges.isEmpty { settlePendingChanges([id], returned: false, &actions, now: now) }
        if isDraining { grantOwnership(&actions, now: now) }  // the records just pointed at `peer`
    }
}
