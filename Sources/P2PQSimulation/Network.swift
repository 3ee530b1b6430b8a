import Foundation
import P2PQWire

/// A simulated duration: a base plus a seeded random jitter (link latencies, task durations).
public struct DelayDistribution: Sendable, Hashable {
    /// The random part added to ``base``.
    public enum Jitter: Sendable, Hashable {
        case none
        /// Uniform in `0...max` nanoseconds.
        case uniform(max: UInt64)
        /// Exponential with this mean, capped at 20 means (a tail, never an endless stall).
        case exponential(mean: UInt64)
    }

    public var base: UInt64
    public var jitter: Jitter

    public init(base: UInt64, jitter: Jitter = .none) {
        self.base = base
        self.jitter = jitter
    }

    /// Always `base`.
    public static func fixed(_ base: UInt64) -> DelayDistribution { DelayDistribution(base: base) }

    /// The mean of the distribution, in nanoseconds.
    public var mean: Double {
        switch jitter {
        case .none: Double(base)
        case .uniform(let max): Double(base) + Double(max) / 2
        case .exponential(let mean): Double(base) + Double(mean)
        }
    }

    /// One value; draws from `random` only when there is jitter, so a fixed delay leaves the
    /// sequence of every other draw alone.
    public func sample(_ random: inout SplitMix64) -> UInt64 {
        switch jitter {
        case .none:
            return base
        case .uniform(let max):
            return max == 0 ? base : base + random.next() % (max + 1)
        case .exponential(let mean):
            guard mean > 0 else { return base }
            let unit = (Double(random.next() >> 11) + 1) / 9_007_199_254_740_992  // (0, 1]
            return base + UInt64(min(-log(unit), 20) * Double(mean))
        }
    }
}

/// Two nodes, either way round (a link's latency is the same both ways).
public struct NodePair: Sendable, Hashable {
    public let low: Int
    public let high: Int

    public init(_ a: Int, _ b: Int) {
        low = min(a, b)
        high = max(a, b)
    }
}

/// The simulated network's timings and faults (docs/simulation.md, "The model").
///
/// Nodes talk over TCP links, so a message inside a link is never lost, duplicated or
/// overtaken: what the real system sees instead is modelled.
/// - Latency: each message's one-way delay is drawn from the link's distribution, then pushed
///   back so it never arrives before the one sent before it on that link (FIFO, as TCP).
///   Messages on different links overtake each other freely: that is the reordering a node sees.
/// - Loss: a lost segment TCP retransmits is a delay (``stallProbability``, ``stallDelay``)
///   that holds back everything behind it on the link. A link that dies (``resetProbability``)
///   is a reset: both ends see it drop, every message in flight on it vanishes.
/// - Duplication: TCP delivers once, but a link reset just after a message arrived
///   (``resetAfterDeliveryProbability``) loses its answer, so the sender retries on a new
///   link: the duplicate an application can see.
/// - Bandwidth: a node's outgoing bytes share one egress (``egressBandwidth``), as its network
///   interface. Each link's messages leave in order (one TCP stream each); the links with bytes
///   still queued share the rate equally, as a fair-queueing qdisc (Linux's default,
///   fq_codel) shares it between flows: a message leaves once its link's earlier messages have,
///   after its frame's bytes at the rate divided by the links sharing it when it is sent, then
///   takes its link's latency.
public struct NetworkConfiguration: Sendable {
    /// The one-way delay of every link without its own.
    public var latency = DelayDistribution.fixed(1_000_000)
    /// Links with their own delay.
    public var linkLatency: [NodePair: DelayDistribution] = [:]
    /// Per message: the link resets before it arrives (it and everything in flight vanish).
    public var resetProbability = 0.0
    /// Per message: it arrives, then the link resets (its answer vanishes).
    public var resetAfterDeliveryProbability = 0.0
    /// Per message: a lost segment is retransmitted, delaying it and what follows on the link.
    public var stallProbability = 0.0
    /// How long such a retransmission takes (Linux's minimum retransmission timeout).
    public var stallDelay: UInt64 = 200_000_000
    /// Every node's egress in bytes per second (nil: unlimited), shared by all its links. Counts
    /// each membership, queue and call message as its frame (5 bytes and the body).
    public var egressBandwidth: UInt64?
    /// Nodes with their own egress.
    public var nodeEgressBandwidth: [Int: UInt64] = [:]
    /// The fraction of membership and queue messages that go through the real wire encoder and
    /// decoder instead of passing as values (``ClusterSimulation/failures`` gets any mismatch).
    public var codecSampleRate = 0.03

    public init() {}

    /// The delay distribution between `a` and `b`.
    public func latency(between a: Int, and b: Int) -> DelayDistribution {
        linkLatency[NodePair(a, b)] ?? latency
    }

    /// The egress of node `n` in bytes per second, nil if unlimited.
    public func egress(of n: Int) -> UInt64? {
        nodeEgressBandwidth[n] ?? egressBandwidth
    }
}

extension SplitMix64 {
    /// True with probability `p`; draws nothing when `p` is 0.
    mutating func chance(_ p: Double) -> Bool {
        guard p > 0 else { return false }
        return Double(next() >> 11) / 9_007_199_254_740_992 < p
    }
}
