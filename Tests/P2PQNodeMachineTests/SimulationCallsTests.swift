import P2PQNodeMachine
import P2PQSimulation
import P2PQWire
import Testing

/// Remote calls between simulated nodes: every node executes "echo", some call it; the checker
/// matches each result to its call and counts executions.
@Suite("ClusterSimulation: remote calls")
struct SimulationCallsTests {
    static func configuration(_ nodes: Int, seed: UInt64, calls: CallWorkload) -> ClusterSimulation.Configuration {
        var configuration = ClusterSimulation.Configuration(nodes: nodes, seed: seed)
        configuration.network.latency = DelayDistribution(base: ms, jitter: .exponential(mean: ms))
        configuration.calls = calls
        return configuration
    }

    @Test("Fault-free: every call returns its own arguments, runs exactly once, and calls spread over the executors; the seed fixes the trace")
    func faultFree() {
        let workload = CallWorkload(callers: [0, 3], interval: 2 * ms, taskDuration: DelayDistribution(base: 5 * ms),
                                    maxConcurrentCalls: 4, start: 3 * second, end: 6 * second)
        func run(seed: UInt64) -> (ClusterSimulation, CallReport) {
            var simulation = ClusterSimulation(Self.configuration(6, seed: seed, calls: workload))
            simulation.run(until: 9 * second)
            return (simulation, simulation.checkCalls(faultFree: true))
        }
        let (simulation, report) = run(seed: 4)
        #expect(report.made == 3_000)
        #expect(report.succeeded == report.made)
        #expect(report.failed.isEmpty && report.lost == 0 && report.wrongResults == 0 && report.abandoned == 0)
        #expect(report.duplicateExecutions == 0)
        #expect(simulation.failures.isEmpty, "\(simulation.failures)")
        // Two callers at 500 calls/s each, 5 ms tasks, 4 slots per executor: one executor
        // could not keep up alone, and each call takes at least a round trip and a task.
        let executors = (0..<6).filter { simulation.machines[$0].executor.counters.executed > 0 }
        #expect(executors.count >= 3, "calls ran on \(executors) only")
        #expect((report.latency(at: 0.5) ?? 0) >= 5 * ms)
        #expect((report.latency(at: 0.99) ?? .max) < second)
        #expect(run(seed: 4).0.traceHash == simulation.traceHash)
    }

    @Test("An executor crashes while calls run on it: no call is lost or answered wrongly, and its calls run again elsewhere")
    func executorCrash() {
        let workload = CallWorkload(callers: [0], interval: ms, taskDuration: DelayDistribution(base: 20 * ms),
                                    maxConcurrentCalls: 8, start: 3 * second, end: 7 * second)
        var simulation = ClusterSimulation(Self.configuration(5, seed: 9, calls: workload))
        simulation.run(until: 5 * second)
        let runningThere = simulation.machines[2].executor.counters.executed
        simulation.crash(2)
        simulation.run(until: 20 * second)
        let report = simulation.checkCalls(faultFree: false)
        #expect(runningThere > 0, "node 2 never executed a call")
        #expect(report.made == 4_000)
        #expect(report.lost == 0 && report.wrongResults == 0 && report.abandoned == 0)
        #expect(report.succeeded + report.failed.values.reduce(0, +) == report.made)
        // The calls in flight at node 2 are retried elsewhere once it is dead: all succeed.
        #expect(report.succeeded == report.made, "failed: \(report.failed)")
        #expect(simulation.machines[0].caller.counters.retries > 0, "no call was in flight at node 2")
        // At most the calls node 2 was running (its 8 slots) ran twice.
        #expect(report.duplicateExecutions <= 8)
        #expect(simulation.failures.isEmpty, "\(simulation.failures)")
    }
}
