@testable import P2PQNode
import P2PQQueue
import P2PQWire
import Prometheus
import Synchronization
import Testing

private func encode(_ n: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(n).bigEndian, Array.init) }

@Suite("Stale copies in status and metrics", .serialized)
struct StaleCopiesMetricTests {
    let key = ClusterKey.generate()

    @Test("Copies dropped after a custody verdict count in p2pq_stale_copies_dropped_total (status and metrics)")
    func staleCopiesCounted() async throws {
        let registries = [PrometheusCollectorRegistry(), PrometheusCollectorRegistry()]
        var started = 0
        let nodes = try await startMesh(2, key: key) { configuration in
            configuration.metrics = .prometheus(registries[started])
            started += 1
        }
        let (owner, holder) = (nodes[0], nodes[1])
        let queue = owner.queue(named: "s")
        try await queue.push(contentsOf: (0..<5).map(encode))
        #expect(try await queue.pop(max: 5, timeout: .seconds(1)).count == 5)  // popped: the owner's records are gone
        let first = Mutex<UInt64>(0)
        await owner.onCoreForTesting { core in
            first.withLock { $0 = Swift.max(core.configuration.queue.firstSequence, core.incarnation) }
        }
        let start = first.withLock { $0 }
        let ownerID = owner.peerID
        await holder.onCoreForTesting { core in
            // The holder has copies of those five (say, from before a pause), then learns it may
            // have been declared dead: it asks the owner, whose verdict calls them all stale.
            let items = (0..<5).map { QueueItem(id: ItemID(origin: ownerID, sequence: start + UInt64($0)), hops: 1, payload: encode($0)) }
            core.queues.receiveForTesting(.transfer(queue: "s", transferID: 1, kind: .balance, requestID: 0,
                                                    items: TransferItems(items)), from: ownerID)
            core.perform(core.machine.routeForTesting(.refuted, now: core.now))
        }
        var counters: [String: Int] = [:]
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            counters = try #require(await holder.status()?.counters)
            if counters["p2pq_stale_copies_dropped_total"] == 5 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(counters["p2pq_stale_copies_dropped_total"] == 5, "\(counters)")
        #expect(counters["p2pq_duplicate_deliveries_total"] == 0)
        let series = "p2pq_stale_copies_dropped_total{node=\"\(holder.peerID.short)\"} 5"
        try await eventually("the metric shows them", timeout: .seconds(5)) {
            var text: [UInt8] = []
            registries[1].emit(into: &text)
            return String(decoding: text, as: UTF8.self).contains(series)
        }
        #expect(await holder.status()?.queues.first { $0.name == "s" }?.localCount == 0)  // none left for consumers
        for node in nodes { await node.stop() }
    }
}
