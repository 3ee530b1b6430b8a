import Foundation
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

    func startOperations() throws(NodeError) {
        scheduleMetrics()
        guard let text = configuration.operationsAddress else { return }
        let address: SocketAddress
        do {
            address = try SocketAddress(text)
        } catch {
            throw .invalidConfiguration("operations address '\(text)': \(error)")
        }
        guard address.isLoopback || configuration.clusterKey != nil else {
            throw .notLoopback("without a cluster key the operations endpoint listens on loopback only; refusing \(address)")
        }
        let server = OperationsServer(reactor: reactor) { [unowned self] request, respond in
            self.route(request, respond)
        }
        do {
            operationsBound = try server.start(on: address)
        } catch {
            throw .reactor(error)
        }
        operations = server
        logger.info("operations endpoint on http://\(operationsBound!) (/status\(metrics.registry == nil ? "" : ", /metrics"))")
    }

    func stopOperations() {
        operations?.stop()
        operations = nil
        if let metricsTimer { reactor.cancel(metricsTimer) }
        metricsTimer = nil
        publishMetrics()
    }

    private func scheduleMetrics() {
        metricsTimer = reactor.schedule(after: Self.metricsInterval) { [unowned self] in
            self.metricsTimer = nil
            self.publishMetrics()
            if !self.isStopped { self.scheduleMetrics() }
        }
    }

    func publishMetrics() {
        let linkBytes = readyLinks.map { ($0.remotePeerID!, bytesIn: $0.bytesIn, bytesOut: $0.bytesOut) }
        metrics.publish(reactor: reactor, peers: peerStatuses, members: membership?.members.map(\.state) ?? [],
                        links: linkBytes)
        metrics.publishTrust(trustTotals)
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

    /// The operations routes. Everything runs on the reactor thread.
    func route(_ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) {
        switch (request.method, request.path) {
        case ("GET", "/metrics"):
            guard let registry = metrics.registry else {
                respond(.text(404, "this node reports metrics through the application's metrics factory"))
                return
            }
            publishMetrics()
            var body: [UInt8] = []
            registry.emit(into: &body)
            respond(HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body))
        case ("GET", "/status"):
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            guard let data = try? encoder.encode(status()) else {
                respond(.text(503, "status could not be encoded"))
                return
            }
            respond(.json(Array(data)))
        case (_, "/metrics"), (_, "/status"):
            respond(.text(405, "use GET"))
        default:
            if !routeQueue(request, respond) {
                respond(.text(404, "no route \(request.method) \(request.path)"))
            }
        }
    }
}
