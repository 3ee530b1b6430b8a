import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import P2PQLink
@testable import P2PQNode
import Prometheus
import ServiceLifecycle
import Testing
import Logging

/// GETs `url` with URLSession (a real HTTP client, libcurl underneath on Linux).
func httpGet(_ url: String) async throws -> (status: Int, body: String) {
    let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

@Suite("Operations endpoint, metrics and service lifecycle")
struct OperationsTests {
    @Test("The metrics endpoint serves the node's series in Prometheus text format")
    func metricsEndpoint() async throws {
        let key = ClusterKey.generate()
        var first = testConfiguration(key: key)
        first.metrics = .prometheus(PrometheusCollectorRegistry())
        first.operationsAddress = "127.0.0.1:0"
        let a = try Node(configuration: first)
        let infoA = try await a.start()
        let b = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(infoA.listenAddress)"]))
        try await b.start()
        defer { Task { await a.stop(); await b.stop() } }
        try await eventually("the two nodes link") { await a.connectedPeers().count == 1 }
        let base = "http://\(try #require(infoA.operationsAddress))"

        let (status, body) = try await httpGet(base + "/metrics")
        #expect(status == 200)
        let node = a.peerID.short
        for series in ["p2pq_items_pushed_total", "p2pq_items_popped_total", "p2pq_items_transferred_total",
                       "p2pq_calls_made_total", "p2pq_calls_executed_total", "p2pq_call_retries_total",
                       "p2pq_duplicates_total", "p2pq_loop_turns_total", "p2pq_loop_turn_seconds"] {
            #expect(body.contains("\(series)"), "missing \(series)")
        }
        #expect(body.contains("p2pq_peers{node=\"\(node)\",state=\"connected\"} 1"), "peers gauge:\n\(body)")
        try await eventually("b is an alive member of a") { await a.members().contains { $0.peer == b.peerID && $0.state == .alive } }
        let (_, again) = try await httpGet(base + "/metrics")
        #expect(again.contains("p2pq_members{node=\"\(node)\",state=\"alive\"} 1"), "members gauge:\n\(again)")
        // The link's hello and keepalives crossed it: bytes in both directions, labelled by peer.
        let peerLabel = "peer=\"\(b.peerID.short)\""
        let bytesIn = body.split(separator: "\n").first { $0.hasPrefix("p2pq_peer_bytes_in_total") && $0.contains(peerLabel) }
        let value = bytesIn.flatMap { Double($0.split(separator: " ").last!) } ?? 0
        #expect(value > 0, "bytes in from \(b.peerID.short): \(bytesIn.map(String.init) ?? "absent")")

        let (statusCode, json) = try await httpGet(base + "/status")
        #expect(statusCode == 200)
        let decoded = try JSONDecoder().decode(NodeStatus.self, from: Data(json.utf8))
        #expect(decoded.peerID == a.peerID.description)
        #expect(decoded.peers.contains { $0.peerID == b.peerID.description && $0.state == "connected" })

        let (missing, _) = try await httpGet(base + "/nothing-here")
        #expect(missing == 404)
    }

    @Test("Garbage and oversized requests to the operations port get an error, the node keeps serving")
    func operationsBadInput() async throws {
        var configuration = testConfiguration(key: nil)
        configuration.operationsAddress = "127.0.0.1:0"
        let node = try Node(configuration: configuration)
        let info = try await node.start()
        defer { Task { await node.stop() } }
        let address = try #require(info.operationsAddress)
        let garbage = try RawClient(port: address.port)
        garbage.send(Array("NOT HTTP AT ALL\r\n\r\n".utf8))
        var received: [UInt8] = []
        for _ in 0..<50 where received.isEmpty { received = await garbage.receive() ?? [] }
        let answer = String(decoding: received, as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 400"), "got: \(answer)")
        let (status, _) = try await httpGet("http://\(address)/status")
        #expect(status == 200)
    }

    @Test("Without a cluster key the operations endpoint refuses a non-loopback address")
    func operationsLoopbackOnly() async throws {
        var configuration = testConfiguration(key: nil)
        configuration.operationsAddress = "0.0.0.0:0"
        let node = try Node(configuration: configuration)
        let result = await Result(catching: { () async throws(NodeError) in try await node.start() })
        switch result {
        case .success: Issue.record("started with a public operations endpoint and no key")
        case .failure(let error):
            guard case .notLoopback = error else {
                Issue.record("unexpected error \(error)")
                return
            }
        }
        await node.stop()
    }

    @Test("A node run in a ServiceGroup leaves cleanly on graceful shutdown")
    func serviceLifecycle() async throws {
        let key = ClusterKey.generate()
        let watcher = try Node(configuration: testConfiguration(key: key))
        let info = try await watcher.start()
        defer { Task { await watcher.stop() } }
        let node = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        var logger = Logger(label: "p2pq.test.lifecycle")
        logger.logLevel = .critical
        let group = ServiceGroup(services: [node], gracefulShutdownSignals: [], logger: logger)
        let running = Task { try await group.run() }
        try await eventually("the service's node links to the watcher") { await watcher.connectedPeers().count == 1 }
        let stream = watcher.events
        let nodeID = node.peerID
        let seen = Task { () -> Bool? in
            for await event in stream {
                if case .peerDisconnected(let peer, let left) = event, peer == nodeID { return left }
            }
            return nil
        }
        await group.triggerGracefulShutdown()
        try await running.value
        // Generous: the leave normally arrives within milliseconds, but the whole suite's
        // tasks share one thread per core and CPU-heavy tests can hold them for seconds.
        let timeout = Task {
            try await Task.sleep(for: .seconds(30))
            seen.cancel()
        }
        // The watcher saw a goodbye (left), not a failure.
        let left = await seen.value
        timeout.cancel()
        let status = await node.status()
        let watcherPeers = await watcher.peers()
        #expect(left == true, "watcher saw \(left.map { $0 ? "a leave" : "a failure" } ?? "no disconnect within 30 s"); its peers: \(watcherPeers)")
        #expect(status == nil, "the node still runs after the group ended: \(status.map { "\($0)" } ?? "")")
    }
}

extension Result where Failure == NodeError {
    init(catching body: () async throws(NodeError) -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
