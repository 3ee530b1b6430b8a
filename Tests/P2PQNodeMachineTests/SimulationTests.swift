import P2PQMembership
import P2PQNodeMachine
import P2PQSimulation
import Testing

/// Whole node machines on the simulated network: membership alone decides deaths (no oracle).
@Suite("ClusterSimulation: crashes, pauses and restarts, seen by the nodes' own membership")
struct SimulationTests {
    static func cluster(_ nodes: Int, seed: UInt64) -> ClusterSimulation {
        var simulation = ClusterSimulation(ClusterSimulation.Configuration(nodes: nodes, seed: seed))
        simulation.run(until: 6 * second)
        return simulation
    }

    @Test("Twelve nodes form a full mesh with no false suspicion; a crash is held dead by every live node within 3 s",
          arguments: [1, 2, 3] as [UInt64])
    func crashIsDetected(seed: UInt64) {
        var simulation = Self.cluster(12, seed: seed)
        for n in 0..<12 {
            #expect(simulation.machines[n].connections.linkedPeers.count == 11, "node \(n)")
            #expect(simulation.machines[n].membership.members.filter { $0.state == .alive }.count == 11, "node \(n)")
        }
        #expect(simulation.verdicts.isEmpty, "\(simulation.verdicts)")
        simulation.crash(7)
        simulation.run(until: 9 * second)
        for n in 0..<12 where n != 7 {
            #expect(simulation.machines[n].membership.state(of: peer(7)) == .dead, "node \(n)")
        }
        #expect(simulation.verdicts.allSatisfy { $0.subject == 7 }, "a live node was suspected: \(simulation.verdicts)")
    }

    @Test("More nodes than maxPeers + 1: every node joins the partial mesh (a full node makes room for a newcomer), no live node is suspected, and a crash is held dead by every live node",
          arguments: [1, 2] as [UInt64])
    func partialMesh(seed: UInt64) {
        // maxPeers 8 for 24 nodes: the shape of 64 for 200, at a debug build's cost.
        var configuration = ClusterSimulation.Configuration(nodes: 24, seed: seed)
        configuration.connection.maxPeers = 8
        configuration.connection.minPeers = 4
        var simulation = ClusterSimulation(configuration)
        simulation.run(until: 8 * second)
        for n in 0..<24 {
            let links = simulation.machines[n].connections.linkedPeers.count
            #expect(links >= 4 && links <= 8, "node \(n) keeps \(links) links")
            #expect(simulation.machines[n].membership.members.filter { $0.state == .alive }.count == 23, "node \(n)")
        }
        #expect(simulation.verdicts.isEmpty, "\(simulation.verdicts)")
        simulation.crash(23)
        simulation.run(until: 14 * second)
        for n in 0..<23 {
            #expect(simulation.machines[n].membership.state(of: peer(23)) == .dead, "node \(n)")
        }
        #expect(simulation.verdicts.allSatisfy { $0.subject == 23 }, "a live node was suspected: \(simulation.verdicts)")
    }

    @Test("A node paused past its death verdict refutes it on resuming and is alive everywhere again")
    func pausedNodeComesBack() {
        var simulation = Self.cluster(6, seed: 4)
        simulation.pause(3)
        simulation.run(until: 10 * second)
        #expect(simulation.machines[0].membership.state(of: peer(3)) == .dead)
        simulation.resume(3)
        simulation.run(until: 20 * second)
        for n in 0..<6 where n != 3 {
            #expect(simulation.machines[n].membership.state(of: peer(3)) == .alive, "node \(n)")
        }
        #expect(simulation.machines[3].membership.members.allSatisfy { $0.state == .alive })
        #expect(simulation.machines[3].membership.incarnation > 4000, "it refuted with a higher incarnation")
    }

    @Test("A crashed node restarted (same identity, new incarnation) is taken back by every node")
    func restartedNodeRejoins() {
        var simulation = Self.cluster(5, seed: 9)
        simulation.crash(2)
        simulation.run(until: 10 * second)
        #expect(simulation.machines[0].membership.state(of: peer(2)) == .dead)
        simulation.restart(2)
        simulation.run(until: 20 * second)
        for n in 0..<5 where n != 2 {
            #expect(simulation.machines[n].membership.state(of: peer(2)) == .alive, "node \(n)")
            #expect(simulation.machines[n].link(to: peer(2)) != nil, "node \(n)")
        }
        #expect(simulation.machines[2].membership.members.count == 4)
    }
}
