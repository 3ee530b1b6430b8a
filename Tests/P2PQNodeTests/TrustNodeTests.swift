import Foundation
import P2PQLink
import P2PQMembership
@testable import P2PQNode
import P2PQWire
import Prometheus
import Testing

@Suite("What a member cannot do, on real nodes")
struct TrustNodeTests {
    @Test("A member's forged dead rumours at UInt64.max are refused, counted in status, and evict no one")
    func forgedRumoursAreCounted() async throws {
        let key = ClusterKey.generate()
        let registry = PrometheusCollectorRegistry()
        var configuration = testConfiguration(key: key)
        configuration.metrics = .prometheus(registry)
        let a = try Node(configuration: configuration)
        let info = try await a.start()
        let b = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        try await b.start()
        var failure: (any Error)?
        do {
            try await eventually("b is an alive member of a") { await a.members().contains { $0.peer == b.peerID && $0.state == .alive } }
            let aID = a.peerID, bID = b.peerID
            // B turns bad: it tells A that A, and B itself, died at the last incarnation.
            await b.onCoreForTesting { core in
                core.send(MembershipMessage.gossip(updates: [
                    MemberUpdate(kind: .dead, member: aID, incarnation: .max, origin: bID),
                    MemberUpdate(kind: .dead, member: bID, incarnation: .max, origin: bID),
                ]), to: aID)
            }
            let counter = "p2pq_forged_messages_total{kind=\"membership_update\"}"
            try await eventually("a counts the forged updates") { await a.status()?.counters[counter] == 2 }
            #expect(await a.members().contains { $0.peer == b.peerID && $0.state == .alive })
            #expect(await a.status()?.counters["p2pq_forged_messages_total{kind=\"call_result\"}"] == 0)
            // And in the metrics, within a publication interval.
            let series = "p2pq_forged_messages_total{node=\"\(a.peerID.short)\",kind=\"membership_update\"} 2"
            try await eventually("the metric shows them", timeout: .seconds(5)) {
                var text: [UInt8] = []
                registry.emit(into: &text)
                return String(decoding: text, as: UTF8.self).contains(series)
            }
        } catch {
            failure = error
        }
        await b.stop()
        await a.stop()
        if let failure { throw failure }
    }
}
