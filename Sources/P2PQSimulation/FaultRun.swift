import P2PQWire

/// A run of random faults drawn from one seed, with producers and consumers (and, for some
/// seeds, remote calls) running through them, and the invariants checked at the end.
///
/// From 3 s to 20 s every 1 to 3 s a node other than node 0 (everyone's bootstrap, kept up so
/// restarted nodes find the cluster) crashes (two at most at once), a crashed one restarts, or
/// one is paused, partitioned off, or cut off one way from two others, until the next fault;
/// links reset and stall at random throughout. At 20 s the crashed nodes restart and the faults
/// end; membership must hold the live set at 35 s, and the run drains until 60 s. The fault
/// choices come from their own generator (`seed ^ 0xFA17`), so the same seed gives the same
/// faults whatever the cluster does.
public struct FaultRun: Sendable, Hashable {
    public var seed: UInt64
    public var nodes: Int
    /// Bursts and longer tasks over about 10 s, so items wait in queues and transfers while
    /// faults hit (``addWorkload(to:nodes:items:start:slow:)``).
    public var slow: Bool
    /// Remote calls too: nodes 0 and the last call "echo" 50 times a second from 2 s to 20 s.
    public var calls: Bool
    /// Keep every action (``ClusterSimulation/trace``), to find what went wrong.
    public var recordsTrace = false

    public init(seed: UInt64, nodes: Int = 7, slow: Bool = true, calls: Bool = false) {
        precondition(nodes >= 3, "the faults need node 0 and two others")
        self.seed = seed
        self.nodes = nodes
        self.slow = slow
        self.calls = calls
    }

    /// The sweep's run of `seed`: 3 to 12 nodes, the fast workload for one seed in four, remote
    /// calls for one in three, all drawn from the seed (apart from the faults' own draws).
    public static func drawn(seed: UInt64) -> FaultRun {
        var shape = SplitMix64(seed: seed ^ 0x5EED_5EED)
        let nodes = 3 + Int(shape.next() % 10)
        let slow = shape.next() % 4 != 0
        let calls = shape.next() % 3 == 0
        return FaultRun(seed: seed, nodes: nodes, slow: slow, calls: calls)
    }

    /// The cluster: 1 ms links with an exponential jitter of 2 ms on average, link resets, resets
    /// after delivery and stalls, and nobody reachable held dead past 8 s.
    public var configuration: ClusterSimulation.Configuration {
        var configuration = ClusterSimulation.Configuration(nodes: nodes, seed: seed)
        configuration.network.latency = DelayDistribution(base: simulatedMillisecond, jitter: .exponential(mean: 2 * simulatedMillisecond))
        configuration.network.resetProbability = 0.0005
        configuration.network.resetAfterDeliveryProbability = 0.0005
        configuration.network.stallProbability = 0.005
        configuration.invariants = InvariantBounds(deadBound: 8 * simulatedSecond)
        configuration.recordsTrace = recordsTrace
        if calls {
            configuration.calls = CallWorkload(
                callers: [0, nodes - 1], interval: 20 * simulatedMillisecond,
                taskDuration: DelayDistribution(base: 2 * simulatedMillisecond, jitter: .exponential(mean: 3 * simulatedMillisecond)),
                start: 2 * simulatedSecond, end: 20 * simulatedSecond)
        }
        return configuration
    }

    /// Producers (at nodes 0 and 1, and one spread over the running nodes), `items` each, and a
    /// consumer at each of the first `nodes` nodes, from `start`. `slow`: bursts and longer tasks.
    public static func addWorkload(to simulation: inout ClusterSimulation, nodes: Int, items: Int, start: UInt64, slow: Bool = false) {
        let ms = simulatedMillisecond, second = simulatedSecond
        let task = slow ? DelayDistribution(base: 5 * ms, jitter: .exponential(mean: 15 * ms))
                        : DelayDistribution(base: ms, jitter: .exponential(mean: 4 * ms))
        for n in 0..<nodes { simulation.add(Consumer(node: n, taskDuration: task, start: start)) }
        for n in 0..<2 {
            simulation.add(Producer(.node(n), items: items, batch: slow ? 30 : 5, interval: slow ? second : 20 * ms, start: start))
        }
        simulation.add(Producer(.spread, items: items, batch: slow ? 10 : 3, interval: slow ? 300 * ms : 10 * ms, start: start))
    }

    /// Runs the faults, checks membership convergence at 35 s and drains until 60 s; the
    /// delivery and call invariants are left to ``check(_:)``.
    public func run() -> ClusterSimulation {
        let second = simulatedSecond
        var simulation = ClusterSimulation(configuration)
        Self.addWorkload(to: &simulation, nodes: nodes, items: 300, start: 2 * second, slow: slow)
        var faults = SplitMix64(seed: seed ^ 0xFA17)
        var time = 3 * second
        var crashedNodes: [Int] = []
        while time < 20 * second {
            simulation.run(until: time)
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

    /// What a finished run found.
    public struct Outcome: Sendable {
        public var run: FaultRun
        public var deliveries: DeliveryReport
        /// Nil without calls.
        public var calls: CallReport?
        public var producersDone: Bool
        /// Every broken invariant, in order, each with the seed and the trace hash when found.
        public var failures: [ClusterSimulation.Failure]
        /// The trace hash at the end.
        public var traceHash: TraceHash

        public var passed: Bool { failures.isEmpty }
    }

    /// Checks a finished run: every producer done, no acknowledged item lost, no payload
    /// nobody pushed, and with calls none lost or answered with another call's bytes; adds
    /// what breaks to the simulation's failures.
    public func check(_ simulation: inout ClusterSimulation) -> Outcome {
        if !simulation.producersDone { simulation.fail("producers", "the producers did not push all their items") }
        let deliveries = simulation.checkDeliveries(faultFree: false)
        let calls = calls ? simulation.checkCalls(faultFree: false) : nil
        return Outcome(run: self, deliveries: deliveries, calls: calls, producersDone: simulation.producersDone,
                       failures: simulation.failures, traceHash: simulation.traceHash)
    }

    /// ``run()`` then ``check(_:)``.
    public func runAndCheck() -> Outcome {
        var simulation = run()
        return check(&simulation)
    }
}
