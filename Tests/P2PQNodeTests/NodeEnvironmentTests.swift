import P2PQLink
import P2PQMembership
@testable import P2PQNode
import P2PQWire
import Testing

@Suite struct NodeEnvironmentTests {
    /// A node takes its incarnation (and its random choices and handshake keys) from the
    /// environment it is given: peers see the incarnation it was given, not its start time.
    @Test func aNodeRunsOnTheEnvironmentItIsGiven() async throws {
        let key = ClusterKey.generate()
        var index: UInt64 = 0
        let nodes = try await startMesh(2, key: key) { configuration in
            index += 1
            configuration.environment = .seeded(index, incarnation: 1_000 + index)
        }
        for (node, other) in [(nodes[0], nodes[1]), (nodes[1], nodes[0])] {
            try await eventually("\(node.peerID.short) knows its peer's incarnation") {
                await node.members().first { $0.peer == other.peerID }?.incarnation != nil
            }
            let expected: UInt64 = other === nodes[0] ? 1_001 : 1_002
            // A refuted suspicion (a loaded machine) raises it by one each time: still near the
            // given value, nowhere near the wall clock's nanoseconds.
            let seen = await node.members().first { $0.peer == other.peerID }?.incarnation
            #expect(seen.map { (expected..<expected + 1_000).contains($0) } == true, "incarnation \(seen.map(String.init) ?? "none")")
        }
        for node in nodes { await node.stop() }
    }

    @Test func theSystemEnvironmentTakesItsIncarnationFromTheWallClock() {
        let environment = NodeEnvironment.system()
        let wall = environment.wallNanoseconds()
        #expect(environment.incarnation <= wall && wall - environment.incarnation < 60_000_000_000)
        #expect(!environment.handshakeKeys.isSeeded)
    }
}
