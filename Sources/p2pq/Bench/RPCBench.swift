import ArgumentParser
import Foundation
import Glibc
import Logging
import P2PQLink
import P2PQNode
import P2PQRemoteCall

/// `p2pq bench rpc`: workload W2 (DESIGN.md). A caller in this process invokes a registered
/// echo (16-byte argument and result) on a `p2pq node` child: (a) one call in flight, round
/// trip percentiles; (b) many in flight, calls/s, for off-reactor and inline execution.
struct RPCBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rpc",
        abstract: "Remote-call round trips and throughput against a child node (W2); JSON per run."
    )

    @Option(help: "Calls for each one-in-flight latency run (one per execution measured); 0 skips them.")
    var latencyCalls: Int = 100_000

    @Option(help: "Calls for each throughput run; 0 skips them.")
    var throughputCalls: Int = 1_000_000

    @Option(help: "Calls in flight for the throughput runs.")
    var inFlight: Int = 256

    @Option(help: "Warm-up calls before measuring.")
    var warmUp: Int = 200

    @Option(help: "Runs of each measurement (the median is reported).")
    var runs: Int = 3

    @Option(help: "Calls the executing node runs at once.")
    var maxConcurrentCalls: Int = 256

    @Option(help: "Also measure throughput with batch calls of this many (the in-flight calls split into batches); 0 skips it.")
    var batch: Int = 32

    @Option(help: "Also measure throughput with pipelined calls (RemoteFunction.results(for:window:)) with this window; 0 skips it.")
    var pipeline: Int = 256

    @Option(help: "Which throughput runs: all, off-reactor (a task per call), sync (registerRawSync: worker threads) or inline.")
    var execution: ExecutionChoice = .all

    enum ExecutionChoice: String, ExpressibleByArgument, CaseIterable {
        case all, offReactor = "off-reactor", sync, inline
    }

    @Option(help: "Both nodes' reactors poll this many microseconds after their last event before sleeping (ReactorConfiguration.busyPoll; 0: off).")
    var busyPollUs: Int = 0

    @Flag(help: "Run the calling tasks on the caller node's reactor (Node.taskExecutor) instead of the global pool.")
    var callerOnReactor = false

    func validate() throws {
        guard runs >= 1 && runs <= 20 else { throw ValidationError("--runs must be 1...20") }
        guard (0...1_000_000).contains(busyPollUs) else { throw ValidationError("--busy-poll-us must be 0...1000000") }
        guard batch >= 0, batch <= inFlight else { throw ValidationError("--batch must be 0...--in-flight") }
        guard (0...65535).contains(pipeline) else { throw ValidationError("--pipeline must be 0...65535") }
        guard latencyCalls >= 0, throughputCalls >= 0, inFlight >= 1, maxConcurrentCalls >= 1 else {
            throw ValidationError("counts must be positive")
        }
    }

    func run() async throws {
        let cluster = try await LocalCluster.start(nodes: 1, extraArguments: [
            "--serve-examples", "--max-concurrent-calls", "\(maxConcurrentCalls)", "--busy-poll-us", "\(busyPollUs)",
        ])
        var configuration = loopbackNodeConfiguration(bootstrap: [cluster.nodes[0].listenAddress], label: "p2pq")
        configuration.clusterKey = cluster.key
        configuration.reactor.busyPoll = .microseconds(busyPollUs)
        let node = try Node(configuration: configuration)
        try await node.start()
        do { try await waitForMesh([node], peers: 1, timeout: .seconds(15)) } catch {
            cluster.stop()
            throw ValidationError("the child node did not connect within 15 s")
        }
        let clock = ContinuousClock()
        try await Task.sleep(for: .milliseconds(500))  // queue gossip: the child waits for calls
        let rpc = try await RemoteCall(node: node, maxConcurrentCalls: 1)
        let echo = rpc.rawFunction("echo")
        let inline = rpc.rawFunction("echo-inline")
        let sync = rpc.rawFunction("echo-sync")
        let argument = [UInt8](repeating: 0xAB, count: 16)

        // Warm up links, caches and the child's waiting pops.
        stage("warm-up")
        for i in 0..<warmUp {
            do { _ = try await echo(argument, timeout: .seconds(2)) } catch {
                let size = await node.queue(named: "p2pq.calls").size()
                let counters = await node.queue(named: "p2pq.calls").counters()
                FileHandle.standardError.write("call \(i): \(error) size \(size) \(String(describing: counters))\n".data(using: .utf8)!)
                break
            }
        }

        stage("latency; caller queue \(String(describing: await node.queue(named: "p2pq.calls").counters()))")
        let executions = [("off-reactor", echo), ("sync", sync), ("inline", inline)].filter { execution == .all || $0.0 == execution.rawValue }
        // One call in flight, for each execution measured: off-reactor adds the executor's hop
        // to a worker and back, sync a hop to a worker thread, inline neither.
        var p50s: [String: [Double]] = [:]
        var p99s: [String: [Double]] = [:]
        for (label, function) in executions where latencyCalls > 0 {
            for run in 1...runs {
                let (p50, p99) = try await latency(function, argument: argument, clock: clock, node: node, cluster: cluster)
                p50s[label, default: []].append(p50)
                p99s[label, default: []].append(p99)
                print(json(["workload": "\"W2a\"", "execution": "\"\(label)\"", "run": "\(run)", "calls": "\(latencyCalls)", "inFlight": "1",
                            "p50_us": format(p50), "p99_us": format(p99)]))
                fflush(nil)
            }
        }

        var rates: [String: [Double]] = [:]
        for (label, function) in executions where throughputCalls > 0 {
            // 0: one call per task; -1: pipelined; else batch calls of that size.
            for batchSize in (batch > 1 ? [1, batch] : [1]) + (pipeline > 0 ? [-1] : []) {
                let key = batchSize == 1 ? label : batchSize == -1 ? "\(label)-pipeline" : "\(label)-batch"
                for run in 1...runs {
                    let callerBefore = cpuSeconds()
                    let executorBefore = cpuSeconds(ofProcess: cluster.nodes[0].pid)
                    let rate = batchSize == -1
                        ? try await pipelined(function, argument: argument, clock: clock, executor: callerOnReactor ? node.taskExecutor : nil)
                        : try await throughput(function, argument: argument, batchSize: batchSize, clock: clock,
                                               executor: callerOnReactor ? node.taskExecutor : nil)
                    rates[key, default: []].append(rate)
                    // CPU per call in each process: steadier than the rate on a VM whose speed drifts.
                    let callerCPU = (cpuSeconds() - callerBefore) / Double(throughputCalls) * 1e6
                    let executorCPU = cpuSeconds(ofProcess: cluster.nodes[0].pid).flatMap { after in
                        executorBefore.map { (after - $0) / Double(throughputCalls) * 1e6 }
                    } ?? .nan
                    print(json(["workload": "\"W2b\"", "execution": "\"\(label)\"", "batch": "\(max(batchSize, 0))",
                                "pipeline": "\(batchSize == -1 ? pipeline : 0)", "run": "\(run)",
                                "calls": "\(throughputCalls)", "inFlight": "\(batchSize == -1 ? pipeline : inFlight)", "calls_per_s": format(rate),
                                "caller_cpu_us_per_call": format(callerCPU), "executor_cpu_us_per_call": format(executorCPU)]))
                    fflush(nil)
                }
            }
        }
        var summary: [(String, String)] = [
            ("workload", "\"W2\""), ("summary", "true"),
            ("caller_tasks", callerOnReactor ? "\"reactor\"" : "\"pool\""),
        ]
        if batch > 1 { summary.append(("batch", "\(batch)")) }
        if pipeline > 0 { summary.append(("pipeline", "\(pipeline)")) }
        if busyPollUs > 0 { summary.append(("busy_poll_us", "\(busyPollUs)")) }
        // Only the runs measured (see --execution, --batch and --pipeline).
        for label in ["off-reactor", "sync", "inline"] {
            let field = label.replacingOccurrences(of: "-", with: "_")
            if let values = p50s[label] { summary.append(("p50_us_\(field)_median", format(median(values)))) }
            if let values = p99s[label] { summary.append(("p99_us_\(field)_median", format(median(values)))) }
            for suffix in ["", "-batch", "-pipeline"] {
                let key = label + suffix
                let field = key.replacingOccurrences(of: "-", with: "_")
                if let values = rates[key] { summary.append(("calls_per_s_\(field)_median", format(median(values)))) }
            }
        }
        print(json(summary))
        fflush(nil)
        await node.stop()
        cluster.stop()
    }

    /// `latencyCalls` calls one after another from one task: p50 and p99 round trip in µs.
    private func latency(_ function: RawRemoteFunction, argument: [UInt8], clock: ContinuousClock, node: Node,
                         cluster: LocalCluster) async throws -> (Double, Double) {
        let calls = latencyCalls
        let outcome = await withTaskExecutorPreference(callerOnReactor ? node.taskExecutor : nil) {
            () async -> Result<[Double], RemoteCallError> in
            var samples = [Double]()
            samples.reserveCapacity(calls)
            for _ in 0..<calls {
                let start = clock.now
                let result: [UInt8]
                do throws(RemoteCallError) { result = try await function(argument, timeout: .seconds(2)) } catch { return .failure(error) }
                let elapsed = clock.now - start
                guard result.count == 16 else { return .failure(.invalidCall("echo returned \(result.count) bytes")) }
                samples.append(Double(elapsed.components.attoseconds) * 1e-12 + Double(elapsed.components.seconds) * 1e6)
            }
            return .success(samples)
        }
        guard case .success(var samples) = outcome else {
            let size = await node.queue(named: "p2pq.calls").size()
            let counters = await node.queue(named: "p2pq.calls").counters()
            let child = await LocalCluster.status(of: cluster.nodes[0])
            FileHandle.standardError.write("latency: \(outcome) size \(size) \(String(describing: counters)) child \(String(describing: child?.queues))\n".data(using: .utf8)!)
            throw ValidationError("a latency call failed")
        }
        samples.sort()
        return (samples[samples.count / 2], samples[min(samples.count - 1, samples.count * 99 / 100)])
    }

    /// `throughputCalls` pipelined calls from one task, `pipeline` in flight.
    private func pipelined(_ function: RawRemoteFunction, argument: [UInt8], clock: ContinuousClock,
                           executor: (any TaskExecutor)?) async throws -> Double {
        let total = throughputCalls
        let window = pipeline
        let arguments = Array(repeating: argument, count: total)  // built before the clock starts
        let start = clock.now
        let task = Task(executorPreference: executor) { () async -> (failed: Int, received: Int) in
            var failed = 0
            var received = 0
            for await (_, result) in function.results(for: arguments, window: window) {
                received += 1
                if case .success(let bytes) = result, bytes.count == argument.count { continue }
                failed += 1
            }
            return (failed, received)
        }
        let (failed, received) = await task.value
        let elapsed = clock.now - start
        guard failed == 0, received == total else { throw ValidationError("\(failed) pipelined calls failed, \(total - received) missing") }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        return Double(total) / seconds
    }

    /// `inFlight` calls kept in flight by `inFlight / batchSize` tasks, each making one call (or
    /// one batch call of `batchSize`) after another.
    private func throughput(_ function: RawRemoteFunction, argument: [UInt8], batchSize: Int, clock: ContinuousClock,
                            executor: (any TaskExecutor)?) async throws -> Double {
        let total = throughputCalls
        let workers = max(1, min(inFlight / batchSize, (total + batchSize - 1) / batchSize))
        let start = clock.now
        let failures = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<workers {
                let share = total / workers + (worker < total % workers ? 1 : 0)
                group.addTask(executorPreference: executor) {
                    var failed = 0
                    var left = share
                    while left > 0 {
                        let n = min(batchSize, left)
                        left -= n
                        if batchSize == 1 {
                            do throws(RemoteCallError) {
                                _ = try await function(argument)
                            } catch {
                                failed += 1
                            }
                        } else {
                            let results = await function.call(batch: Array(repeating: argument, count: n))
                            failed += results.reduce(0) { count, result in
                                if case .success(let bytes) = result, bytes.count == argument.count { return count }
                                return count + 1
                            }
                        }
                    }
                    return failed
                }
            }
            return await group.reduce(0, +)
        }
        let elapsed = clock.now - start
        guard failures == 0 else { throw ValidationError("\(failures) calls failed") }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        return Double(total) / seconds
    }
}

private func format(_ value: Double) -> String { String(format: "%.1f", value) }

private func json(_ fields: KeyValuePairs<String, String>) -> String {
    json(fields.map { ($0.key, $0.value) })
}

private func json(_ fields: [(String, String)]) -> String {
    "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
}

private func stage(_ text: String) {
    if ProcessInfo.processInfo.environment["P2PQ_BENCH_TRACE"] != nil {
        FileHandle.standardError.write("\(text)\n".data(using: .utf8)!)
    }
}
