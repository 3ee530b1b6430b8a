import Foundation
import P2PQLink
@testable import P2PQNode
import Prometheus
import ServiceLifecycle
import Testing
import Logging

@Suite("Metrics and service lifecycle")
struct OperationsTests {
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
        // Generous: a loaded machine (the whole suite, other builds) can delay the first link.
        try await eventually("the service's node links to the watcher", timeout: .seconds(30), diagnose: {
            "watcher's peers: \(await watcher.peers()); the node's: \(await node.peers()); "
                + "watcher's connected: \(await watcher.connectedPeers()); its links: \(await watcher.withCore { $0.linkSummary } ?? "-")"
        }) { await watcher.connectedPeers().count == 1 }
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
