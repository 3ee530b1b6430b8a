import P2PQWire

/// The adaptive strategy (``BalanceStrategy/adaptive``): gossip every stats interval, steal on
/// idle, dispatch new items to idle peers, feed consumers from a pure source, and push the
/// surplus over the balanced finish time (all known items over all consumer rates).
struct AdaptiveBalancer: Balancer {
    let configuration: QueueConfiguration

    var announcesGrowth: Bool { true }

    func finishTime(_ load: LocalLoad) -> Double {
        load.hasConsumers ? Double(load.queued) / Swift.max(load.rate, configuration.minimumRate) : 0
    }

    private func isFresh(_ view: PeerView, now: UInt64) -> Bool {
        view.isFresh(now: now, maxAge: configuration.statsMaxAge)
    }

    /// Work stealing: consumers wait and the queue is empty, so ask the peer with the largest
    /// surplus over the balanced finish time (all known items over all consumer rates) for this
    /// node's share; the victim caps it at the pairwise fair split.
    func steal(_ load: LocalLoad, peers: PeerViews) -> TransferDecision? {
        guard !load.isClosed, load.waiters > 0, load.queued == 0 else { return nil }
        let mine = load.effectiveRate
        var totalLength = 0.0
        var totalRate = mine
        for view in peers.values where isFresh(view, now: load.now) {
            totalLength += view.length
            if view.accepting { totalRate += view.effectiveRate(prior: load.priorRate) }
        }
        guard totalLength >= 1 else { return nil }
        let balanced = totalLength / totalRate
        var best: (peer: PeerID, surplus: Double)?
        for (peer, view) in peers where isFresh(view, now: load.now) && view.length >= 1 {
            let rate = view.accepting ? view.effectiveRate(prior: load.priorRate) : 0
            let surplus = Swift.max(view.length - balanced * rate, view.waiting == 0 ? Swift.min(1, view.length) : 0)
            if best == nil || surplus > best!.surplus || (surplus == best!.surplus && peer < best!.peer) {
                best = (peer, surplus)
            }
        }
        guard let best, best.surplus > 0 else { return nil }
        let share = Swift.max(balanced * mine, Double(load.waiters))
        let room = configuration.maxItems - load.held
        let wanted = Swift.min(Int(Swift.min(share, best.surplus).rounded(.up)), configuration.maxTransferItems, room)
        guard wanted >= 1 else { return nil }
        return TransferDecision(peer: best.peer, count: wanted)
    }

    /// Direct dispatch: peers known to have idle consumers get items now, shared by rate.
    func dispatch(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? {
        guard load.waiters == 0, load.queued > 0 else { return nil }
        let idle = peers.filter { _, view in
            isFresh(view, now: load.now) && view.accepting && view.hasConsumers && view.waiting > 0
        }
        guard !idle.isEmpty else { return nil }
        // Only what the idle consumers can start now: a larger share is the thief's to ask for
        // (one outstanding steal per node), so several senders never pile onto one peer.
        return TransferPlan(kind: .dispatch, sends: idle.map { TransferDecision(peer: $0.key, count: $0.value.waiting) },
                            untilSent: false)
    }

    /// A pure source (no consumers here) gives its items away as fast as the consumer peers take
    /// transfers: each free transfer slot (``QueueConfiguration/maxTransfersInFlightPerPeer``)
    /// carries a full batch to the consumer peer that would finish its known work first (queue
    /// plus what is on the way, over its rate). Clocked by pushes and acknowledgements, not by
    /// gossip rounds; consumers even out among themselves by stealing. A peer that refused a
    /// transfer (full or closed) gets none until its next report, and a peer already holding
    /// more than a full window of transfers and more than four stats intervals of work at its
    /// measured rate gets none until it has worked some off (a slow consumer does not hoard).
    func feed(_ load: LocalLoad, peers: PeerViews) -> SourceFeed? {
        guard !load.isClosed, load.queued > 0, !load.hasConsumers else { return nil }
        let window = Double(configuration.maxTransfersInFlightPerPeer * configuration.maxTransferItems)
        let horizon = 4 * Double(configuration.statsInterval) / 1e9
        var candidates: [PeerID] = []
        for (peer, view) in peers where isFresh(view, now: load.now) && view.hasConsumers && view.accepting {
            // Only against a measured rate: a consumer not measured yet is fed (its refusals
            // still bound what it takes), or a stream would stall until its first sample.
            if view.rate > 0 && view.length >= window && view.length / view.rate > horizon { continue }
            candidates.append(peer)
        }
        guard !candidates.isEmpty else { return nil }
        return SourceFeed(candidates: candidates, priorRate: load.priorRate)
    }

    /// Push to balance: when this node's finish time is well above the balanced one (all items
    /// over all consumer rates), it sends its surplus to the peers furthest below it. Each node
    /// with surplus sends only its proportional part of every deficit, so nodes deciding on the
    /// same gossip do not all pile onto the same peer.
    func rebalance(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? {
        guard !load.isClosed, load.waiters == 0, load.queued > 0 else { return nil }
        if let last = load.lastTransferReceivedAt, load.now &- last < configuration.rebalanceCooldown { return nil }
        let fresh = peers.filter { _, view in isFresh(view, now: load.now) }
        let mine = load.effectiveRate
        let length = Double(load.queued)
        var totalLength = length
        var totalRate = mine
        for view in fresh.values {
            totalLength += view.length
            if view.accepting { totalRate += view.effectiveRate(prior: load.priorRate) }
        }
        guard totalRate > mine else { return nil }  // nobody else consumes
        let balanced = totalLength / totalRate
        if mine > 0 {
            let finish = length / mine
            guard finish > balanced * (1 + configuration.balanceThreshold),
                  finish - balanced > configuration.minimumImbalance else { return nil }
        }
        let mySurplus = length - balanced * mine
        var totalSurplus = mySurplus
        var deficits: [(peer: PeerID, deficit: Double)] = []
        for (peer, view) in fresh {
            let rate = view.accepting ? view.effectiveRate(prior: load.priorRate) : 0
            let excess = view.length - balanced * rate
            if excess > 0 {
                totalSurplus += excess
            } else if -excess >= 1 && view.waiting == 0 {
                // Peers with idle consumers are served by dispatch and their own steals.
                deficits.append((peer, -excess))
            }
        }
        guard mySurplus >= 1, totalSurplus > 0 else { return nil }
        let fraction = mySurplus / totalSurplus
        deficits.sort { $0.deficit > $1.deficit || ($0.deficit == $1.deficit && $0.peer < $1.peer) }
        return TransferPlan(kind: .balance,
                            sends: deficits.map { TransferDecision(peer: $0.peer, count: Int(($0.deficit * fraction).rounded())) },
                            limit: Int(mySurplus.rounded(.down)))
    }
}
