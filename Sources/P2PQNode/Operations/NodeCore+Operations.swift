import Foundation
import P2PQLink
import P2PQReactor
import P2PQWire

/// A node's state as `p2pq status` shows it and `/status` serves it (JSON).
public struct NodeStatus: Sendable, Codable, Equatable {
    public struct Peer: Sendable, Codable, Equatable {
        public var peerID: String?
        public var address: String?
        /// Link state: connected, connecting, backoff, failed.
        public var state: String
        /// SWIM state: alive, suspect, dead, left (nil if not a member yet).
        public var member: String?
        public var secondsSinceHeard: Double?
        public var inbound: Bool?
        /// Bytes read from and queued to this peer's current link.
        public var bytesIn: Int?
        public var bytesOut: Int?
    }

    public struct Queue: Sendable, Codable, Equatable {
        public var name: String
        public var localCount: Int
        public var clusterEstimate: Int
        public var waitingConsumers: Int
        /// Pushes waiting for room, and the payload bytes they hold (nil from older nodes).
        public var waitingPushes: Int?
        public var waitingPushBytes: Int?
        /// Items leased here and not acked yet (nil from older nodes).
        public var leased: Int?
        /// The queue's counters since the node started (``QueueCounters``, by field name:
        /// `requeuedAfterDeath`, `duplicatePops`, `staleCopiesDropped`, ...; nil from older
        /// nodes).
        public var counters: [String: Int]?
    }

    public var peerID: String
    public var listenAddress: String
    public var backend: String
    public var peers: [Peer]
    public var queues: [Queue]
    /// Totals since start (`p2pq_*_total` names).
    public var counters: [String: Int]
    public var loopTurns: UInt64
    public var loopBusySeconds: Double
}

extension NodeCore {
    static let metricsInterval: Duration = .seconds(1)

    /// Starts the once-a-second metrics publication. (The operations HTTP endpoint is not the
    /// node's: it lives in the P2PQOperations module and uses the public API.)
    func startOperations() {
        dashboard = DashboardHistory(local: identity.peerID, start: now)
        scheduleMetrics()
    }

    func stopOperations() {
        if let metricsTimer { reactor.cancel(metricsTimer) }
        metricsTimer = nil
        publishMetrics()
    }

    private func scheduleMetrics() {
        metricsTimer = reactor.schedule(after: Self.metricsInterval) { [unowned self] in
            self.metricsTimer = nil
            self.publishMetrics()
            self.sampleDashboard()
            if !self.isStopped { self.scheduleMetrics() }
        }
    }

    func publishMetrics() {
        let linkBytes = readyLinks.map { ($0.remotePeerID!, bytesIn: $0.bytesIn, bytesOut: $0.bytesOut) }
        metrics.publish(reactor: reactor, peers: peerStatuses, members: membership?.members.map(\.state) ?? [],
                        links: linkBytes)
        metrics.publishTrust(trustTotals)
    }

    /// The node's queues for status output.
    func queueStatuses() -> [NodeStatus.Queue] { queues.statuses() }

    /// The Prometheus text of the node's own registry, fresh; nil without one.
    func metricsText() -> [UInt8]? {
        guard let registry = metrics.registry else { return nil }
        publishMetrics()
        var body: [UInt8] = []
        registry.emit(into: &body)
        return body
    }

    func status() -> NodeStatus {
        var byPeer: [PeerID: PeerLink] = [:]
        for link in readyLinks { byPeer[link.remotePeerID!] = link }
        let peers = peerStatuses.map { status -> NodeStatus.Peer in
            let link = status.peerID.flatMap { byPeer[$0] }
            return NodeStatus.Peer(
                peerID: status.peerID?.description, address: status.address?.description,
                state: status.state.rawValue, member: status.membership?.rawValue, secondsSinceHeard: status.secondsSinceHeard,
                inbound: status.inbound, bytesIn: link?.bytesIn, bytesOut: link?.bytesOut)
        }
        return NodeStatus(
            peerID: identity.peerID.description, listenAddress: advertised.description,
            backend: "\(reactor.backendKind)", peers: peers, queues: queueStatuses(),
            counters: metrics.totals.merging(NodeMetrics.statusCounters(trustTotals)) { $1 }, loopTurns: reactor.turns,
            loopBusySeconds: Double(reactor.busyNanoseconds) / 1e9)
    }
}

extension Node {
    /// The node's metrics in Prometheus text format (what an operations endpoint serves at
    /// `/metrics`), published afresh; nil when the node reports to the application's metrics
    /// factory (``NodeMetricsBackend/global``) or is not running.
    public func metricsText() async -> [UInt8]? {
        await withCore { core in core.metricsText() } ?? nil
    }
}

extension OperationsToken {
    /// The token derived from the development key that nodes without a cluster key use
    /// (loopback only). It is public knowledge: it keeps browsers and typos out, not people.
    public static var development: OperationsToken { .derived(from: LinkSecurity.developmentKey) }
}
