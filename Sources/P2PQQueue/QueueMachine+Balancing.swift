import DequeModule
import P2PQWire

// Balancing: load reports, rate sampling, steals and the balancer's transfer plans.

extension QueueMachine {
    struct OutstandingSteal: Sendable {
        var peer: PeerID
        var requestID: UInt64
        var deadline: UInt64
    }

    /// The outcome of ``acceptStats(_:from:now:)``.
    public enum StatsVerdict: Equatable, Sendable {
        case accepted
        case rejected(StatsRejection)
    }

    /// Validates a peer's load report and records it. ``received(_:from:now:)`` calls this for
    /// stats messages; it is public so tests and simulations can feed reports directly.
    @discardableResult
    public mutating func acceptStats(_ stats: LoadStats, from peer: PeerID, now: UInt64) -> StatsVerdict {
        do throws(WireError) {
            try stats.validate()
        } catch {
            counters.statsRejected += 1
            return .rejected(.invalid(error))
        }
        guard let known = view(peer) else {
            counters.statsRejected += 1
            return .rejected(.tooManyPeers)
        }
        let last = known.lastSequence
        guard !known.hasReport || stats.sequence > last else {
            counters.statsRejected += 1
            return .rejected(.stale(sequence: stats.sequence, last: last))
        }
        peers.update(peer) { view in
            view.hasReport = true
            view.lastSequence = stats.sequence
            view.receivedAt = now
            view.reportedLength = Double(stats.length)
            view.reportedWaiting = Int(stats.waiting)
            view.rate = stats.serviceRate
            view.finishTime = stats.finishTime
            view.hasConsumers = stats.hasConsumers
            view.accepting = stats.accepting
            view.closed = !stats.accepting
        }
        updatePriorRate()
        return .accepted
    }

    // MARK: Balancing

    func hasConsumers(now: UInt64) -> Bool {
        if !waiters.isEmpty { return true }
        guard let last = lastConsumerActivity else { return false }
        return now < last || now - last < configuration.consumerIdleTimeout
    }

    /// This node's load, for the balancer.
    func load(now: UInt64) -> LocalLoad {
        LocalLoad(now: now, queued: local.items, held: heldItems, waiters: waiters.count, rate: rate, priorRate: priorRate,
                  hasConsumers: hasConsumers(now: now), isClosed: isClosed, lastTransferReceivedAt: lastTransferReceivedAt)
    }

    /// Recomputes ``priorRate`` from the measured rates known here.
    private mutating func updatePriorRate() {
        var sum = rate
        var count = rate > 0 ? 1 : 0
        for view in peers.values where view.hasReport && view.rate > 0 {
            sum += view.rate
            count += 1
        }
        priorRate = count > 0 ? Swift.max(sum / Double(count), configuration.minimumRate) : configuration.minimumRate
    }

    func isFresh(_ view: PeerView, now: UInt64) -> Bool {
        view.isFresh(now: now, maxAge: configuration.statsMaxAge)
    }

    /// The linked peers, ascending.
    func connectedPeers() -> [PeerID] {
        Array(peers.filter { $0.value.connected }.keys)
    }

    /// The view of `peer`, created if there is room.
    mutating func view(_ peer: PeerID) -> PeerView? {
        if let view = peers[peer] { return view }
        guard peers.count < configuration.maxTrackedPeers else { return nil }
        let view = PeerView()
        peers[peer] = view
        return view
    }

    mutating func forgetDeath(of peer: PeerID) {
        shelf.grace[peer] = nil  // back: it still counts on the replicas
        deadPeers.remove(peer)
        diedAt[peer] = nil
        if let index = deadOrder.firstIndex(of: peer) { deadOrder.remove(at: index) }
    }

    mutating func sampleRate(now: UInt64) {
        defer {
            lastSampleAt = now
            popsSinceSample = 0
            starvedSinceSample = !waiters.isEmpty
        }
        guard now > lastSampleAt else { return }
        let seconds = Double(now - lastSampleAt) / 1e9
        let sample = Double(popsSinceSample) / seconds
        let alpha = configuration.rateSmoothing
        // Busy the whole interval (nobody waited, items left): the sample measures capacity.
        // Starved: idle time would read as a slow consumer, so only an increase counts, and a
        // first measurement must beat the cluster's prior.
        let busy = !starvedSinceSample && !local.isEmpty
        if busy && popsSinceSample > 0 {
            rate = rate == 0 ? sample : alpha * sample + (1 - alpha) * rate
        } else if busy && hasConsumers(now: now) && rate > 0 {
            rate = (1 - alpha) * rate  // consumers busy with long items: the rate really is lower
        } else if rate > 0 && sample > rate {
            rate = alpha * sample + (1 - alpha) * rate
        } else if rate == 0 && sample > priorRate {
            rate = sample
        }
        if !rate.isFinite || rate < 0 { rate = 0 }
        rate = Swift.min(rate, LoadStats.maxServiceRate)
        updatePriorRate()
    }

    private mutating func currentStats(now: UInt64) -> LoadStats {
        statsSequence += 1
        let load = load(now: now)
        let consumers = load.hasConsumers
        let finishTime = balancer.finishTime(load)
        return LoadStats(
            sequence: statsSequence, length: UInt64(local.items), waiting: UInt32(Swift.min(waiters.count, Int(LoadStats.maxWaiting))),
            serviceRate: rate, finishTime: Swift.min(finishTime, LoadStats.maxFinishTime),
            hasConsumers: consumers, accepting: !isClosed
        )
    }

    mutating func sendStats(to targets: [PeerID], _ actions: inout [Action], now: UInt64) {
        guard !targets.isEmpty else { return }
        let stats = currentStats(now: now)
        if targets.count > 1 {
            lastBroadcastLength = local.items
            lastBroadcastAt = now
        }
        for peer in targets { actions.append(.send(.stats(queue: name, stats), to: peer)) }
    }

    /// A queue that grew a lot since the last round tells its peers at once (at most every
    /// eighth of an interval), so idle nodes can steal without waiting for the next round.
    mutating func announceGrowth(_ actions: inout [Action], now: UInt64) {
        guard balancer.announcesGrowth, local.items >= 2 * lastBroadcastLength + 8 else { return }
        if let last = lastBroadcastAt, now &- last < configuration.statsInterval / 8 { return }
        sendStats(to: connectedPeers(), &actions, now: now)
    }

    /// Asks the peer the balancer picks for items, when consumers wait here (one steal out at
    /// a time).
    mutating func maybeSteal(_ actions: inout [Action], now: UInt64) {
        guard steal == nil, let decision = balancer.steal(load(now: now), peers: peers) else { return }
        let id = nextRequestID
        nextRequestID += 1
        steal = OutstandingSteal(peer: decision.peer, requestID: id, deadline: now + configuration.stealTimeout)
        counters.stealsSent += 1
        actions.append(.send(.stealRequest(queue: name, requestID: id, maxItems: UInt32(decision.count), thiefRate: rate),
                             to: decision.peer))
    }

    mutating func answerSteal(
        from thief: PeerID, requestID: UInt64, maxItems: Int, thiefRate: Double, _ actions: inout [Action], now: UInt64
    ) {
        let give = balancer.stealAnswer(load(now: now), thief: thief, maxItems: maxItems, thiefRate: thiefRate, peers: peers)
        let sent = give > 0 ? sendTransfer(to: thief, count: give, kind: .steal, requestID: requestID, &actions, now: now) : 0
        if sent == 0 {
            actions.append(.send(.stealEmpty(queue: name, requestID: requestID), to: thief))
        } else {
            counters.stealsAnswered += 1
        }
    }

    /// New items for peers with idle consumers, as the balancer decides.
    mutating func dispatchToIdlePeers(_ actions: inout [Action], now: UInt64) {
        guard let plan = balancer.dispatch(load(now: now), peers: peers) else { return }
        carryOut(plan, &actions, now: now)
    }

    /// A pure source feeds consumer peers, a full batch per free transfer slot, to the peer the
    /// balancer's feed picks each time (the views change with every transfer).
    mutating func feedFromSource(_ actions: inout [Action], now: UInt64) {
        guard let feed = balancer.feed(load(now: now), peers: peers) else { return }
        while !local.isEmpty {
            guard let peer = feed.next(peers: peers, hasSlot: { transfers.count(to: $0) < configuration.maxTransfersInFlightPerPeer }),
                  sendTransfer(to: peer, count: configuration.maxTransferItems, kind: .balance, &actions, now: now) > 0 else { return }
        }
    }

    /// Carries a balancer's plan out: its sends in order, within its limit, each in one
    /// transfer or until its count is sent (a send that moves nothing ends that send).
    mutating func carryOut(_ plan: TransferPlan, _ actions: inout [Action], now: UInt64) {
        var left = plan.limit
        for send in plan.sends where left > 0 && !local.isEmpty {
            var due = Swift.min(left, send.count)
            while due > 0 {
                let sent = sendTransfer(to: send.peer, count: due, kind: plan.kind, &actions, now: now)
                due -= sent
                left -= sent
                if sent == 0 || !plan.untilSent { break }
            }
        }
    }

    /// A closed queue gives its items to live peers, consumers first, round robin.
    mutating func handOff(_ actions: inout [Action], now: UInt64) {
        guard isClosed, !local.isEmpty else { return }
        let live = peers.filter { $0.value.connected && ($0.value.accepting || !$0.value.hasReport) }
        let consumers = live.filter { $0.value.hasConsumers }
        let targets = Array((consumers.isEmpty ? live : consumers).keys)
        guard !targets.isEmpty else { return }
        var progress = true
        while !local.isEmpty && progress {
            progress = false
            for peer in targets where !local.isEmpty {
                if sendTransfer(to: peer, count: configuration.maxTransferItems, kind: .handoff, &actions, now: now) > 0 {
                    progress = true
                }
            }
        }
    }
}
