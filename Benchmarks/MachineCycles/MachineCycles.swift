import Benchmark
import P2PQQueue
import P2PQWorkloads

/// The queue and remote-call state machines alone (no sockets, no threads), through the wire
/// encoding: W1's source and consumer queue machines, W2b's caller and executor machines.
/// Each iteration moves 100,000 items or calls, so throughput reads as items (calls) per second
/// x 100,000; mallocs count the machines' allocations per iteration.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .milliseconds,
        maxDuration: .seconds(10),
        maxIterations: 10
    )
    for payload in [64, 1024] {
        Benchmark("queue machines, 100k items of \(payload) B") { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(try QueueMachineCycle.run(items: 100_000, payloadSize: payload))
            }
        }
    }
    for batch in [1, 32] {
        Benchmark("call machines, 100k calls, batches of \(batch)") { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(try CallMachineCycle.run(calls: 100_000, inFlight: 256, batch: batch))
            }
        }
    }
}
