import CoreMetrics
import P2PQMembership
import P2PQReactor
import P2PQWire
import Prometheus

/// Where a node reports its metrics.
public enum NodeMetricsBackend: Sendable {
    /// Whatever `MetricsSystem.bootstrap` installed (a no-op until an application bootstraps).
    case global
    /// A factory of the application's choosing.
    case factory(any MetricsFactory)
    /// A Prometheus registry of the node's own; the operations endpoint serves it at `/metrics`.
    case prometheus(PrometheusCollectorRegistry)
}

/// The node's counters, reported through swift-metrics.
///
/// Hot paths never touch a metrics handler per item: layers count into plain integers on the
/// reactor thread and ``NodeMetrics/publish(reactor:peers:)`` hands the deltas over once per
/// sampling interval (one second), so a million items cost one `increment(by:)`.
final class NodeMetrics {
    let factory: any MetricsFactory
    let registry: PrometheusCollectorRegistry?
    let node: String
    /// The trust counters (see `publishTrust`).
    let trust = TrustCounters()

    // Totals counted by the layers (reactor thread only).
    var itemsPushed = 0
    var itemsPopped = 0
    var itemsTransferred = 0
    var callsMade = 0
    var callsExecuted = 0
    var retries = 0
    var duplicates = 0

    // Queue duplicates, told apart: deliveries an owner saw twice (a second pop confirmation),
    // retransmitted copies receivers dropped (harmless), and copies a node dropped after a
    // death verdict because their owner had re-queued them (duplicates avoided).
    var duplicateDeliveries = 0
    var droppedRetransmissions = 0
    var staleCopiesDropped = 0
    static let duplicateCounterNames = [
        "p2pq_duplicate_deliveries_total", "p2pq_retransmissions_dropped_total", "p2pq_stale_copies_dropped_total",
    ]
    private var publishedDuplicates = [0, 0, 0]
    private let duplicateCounters: [CoreMetrics.Counter]

    private var published = [Int](repeating: 0, count: 7)
    private let counters: [CoreMetrics.Counter]
    private var peerCounters: [PeerID: (bytesIn: CoreMetrics.Counter, bytesOut: CoreMetrics.Counter, publishedIn: Int, publishedOut: Int)] = [:]
    private let turnTime: CoreMetrics.Timer
    private let turns: CoreMetrics.Counter
    private var peerGauges: [String: CoreMetrics.Gauge] = [:]
    private var memberGauges: [MemberState: CoreMetrics.Gauge] = [:]
    private var lastTurns: UInt64 = 0
    private var lastBusy: UInt64 = 0

    static let counterNames = [
        "p2pq_items_pushed_total", "p2pq_items_popped_total", "p2pq_items_transferred_total",
        "p2pq_calls_made_total", "p2pq_calls_executed_total", "p2pq_call_retries_total",
        "p2pq_duplicates_total",
    ]

    init(backend: NodeMetricsBackend, node: PeerID) {
        switch backend {
        case .global:
            factory = MetricsSystem.factory
            registry = nil
        case .factory(let factory):
            self.factory = factory
            registry = nil
        case .prometheus(let registry):
            var prometheus = PrometheusMetricsFactory(registry: registry)
            // Loop turns take microseconds; the default buckets start at 5 ms.
            prometheus.durationHistogramBuckets["p2pq_loop_turn_seconds"] = [
                .microseconds(1), .microseconds(5), .microseconds(10), .microseconds(50), .microseconds(100),
                .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(50),
            ]
            factory = prometheus
            self.registry = registry
        }
        self.node = node.short
        let dimensions = [("node", node.short)]
        let factory = self.factory
        counters = Self.counterNames.map { CoreMetrics.Counter(label: $0, dimensions: dimensions, factory: factory) }
        duplicateCounters = Self.duplicateCounterNames.map { CoreMetrics.Counter(label: $0, dimensions: dimensions, factory: factory) }
        turnTime = CoreMetrics.Timer(label: "p2pq_loop_turn_seconds", dimensions: dimensions, factory: factory)
        turns = CoreMetrics.Counter(label: "p2pq_loop_turns_total", dimensions: dimensions, factory: factory)
    }

    /// Totals as the status endpoint reports them.
    var totals: [String: Int] {
        let values = [itemsPushed, itemsPopped, itemsTransferred, callsMade, callsExecuted, retries, duplicates]
        return Dictionary(uniqueKeysWithValues: zip(Self.counterNames, values))
            .merging(zip(Self.duplicateCounterNames, [duplicateDeliveries, droppedRetransmissions, staleCopiesDropped])) { $1 }
    }

    /// Hands the deltas since the last call to the metrics handlers.
    func publish(reactor: Reactor, peers: [PeerStatus], members: [MemberState], links: [(PeerID, bytesIn: Int, bytesOut: Int)]) {
        let values = [itemsPushed, itemsPopped, itemsTransferred, callsMade, callsExecuted, retries, duplicates]
        for i in values.indices where values[i] != published[i] {
            counters[i].increment(by: Int64(values[i] - published[i]))
            published[i] = values[i]
        }
        let duplicateValues = [duplicateDeliveries, droppedRetransmissions, staleCopiesDropped]
        for i in duplicateValues.indices where duplicateValues[i] != publishedDuplicates[i] {
            duplicateCounters[i].increment(by: Int64(duplicateValues[i] - publishedDuplicates[i]))
            publishedDuplicates[i] = duplicateValues[i]
        }
        for (peer, bytesIn, bytesOut) in links {
            var entry = peerCounters[peer] ?? {
                let dimensions = [("node", node), ("peer", peer.short)]
                return (CoreMetrics.Counter(label: "p2pq_peer_bytes_in_total", dimensions: dimensions, factory: factory),
                        CoreMetrics.Counter(label: "p2pq_peer_bytes_out_total", dimensions: dimensions, factory: factory), 0, 0)
            }()
            // A new link to the same peer restarts its byte counts from zero.
            if bytesIn < entry.publishedIn { entry.publishedIn = 0 }
            if bytesOut < entry.publishedOut { entry.publishedOut = 0 }
            if bytesIn > entry.publishedIn { entry.bytesIn.increment(by: Int64(bytesIn - entry.publishedIn)) }
            if bytesOut > entry.publishedOut { entry.bytesOut.increment(by: Int64(bytesOut - entry.publishedOut)) }
            entry.publishedIn = bytesIn
            entry.publishedOut = bytesOut
            peerCounters[peer] = entry
        }
        let turnCount = reactor.turns &- lastTurns
        let busy = reactor.busyNanoseconds &- lastBusy
        lastTurns = reactor.turns
        lastBusy = reactor.busyNanoseconds
        if turnCount > 0 {
            turns.increment(by: Int64(clamping: turnCount))
            turnTime.recordNanoseconds(Int64(clamping: busy / turnCount))
        }
        var byState: [String: Int] = [:]
        for state in ["connected", "connecting", "backoff", "failed"] { byState[state] = 0 }
        for peer in peers { byState[peer.state.rawValue, default: 0] += 1 }
        for (state, count) in byState {
            let gauge = peerGauges[state] ?? CoreMetrics.Gauge(label: "p2pq_peers", dimensions: [("node", node), ("state", state)], factory: factory)
            peerGauges[state] = gauge
            gauge.record(count)
        }
        var byMemberState: [MemberState: Int] = [.alive: 0, .suspect: 0, .dead: 0, .left: 0]
        for state in members { byMemberState[state, default: 0] += 1 }
        for (state, count) in byMemberState {
            let gauge = memberGauges[state] ?? CoreMetrics.Gauge(
                label: "p2pq_members", dimensions: [("node", node), ("state", state.rawValue)], factory: factory)
            memberGauges[state] = gauge
            gauge.record(count)
        }
    }
}

// MARK: Trust: refused messages and handshakes (docs/operations.md, "Trust model")

/// What members and outsiders tried and were refused, as counted by the machines.
struct TrustTotals: Sendable {
    /// `p2pq_forged_messages_total` by `kind`.
    var forged: [String: Int] = [:]
    /// `p2pq_handshakes_dropped_total` by `reason`.
    var handshakes: [String: Int] = [:]
}

extension NodeCore {
    /// Pulled from the machines once per publication and per status request (no per-message cost).
    var trustTotals: TrustTotals {
        let handshakes = handshakeTotals
        return TrustTotals(
            forged: [
                "pop_confirmation": queues.confirmationsRefused,
                "call_result": remoteCalls?.refusedResults ?? 0,
                "membership_update": Int(clamping: membership?.refusedUpdates ?? 0),
            ],
            handshakes: ["refused": handshakes.refused, "evicted": handshakes.evicted, "timed_out": handshakes.timedOut,
                         "failed": handshakes.failed]
        )
    }
}

extension NodeMetrics {
    /// The trust counters as `status` shows them.
    static func statusCounters(_ totals: TrustTotals) -> [String: Int] {
        var counters: [String: Int] = [:]
        for (kind, value) in totals.forged { counters["p2pq_forged_messages_total{kind=\"\(kind)\"}"] = value }
        for (reason, value) in totals.handshakes { counters["p2pq_handshakes_dropped_total{reason=\"\(reason)\"}"] = value }
        return counters
    }

    /// Hands the trust counters' growth to the metrics handlers. The machines' totals only grow,
    /// except when a queue is dropped with its counts: then nothing is subtracted.
    func publishTrust(_ totals: TrustTotals) {
        for (kind, value) in totals.forged { trust.advance("p2pq_forged_messages_total", ("kind", kind), to: value, node: node, factory: factory) }
        for (reason, value) in totals.handshakes {
            trust.advance("p2pq_handshakes_dropped_total", ("reason", reason), to: value, node: node, factory: factory)
        }
    }
}

/// The trust counters' handlers and what they were last given.
final class TrustCounters {
    private var counters: [String: (counter: CoreMetrics.Counter, published: Int)] = [:]

    func advance(_ label: String, _ dimension: (String, String), to value: Int, node: String, factory: any MetricsFactory) {
        let key = label + "/" + dimension.1
        var entry = counters[key] ?? (CoreMetrics.Counter(label: label, dimensions: [("node", node), dimension], factory: factory), 0)
        if value > entry.published {
            entry.counter.increment(by: Int64(value - entry.published))
            entry.published = value
        } else if value < entry.published {
            entry.published = value  // a dropped queue took its counts along
        }
        counters[key] = entry
    }
}
