import Foundation
import P2PQQueue
import P2PQTestSupport
import Testing

/// The queue machines decide from their inputs alone: no clock, no random source, and no
/// dependence on dictionary or set order (which Swift seeds afresh in every process). A cluster
/// run twice from the same inputs must do the same things, byte for byte, in this process and
/// in another.
@Suite("Determinism: a simulated cluster does the same, run again here or in another process")
struct DeterminismTests {
    static let hashPrefix = "determinism-hash: "

    /// Four replicating queues: pushes at two nodes, consumers of three speeds, a death, a cut
    /// link healed; every message's bytes, delivery and timer go into the hash.
    static func scenario() -> (hash: TraceHash, popped: Int, total: Int) {
        var sim = Simulation(nodes: 4)
        sim.keepsReplicas = true
        sim.connectAll()
        sim.push(0..<3000, at: sim.node(0), size: 24)
        sim.addConsumers(2, at: sim.node(1), taskTime: 1 * ms)
        sim.addConsumers(1, at: sim.node(2), taskTime: 3 * ms)
        sim.addConsumers(3, at: sim.node(3), taskTime: 2 * ms)
        sim.run(until: 300 * ms)
        sim.push(3000..<5000, at: sim.node(2), size: 40)
        sim.cut(sim.node(0), sim.node(1))
        sim.run(until: 600 * ms)
        sim.connect(sim.node(0), sim.node(1))
        sim.kill(sim.node(3))
        sim.addConsumers(2, at: sim.node(0), taskTime: 2 * ms)
        sim.run(until: 20 * second)
        return (sim.trace, Set(sim.popped.values.joined()).count, 5000)
    }

    @Test("Run twice in this process: the same trace, and every item popped")
    func sameInThisProcess() {
        let first = Self.scenario()
        let second = Self.scenario()
        #expect(first.popped == first.total, "popped \(first.popped) of \(first.total)")
        #expect(first.hash == second.hash)
    }

    @Test("Run in two other processes (their own hash seeds): the same trace as here")
    func sameAcrossProcesses() throws {
        guard !DeterminismChild.isChild else { return }
        let here = Self.scenario().hash.description
        for lines in try DeterminismChild.hashes(printedBy: "DeterminismTests/childPrintsHash", prefix: Self.hashPrefix) {
            #expect(lines == [here], "this process \(here), the child printed \(lines)")
        }
    }

    /// What the child processes run.
    @Test("(child) prints the scenario's hash", .enabled(if: DeterminismChild.isChild))
    func childPrintsHash() {
        print(Self.hashPrefix + Self.scenario().hash.description)
    }
}
