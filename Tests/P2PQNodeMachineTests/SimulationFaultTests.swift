import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQSimulation
import P2PQWire
import Testing

/// The simulated network's latency distributions and faults, the codec sample, and the
/// producers, consumers and invariants that check whole runs.
@Suite("ClusterSimulation: network faults, the codec sample, workloads and invariants")
struct SimulationFaultTests {
    static func configuration(_ nodes: Int, seed: UInt64) -> ClusterSimulation.Configuration {
        var configuration = ClusterSimulation.Configuration(nodes: nodes, seed: seed)
        configuration.network.latency = DelayDistribution(base: ms, jitter: .exponential(mean: 2 * ms))
        return configuration
    }

    // MARK: The network

    @Test("With latency jitter twelve nodes still form a full mesh with no false suspicion; the seed fixes the trace")
    func jitter() {
        func run(_ configuration: ClusterSimulation.Configuration) -> ClusterSimulation {
            var simulation = ClusterSimulation(configuration)
            simulation.run(until: 8 * second)
            return simulation
        }
        let jittered = run(Self.configuration(12, seed: 3))
        for n in 0..<12 {
            #expect(jittered.machines[n].connections.linkedPeers.count == 11, "node \(n)")
            #expect(jittered.machines[n].membership.members.filter { $0.state == .alive }.count == 11, "node \(n)")
        }
        #expect(jittered.verdicts.isEmpty, "\(jittered.verdicts)")
        #expect(run(Self.configuration(12, seed: 3)).traceHash == jittered.traceHash)
        #expect(run(ClusterSimulation.Configuration(nodes: 12, seed: 3)).traceHash != jittered.traceHash, "the jitter changed nothing")
    }

    @Test("A one-way cut: the nodes that hear nothing from a node declare it dead; healed, it is alive everywhere")
    func oneWayCut() {
        var simulation = ClusterSimulation(Self.configuration(5, seed: 5))
        simulation.run(until: 6 * second)
        simulation.cutOneWay(from: [4], to: [0, 1, 2, 3])
        simulation.run(until: 16 * second)
        for n in 0..<4 {
            #expect(simulation.machines[n].membership.state(of: peer(4)) == .dead, "node \(n)")
        }
        simulation.heal()
        simulation.run(until: 30 * second)
        for n in 0..<5 {
            #expect(simulation.machines[n].membership.members.allSatisfy { $0.state == .alive }, "node \(n)")
        }
    }

    @Test("A link reset drops both ends at once; the nodes link again and nobody is suspected")
    func linkReset() {
        var configuration = Self.configuration(4, seed: 6)
        configuration.recordsTrace = true
        var simulation = ClusterSimulation(configuration)
        simulation.run(until: 6 * second)
        simulation.resetLink(between: 0, and: 1)
        #expect(simulation.linkResets == 1)
        simulation.run(until: 10 * second)
        for (n, other) in [(0, 1), (1, 0)] {
            let drops = simulation.trace.filter {
                guard $0.node == n, $0.time >= 6 * second, case .peerDisconnected(let peer, _) = $0.action else { return false }
                return peer == ClusterSimulation.peer(other)
            }
            #expect(drops.count == 1, "node \(n) saw \(drops.count) drops of node \(other)")
            #expect(simulation.machines[n].link(to: peer(other)) != nil, "node \(n) did not link again")
        }
        #expect(simulation.verdicts.isEmpty, "\(simulation.verdicts)")
    }

    @Test("Random resets and stalls: once the faults end, every node holds exactly the live set")
    func randomNetworkFaults() {
        var configuration = Self.configuration(6, seed: 8)
        configuration.network.resetProbability = 0.02
        configuration.network.stallProbability = 0.02
        var simulation = ClusterSimulation(configuration)
        simulation.run(until: 20 * second)
        #expect(simulation.linkResets > 5)
        simulation.endFaults()
        simulation.run(until: 35 * second)
        let converged = simulation.checkMembershipConverged()
        #expect(converged)
        #expect(simulation.failures.isEmpty, "\(simulation.failures)")
    }

    // MARK: The codec sample

    @Test("Every message through the real encoder and decoder: items pushed at one node reach the others once")
    func everyMessageThroughTheCodec() {
        var configuration = Self.configuration(3, seed: 7)
        configuration.network.codecSampleRate = 1
        var simulation = ClusterSimulation(configuration)
        simulation.run(until: 4 * second)
        let items = (0..<300).map { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
        #expect(simulation.push(items, at: 0, into: "q") == .accepted)
        _ = simulation.pop("q", at: 1, max: 100, waiter: 1)
        _ = simulation.pop("q", at: 2, max: 100, waiter: 1)
        simulation.run(until: 6 * second)
        simulation.partition([2])
        simulation.run(until: 16 * second)
        simulation.heal()
        simulation.run(until: 30 * second)
        #expect(simulation.codecSamples > 500)
        #expect(simulation.failures.isEmpty, "\(simulation.failures)")
        let at1 = simulation.delivered[1]?["q"] ?? [], at2 = simulation.delivered[2]?["q"] ?? []
        #expect(!at1.isEmpty && !at2.isEmpty && Set(at1 + at2).isSubset(of: Set(items)), "\(at1.count), \(at2.count)")
    }

    // MARK: Workloads and invariants

    /// Producers (at nodes 0 and 1, and one spread) and a consumer at every node. `slow`: bursts
    /// and longer tasks over about 10 s, so items wait in queues and transfers while faults hit.
    static func addWorkload(to simulation: inout ClusterSimulation, nodes: Int, items: Int, start: UInt64, slow: Bool = false) {
        let task = slow ? DelayDistribution(base: 5 * ms, jitter: .exponential(mean: 15 * ms))
                        : DelayDistribution(base: ms, jitter: .exponential(mean: 4 * ms))
        for n in 0..<nodes { simulation.add(Consumer(node: n, taskDuration: task, start: start)) }
        for n in 0..<2 {
            simulation.add(Producer(.node(n), items: items, batch: slow ? 30 : 5, interval: slow ? second : 20 * ms, start: start))
        }
        simulation.add(Producer(.spread, items: items, batch: slow ? 10 : 3, interval: slow ? 300 * ms : 10 * ms, start: start))
    }

    @Test("Fault-free, with jitter: every acknowledged push is popped exactly once", arguments: [1, 2] as [UInt64])
    func faultFreeWorkload(seed: UInt64) {
        var configuration = Self.configuration(6, seed: seed)
        configuration.invariants = InvariantBounds(deadBound: 2 * second)
        var simulation = ClusterSimulation(configuration)
        Self.addWorkload(to: &simulation, nodes: 6, items: 400, start: 3 * second)
        simulation.run(until: 30 * second)
        #expect(simulation.producersDone)
        let report = simulation.checkDeliveries(faultFree: true)
        #expect(report.acknowledged == 1200)
        #expect(report.popped == 1200 && report.duplicates == 0 && report.lost == 0, "\(report)")
        #expect(simulation.ledger.firstTaskAt.count == 6, "every consumer worked")
        let converged = simulation.checkMembershipConverged()
        #expect(converged)
        #expect(simulation.failures.isEmpty, "\(simulation.failures)")
    }

    /// Random crashes and restarts, pauses, partitions and one-way cuts, drawn from the seed,
    /// with network resets and stalls, from 3 s to 20 s; then 15 s without faults and a drain.
    /// `slow`: the workload runs through the faults (see ``addWorkload(to:nodes:items:start:slow:)``).
    static func faultyRun(seed: UInt64, slow: Bool = true) -> ClusterSimulation {
        let nodes = 7
        var configuration = Self.configuration(nodes, seed: seed)
        configuration.network.resetProbability = 0.0005
        configuration.network.resetAfterDeliveryProbability = 0.0005
        configuration.network.stallProbability = 0.005
        configuration.invariants = InvariantBounds(deadBound: 8 * second)
        var simulation = ClusterSimulation(configuration)
        Self.addWorkload(to: &simulation, nodes: nodes, items: 300, start: 2 * second, slow: slow)
        var faults = SplitMix64(seed: seed ^ 0xFA17)
        var time = 3 * second
        var crashedNodes: [Int] = []
        while time < 20 * second {
            simulation.run(until: time)
            // Node 0 (everyone's bootstrap) stays up so restarted nodes find the cluster.
            let target = 1 + Int(faults.next() % UInt64(nodes - 1))
            switch faults.next() % 5 {
            case 0 where !crashedNodes.contains(target) && crashedNodes.count < 2:
                simulation.crash(target)
                crashedNodes.append(target)
            case 1 where !crashedNodes.isEmpty:
                simulation.restart(crashedNodes.removeFirst())
            case 2: simulation.pause(target)
            case 3: simulation.partition([target])
            default: simulation.cutOneWay(from: [target], to: [0, 1 + target % (nodes - 1)])
            }
            time += (1 + faults.next() % 3) * second
            simulation.run(until: time)
            simulation.heal()
            for n in simulation.paused.sorted() { simulation.resume(n) }
        }
        for n in crashedNodes { simulation.restart(n) }
        simulation.endFaults()
        simulation.run(until: 35 * second)
        simulation.checkMembershipConverged()
        simulation.run(until: 60 * second)
        return simulation
    }

    @Test("Faults drawn from the seed: no acknowledged item lost, membership converges, nobody held dead too long",
          arguments: [11, 12, 13, 15, 17, 21] as [UInt64])
    func faultyWorkload(seed: UInt64) {
        var simulation = Self.faultyRun(seed: seed)
        #expect(simulation.producersDone)
        let report = simulation.checkDeliveries(faultFree: false)
        #expect(report.acknowledged > 600 && report.lost == 0, "\(report)")
        #expect(simulation.failures.isEmpty, "\(simulation.failures.map(\.description).joined(separator: "\n"))")
    }

    /// Found by seed 16 (and 18 to 20): an owner's replica backlog listed items twice (a holder
    /// died while they waited), one replica transfer carried them twice, and the holder's shelf
    /// let an array go while a later run still pointed into it: a trap, or another array's
    /// bytes. The backlog now stays disjoint and the shelf holds arrays before dropping copies.
    @Test("Seed 16: replicas sent again while still waiting neither trap the holder nor lose items")
    func replicaShelfTrap() {
        var simulation = Self.faultyRun(seed: 16)
        let report = simulation.checkDeliveries(faultFree: false)
        #expect(report.lost == 0 && simulation.failures.isEmpty, "\(simulation.failures)")
    }

    /// Found by seed 14 (the fast workload): node 3, suspected by node 1 while each suspected the
    /// other, refuted at a new incarnation and gossiped it to the members it believed alive, not
    /// to node 1. Node 1 (and node 4) then declared it dead at the old incarnation and told it so
    /// every second over their link, and node 3 ignored a verdict below its own incarnation, so
    /// they held it dead for good. A member now answers such a verdict with its incarnation.
    @Test("Seed 14: a member whose refutation some nodes missed answers their stale verdict and is alive to all again")
    func missedRefutation() {
        var simulation = Self.faultyRun(seed: 14, slow: false)
        simulation.checkDeliveries(faultFree: false)
        #expect(simulation.failures.isEmpty, "\(simulation.failures.map(\.description).joined(separator: "\n"))")
    }

    @Test("Without replicas a crashed owner loses acknowledged items, and the checker says so with the seed")
    func lossIsCaught() {
        func run(_ replication: Replication) -> ClusterSimulation {
            var configuration = Self.configuration(4, seed: 21)
            configuration.queue.replication = replication
            var simulation = ClusterSimulation(configuration)
            simulation.add(Producer(.node(1), items: 200, batch: 20, interval: 10 * ms, start: 3 * second))
            simulation.run(until: 6 * second)
            simulation.crash(1)
            for n in [0, 2, 3] { simulation.add(Consumer(node: n)) }
            simulation.run(until: 30 * second)
            return simulation
        }
        var unreplicated = run(.local)
        let lost = unreplicated.checkDeliveries(faultFree: false)
        #expect(lost.acknowledged == 200 && lost.lost > 0, "\(lost)")
        #expect(unreplicated.failures.map(\.kind) == ["lost"])
        #expect(unreplicated.failures.first?.description.hasPrefix("seed 21, trace hash ") == true)
        var replicated = run(.replicated)
        let kept = replicated.checkDeliveries(faultFree: false)
        #expect(kept.acknowledged == 200 && kept.lost == 0 && kept.popped == 200, "\(kept)")
        #expect(replicated.failures.isEmpty, "\(replicated.failures)")
    }

    @Test("A broken invariant is a failure with the seed and trace hash; replaying the seed gives the same failure")
    func failureReplays() {
        func run() -> ClusterSimulation {
            var configuration = Self.configuration(5, seed: 31)
            // A bound no real refutation meets (it takes a redial: three latencies at least): a
            // paused node is held dead past it once it resumes.
            configuration.invariants = InvariantBounds(deadBound: ms, checkInterval: ms)
            var simulation = ClusterSimulation(configuration)
            simulation.run(until: 5 * second)
            simulation.pause(2)
            simulation.run(until: 12 * second)
            simulation.resume(2)
            simulation.run(until: 20 * second)
            return simulation
        }
        let first = run()
        #expect(!first.failures.isEmpty && first.failures.allSatisfy { $0.kind == "dead" && $0.seed == 31 })
        let replay = run()
        #expect(replay.failures == first.failures)
        #expect(replay.traceHash == first.traceHash)
    }
}
