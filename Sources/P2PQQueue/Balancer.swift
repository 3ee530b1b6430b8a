import P2PQWire

/// A queue's balancing strategy: from this node's load and what it knows of its peers, it
/// decides which items go where ("send n items to peer p"). It sends nothing itself: the
/// queue carries the decisions out, and its views of the peers change as it does.
///
/// Peers are visited in ascending ID order (``PeerViews``), so every sum and choice is the
/// same in every process.
protocol Balancer: Sendable {
    var configuration: QueueConfiguration { get }
    /// The finish time (seconds) this node reports in its ``LoadStats``.
    func finishTime(_ load: LocalLoad) -> Double
    /// Whether a queue that grew a lot since the last round tells its peers at once.
    var announcesGrowth: Bool { get }
    /// The peer to steal from and how many items to ask for, when consumers wait here.
    func steal(_ load: LocalLoad, peers: PeerViews) -> TransferDecision?
    /// New items for peers with idle consumers (one transfer each), after a push or a report.
    func dispatch(_ load: LocalLoad, peers: PeerViews) -> TransferPlan?
    /// The consumer peers a pure source feeds, if it feeds.
    func feed(_ load: LocalLoad, peers: PeerViews) -> SourceFeed?
    /// The push of a stats round.
    mutating func rebalance(_ load: LocalLoad, peers: PeerViews) -> TransferPlan?
}

extension Balancer {
    /// How many items to give `thief` for its steal request (at most `maxItems`): a share of
    /// this node's queue by the two rates, capped at the thief's share of all known items less
    /// what it already holds or has on the way from here. The same for every strategy: a node
    /// answers whoever asks.
    func stealAnswer(_ load: LocalLoad, thief: PeerID, maxItems: Int, thiefRate: Double, peers: PeerViews) -> Int {
        let statsMaxAge = configuration.statsMaxAge
        let length = load.queued
        let mine = load.isClosed ? 0 : load.effectiveRate
        let theirs = thiefRate.isFinite && thiefRate > 0 ? thiefRate : load.priorRate
        var give = mine == 0 ? length : Int((Double(length) * theirs / (theirs + mine)).rounded(.up))
        give = Swift.min(give, maxItems, length)
        // The thief's share of all known items (by rate), less what this node already sent it
        // (in flight, or pushed to balance on the same gossip): no double filling, and a first
        // thief does not take half of a cluster's work.
        if let view = peers[thief], view.isFresh(now: load.now, maxAge: statsMaxAge), mine > 0 {
            var totalLength = Double(length)
            var totalRate = mine
            for other in peers.values where other.isFresh(now: load.now, maxAge: statsMaxAge) {
                totalLength += other.length
                if other.accepting { totalRate += other.effectiveRate(prior: load.priorRate) }
            }
            let deficit = totalLength / totalRate * theirs - view.length
            give = Swift.min(give, Swift.max(0, Int(deficit.rounded(.up))))
        }
        return give
    }
}

/// This node's load as a balancer sees it, at `now`.
struct LocalLoad {
    var now: UInt64
    /// Items in the local queue.
    var queued: Int
    /// Items held against the limits (queued, in flight, held back, leased).
    var held: Int
    /// Consumers waiting in a pop.
    var waiters: Int
    /// The measured service rate, pops per second (0: not measured).
    var rate: Double
    /// The rate assumed for a consumer node not measured yet.
    var priorRate: Double
    var hasConsumers: Bool
    var isClosed: Bool
    /// When a transfer last arrived that was not a steal's or a dispatch's answer.
    var lastTransferReceivedAt: UInt64?

    /// The rate used for decisions: the measured one or, for a consumer node without a
    /// measurement yet, the mean measured rate of the cluster (so a newcomer is neither
    /// starved nor flooded); 0 without consumers.
    var effectiveRate: Double { hasConsumers ? (rate > 0 ? rate : priorRate) : 0 }
}

/// "Send up to `count` items to `peer`."
struct TransferDecision: Sendable, Equatable {
    var peer: PeerID
    var count: Int
}

/// Transfers to make now, in order.
struct TransferPlan: Sendable {
    var kind: TransferKind
    var sends: [TransferDecision]
    /// At most this many items over all the sends.
    var limit = Int.max
    /// Whether a send goes on in further transfers until its count is sent (else one transfer
    /// each).
    var untilSent = true
}

/// A pure source feeding consumer peers: full batches, each to the candidate that would finish
/// its known work first among those with a transfer slot free.
struct SourceFeed: Sendable {
    /// Ascending.
    var candidates: [PeerID]
    var priorRate: Double

    /// The next batch's peer; nil when no candidate has a slot free.
    func next(peers: PeerViews, hasSlot: (PeerID) -> Bool) -> PeerID? {
        var best: (peer: PeerID, finish: Double)?
        for peer in candidates where hasSlot(peer) {
            guard let view = peers[peer] else { continue }
            let finish = view.length / view.effectiveRate(prior: priorRate)
            if best == nil || finish < best!.finish { best = (peer, finish) }
        }
        return best?.peer
    }
}

/// The configured strategy, without an existential call on the push path.
enum QueueBalancer: Balancer {
    case adaptive(AdaptiveBalancer)
    case legacy(LegacyBalancer)

    init(configuration: QueueConfiguration, localPeer: PeerID) {
        switch configuration.strategy {
        case .adaptive: self = .adaptive(AdaptiveBalancer(configuration: configuration))
        case .legacy: self = .legacy(LegacyBalancer(configuration: configuration, localPeer: localPeer))
        }
    }

    var configuration: QueueConfiguration {
        switch self {
        case .adaptive(let balancer): balancer.configuration
        case .legacy(let balancer): balancer.configuration
        }
    }

    func finishTime(_ load: LocalLoad) -> Double {
        switch self {
        case .adaptive(let balancer): balancer.finishTime(load)
        case .legacy(let balancer): balancer.finishTime(load)
        }
    }

    var announcesGrowth: Bool {
        switch self {
        case .adaptive(let balancer): balancer.announcesGrowth
        case .legacy(let balancer): balancer.announcesGrowth
        }
    }

    func steal(_ load: LocalLoad, peers: PeerViews) -> TransferDecision? {
        switch self {
        case .adaptive(let balancer): balancer.steal(load, peers: peers)
        case .legacy(let balancer): balancer.steal(load, peers: peers)
        }
    }

    func dispatch(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? {
        switch self {
        case .adaptive(let balancer): balancer.dispatch(load, peers: peers)
        case .legacy(let balancer): balancer.dispatch(load, peers: peers)
        }
    }

    func feed(_ load: LocalLoad, peers: PeerViews) -> SourceFeed? {
        switch self {
        case .adaptive(let balancer): balancer.feed(load, peers: peers)
        case .legacy(let balancer): balancer.feed(load, peers: peers)
        }
    }

    mutating func rebalance(_ load: LocalLoad, peers: PeerViews) -> TransferPlan? {
        switch self {
        case .adaptive(let balancer):
            return balancer.rebalance(load, peers: peers)  // keeps no state
        case .legacy(var balancer):
            defer { self = .legacy(balancer) }
            return balancer.rebalance(load, peers: peers)
        }
    }
}
