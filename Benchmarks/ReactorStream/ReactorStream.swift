import Benchmark
import P2PQReactor
import P2PQWorkloads

/// Loopback stream of length-prefixed frames between two reactors, per backend and frame size.
/// Each iteration streams one million frames, so throughput reads as million frames per second.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal, .peakMemoryResident],
        timeUnits: .nanoseconds,
        scalingFactor: .mega,
        maxDuration: .seconds(15),
        maxIterations: 7
    )
    for backend in ReactorBackendKind.allCases where backend.isCompiledIn {
        for payload in [64, 1024] {
            Benchmark("stream \(payload)B frames, \(backend)") { benchmark in
                let result = try ReactorStream.run(backend: backend, payloadSize: payload, frames: benchmark.scaledIterations.count)
                blackHole(result.frames)
            }
        }
    }
}
