import P2PQWire

/// p2pqueue's strategy (``BalanceStrategy/legacy``): every stats round, a node about 10 %
/// above the average finish time pushes items to up to 4 random peers. No stealing, dispatch
/// or source feeding.
struct LegacyBalancer: Balancer {
    let configuration: QueueConfiguration
    /// Picks the peers of a push; seeded from the configuration and the node's ID.
    private var random: SplitMix64

    init(configuration: QueueConfiguration, localPeer: PeerID) {
        self.configuration = configuration
        self.random = SplitMix64(seed: localPeer.bytes.prefix(8).reduce(configuration.seed) { $0 << 8 ^ UInt64($1) })
    }

    var announcesGrowth: Bool { false }

    /// Length × average time between pops.
    func finishTime(_ load: LocalLoad) -> Double {
        load.rate > 0 ? Double(load.queued) / load.rate : 0
    }

    func steal(_ load: LocalLoad, peers: PeerViews) -> TransferDecision? { nil }
    func dispatch(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? { nil }
    func feed(_ load: LocalLoad, peers: PeerViews) -> SourceFeed? { nil }

    /// p2pqueue's push: `x = round((F - E) / (popTime + avgPopTime))` items when about 10% above
    /// the average finish time, split over up to 4 random peers.
    mutating func rebalance(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? {
        guard !load.isClosed, load.queued > 0 else { return nil }
        let fresh = peers.filter { $0.value.isFresh(now: load.now, maxAge: configuration.statsMaxAge) && $0.value.accepting }
        guard !fresh.isEmpty else { return nil }
        let popTime = load.rate > 0 ? 1 / load.rate : 0
        let finish = Double(load.queued) * popTime
        let average = fresh.values.reduce(finish) { $0 + $1.finishTime } / Double(fresh.count + 1)
        guard finish > average * 1.1 else { return nil }
        let avgPopTime = fresh.values.reduce(0.0) { $0 + ($1.rate > 0 ? 1 / $1.rate : 0) } / Double(fresh.count)
        guard popTime + avgPopTime > 0 else { return nil }
        let x = Swift.min(load.queued, Int(((finish - average) / (popTime + avgPopTime)).rounded()))
        guard x > 0 else { return nil }
        var chosen = Array(fresh.keys)
        chosen.shuffle(using: &random)
        chosen = Array(chosen.prefix(4))
        let each = x / chosen.count
        var extra = x % chosen.count
        var sends: [TransferDecision] = []
        for peer in chosen {
            sends.append(TransferDecision(peer: peer, count: each + (extra > 0 ? 1 : 0)))
            if extra > 0 { extra -= 1 }
        }
        return TransferPlan(kind: .legacy, sends: sends)
    }
}
