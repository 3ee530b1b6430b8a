import ArgumentParser
import Foundation
import P2PQLink
import P2PQNode
import P2PQQueue
import P2PQWire
import Synchronization

/// `p2pq bench stream`: workload W1 through the distributed queue. This process is the
/// consumer node; a child process (`p2pq bench stream-role`) is the producer node. Default
/// node settings: encrypted links, at-least-once delivery.
struct QueueStreamBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "W1 through the queue: a producer node process pushes N items, this consumer node pops them (JSON per run)."
    )

    @Option(help: "Payload bytes per item. Repeatable.")
    var payload: [Int] = [64, 1024]

    @Option(help: "Items per run.")
    var items: Int = 2_000_000

    @Option(help: "Runs per payload size.")
    var runs: Int = 3

    @Option(help: "Items per push and per pop call.")
    var batch: Int = 4096

    @Flag(help: "At-most-once delivery (no ownership records or pop confirmations).")
    var atMostOnce = false

    @Option(help: "AEAD of the Noise link: auto (default: aesgcm when the CPU has AES instructions, else chachapoly), chachapoly or aesgcm.")
    var linkCipher: LinkCipherOption = .auto

    @Option(help: "Replication of both nodes: replicated (default: each push waits for a replica on the consumer's node, or for the transfer there) or local.")
    var replication: ReplicationOption = .replicated

    @Option(help: "Load stats interval of both nodes, milliseconds (default: the node default, 250).")
    var statsIntervalMs: Int?

    @Option(help: "Most items a node's local queue holds (default: the node default).")
    var maxItems: Int?

    @Option(help: "How the applications hand items over: batch (ItemBatch pushes, popPayloads: one buffer per batch) or arrays ([UInt8] per item).")
    var api: StreamAPI = .batch

    @Option(help: "Where the pushing and popping tasks run: pool (the global executor) or reactor (each node's Node.taskExecutor).")
    var tasks: StreamTasks = .pool

    func validate() throws {
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be between 1 and 100") }
        guard (1...100_000_000).contains(items) else { throw ValidationError("--items must be between 1 and 100,000,000") }
        guard payload.allSatisfy({ (8...65_536).contains($0) }) else { throw ValidationError("--payload must be between 8 and 65,536") }
        guard (1...65_536).contains(batch) else { throw ValidationError("--batch must be between 1 and 65,536") }
    }

    func run() async throws {
        for size in payload {
            var rates: [Double] = []
            for run in 0..<runs {
                let result = try await once(payload: size)
                rates.append(result.rate)
                print(jsonLine([
                    ("bench", "queue-stream"), ("payload", size), ("items", items), ("run", run + 1),
                    ("itemsPerSecond", result.rate), ("seconds", result.seconds),
                    ("consumerCPUSeconds", result.consumerCPU), ("producerCPUSeconds", result.producerCPU),
                    ("delivery", atMostOnce ? "atMostOnce" : "atLeastOnce"), ("replication", replication.rawValue), ("secure", true),
                    ("linkCipher", linkCipher.rawValue), ("api", api.rawValue), ("tasks", tasks.rawValue),
                ]))
                fflush(nil)
            }
            let target = size <= 64 ? 4_000_000.0 : 1_000_000.0
            print(jsonLine([
                ("bench", "queue-stream-summary"), ("payload", size), ("items", items), ("runs", runs),
                ("medianItemsPerSecond", median(rates)), ("target", target), ("targetMet", median(rates) >= target),
                // The targets are for the default settings (negotiated cipher, at-least-once).
                ("defaultSettings", linkCipher == .auto && !atMostOnce),
            ]))
            fflush(nil)
        }
    }

    private func once(payload: Int) async throws -> (rate: Double, seconds: Double, consumerCPU: Double, producerCPU: Double) {
        var configuration = loopbackNodeConfiguration(linkCipher: linkCipher.cipher)
        configuration.queue.replication = replication.value
        if atMostOnce { configuration.queue.delivery = .atMostOnce }
        if let statsIntervalMs { configuration.queue = withStatsInterval(configuration.queue, statsIntervalMs) }
        if let maxItems { configuration.queue.maxItems = maxItems }
        let node = try Node(configuration: configuration)
        let info = try await node.start()
        let queue = node.queue(named: "w1")
        let cpuBefore = cpuSeconds()
        let total = items
        let batch = self.batch
        // The consumer waits before the producer exists: its stats advertise a waiting consumer.
        let consumer = Task(executorPreference: tasks == .reactor ? node.taskExecutor : nil) { () throws -> (first: ContinuousClock.Instant, last: ContinuousClock.Instant, count: Int) in
            var count = 0
            var first: ContinuousClock.Instant?
            var last = ContinuousClock.now
            while count < total {
                let got = api == .batch
                    ? try await queue.popPayloads(max: batch, timeout: .seconds(60)).count
                    : try await queue.pop(max: batch, timeout: .seconds(60)).count
                if first == nil { first = .now }
                count += got
                last = .now
            }
            return (first!, last, count)
        }
        var arguments = ["bench", "stream-role", "--bootstrap", "\(info.listenAddress)", "--items", "\(items)",
                         "--payload", "\(payload)", "--batch", "\(batch)"]
        if atMostOnce { arguments.append("--at-most-once") }
        arguments += ["--link-cipher", linkCipher.rawValue, "--replication", replication.rawValue]
        if let statsIntervalMs { arguments += ["--stats-interval-ms", "\(statsIntervalMs)"] }
        if let maxItems { arguments += ["--max-items", "\(maxItems)"] }
        arguments += ["--api", api.rawValue, "--tasks", tasks.rawValue]
        let producer = try SelfProcess(arguments: arguments)
        let result: (first: ContinuousClock.Instant, last: ContinuousClock.Instant, count: Int)
        do {
            result = try await consumer.value
        } catch {
            kill(producer.process.processIdentifier, SIGKILL)
            await node.stop()
            throw ClusterError("consumer: \(error)")
        }
        let consumerCPU = cpuSeconds() - cpuBefore
        if let counters = await queue.counters(), ProcessInfo.processInfo.environment["P2PQ_BENCH_DEBUG"] != nil {
            FileHandle.standardError.write(Data("consumer counters: \(counters)\n".utf8))
        }
        producer.send("done")
        let line = try await producer.line(startingWith: "cpu ")
        await producer.wait()
        await node.stop()
        let producerCPU = Double(line.split(separator: " ")[1]) ?? .nan
        let seconds = Double((result.last - result.first).components.attoseconds) / 1e18
            + Double((result.last - result.first).components.seconds)
        return (Double(result.count - 1) / max(seconds, 1e-9), seconds, consumerCPU, producerCPU)
    }
}

/// How `p2pq bench stream`'s applications hand items to the queue and take them.
enum StreamAPI: String, ExpressibleByArgument, CaseIterable {
    case batch, arrays
}

/// Where `p2pq bench stream`'s pushing and popping tasks run.
enum StreamTasks: String, ExpressibleByArgument, CaseIterable {
    case pool, reactor
}

/// The producer side of `p2pq bench stream` (run by it, not by hand).
struct QueueStreamRole: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stream-role", abstract: "Producer process of `p2pq bench stream`.", shouldDisplay: false)

    @Option var bootstrap: String
    @Option var items: Int
    @Option var payload: Int
    @Option var batch: Int = 4096
    @Flag var atMostOnce = false
    @Option var statsIntervalMs: Int?
    @Option var linkCipher: LinkCipherOption = .auto
    @Option var replication: ReplicationOption = .replicated
    @Option var maxItems: Int?
    @Option var api: StreamAPI = .batch
    @Option var tasks: StreamTasks = .pool

    func run() async throws {
        var configuration = loopbackNodeConfiguration(bootstrap: [bootstrap], linkCipher: linkCipher.cipher)
        configuration.queue.replication = replication.value
        if atMostOnce { configuration.queue.delivery = .atMostOnce }
        if let statsIntervalMs { configuration.queue = withStatsInterval(configuration.queue, statsIntervalMs) }
        if let maxItems { configuration.queue.maxItems = maxItems }
        let node = try Node(configuration: configuration)
        try await node.start()
        try await waitForMesh([node], peers: 1)
        let queue = node.queue(named: "w1")
        try await withTaskExecutorPreference(tasks == .reactor ? node.taskExecutor : nil) {
            try await produce(queue)
        }
        _ = await readStandardInputLine()  // "done": the consumer has everything
        if let counters = await queue.counters(), ProcessInfo.processInfo.environment["P2PQ_BENCH_DEBUG"] != nil {
            FileHandle.standardError.write(Data("producer counters: \(counters)\n".utf8))
        }
        print("cpu \(cpuSeconds())")
        fflush(nil)
        await node.stop()
    }

    private func produce(_ queue: QueueHandle) async throws {
        // The options are read once: a property wrapper's getter per item (generic metadata
        // lookups in ArgumentParser) cost the producer process about 5 % of its CPU.
        let (items, payload, batch, api) = (self.items, self.payload, self.batch, self.api)
        var sent = 0
        var template = [UInt8](repeating: 0x5A, count: payload)
        while sent < items {
            let n = min(batch, items - sent)
            if api == .arrays {
                var arrays: [[UInt8]] = []
                arrays.reserveCapacity(n)
                for i in 0..<n {
                    // A distinct sequence number in each item's first 8 bytes.
                    template.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(sent + i).bigEndian, as: UInt64.self) }
                    arrays.append(template)
                }
                try await queue.push(contentsOf: arrays)
            } else {
                var chunk = ItemBatch(capacity: n, bytes: n * payload)
                // Each item written in place from the template: the template itself is not
                // written per item (each write checked its uniqueness).
                template.withUnsafeBytes { template in
                    for i in 0..<n {
                        chunk.append(count: payload) { item in
                            item.copyMemory(from: template)
                            item.storeBytes(of: UInt64(sent + i).bigEndian, as: UInt64.self)
                        }
                    }
                }
                try await queue.push(chunk)
            }
            sent += n
        }
    }
}

/// `p2pq bench balance`: workload W3. All tasks are pushed at one node of a cluster of
/// in-process nodes (each its own reactor thread, linked over loopback), one consumer per node
/// sleeps each task's duration. Reports makespan over the lower bound, time to the first pop on
/// another node, and transfers per item, for the adaptive and the legacy (p2pqueue) strategies.
struct QueueBalanceBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balance",
        abstract: "W3: all tasks pushed at one node of 2, 4, 8; makespan/bound, first remote pop, moves per item (JSON per run)."
    )

    @Option(help: "Cluster sizes. Repeatable.")
    var nodes: [Int] = [2, 4, 8]

    @Option(help: "Tasks per run.")
    var tasks: Int = 4000

    @Option(help: "Mean task duration in milliseconds.")
    var taskMs: Double = 10

    @Option(help: "Task durations: uniform (all equal), pareto (shape 2, same mean), or both.")
    var distribution: String = "both"

    @Option(help: "adaptive, legacy or both.")
    var strategy: String = "both"

    @Option(help: "Replication of the nodes' queues: replicated (the default) or local.")
    var replication: ReplicationOption = .replicated

    @Option(help: "Runs per configuration.")
    var runs: Int = 1

    func validate() throws {
        guard nodes.allSatisfy({ (1...16).contains($0) }) else { throw ValidationError("--nodes must be between 1 and 16") }
        guard (1...1_000_000).contains(tasks) else { throw ValidationError("--tasks must be between 1 and 1,000,000") }
        guard taskMs > 0 && taskMs <= 10_000 else { throw ValidationError("--task-ms must be in (0, 10000]") }
        guard ["uniform", "pareto", "both"].contains(distribution) else { throw ValidationError("--distribution: uniform, pareto or both") }
        guard ["adaptive", "legacy", "both"].contains(strategy) else { throw ValidationError("--strategy: adaptive, legacy or both") }
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be between 1 and 100") }
    }

    func run() async throws {
        let distributions = distribution == "both" ? ["uniform", "pareto"] : [distribution]
        let strategies = strategy == "both" ? ["adaptive", "legacy"] : [strategy]
        for count in nodes {
            for shape in distributions {
                for name in strategies {
                    for run in 0..<runs {
                        print(try await once(nodes: count, distribution: shape, strategy: name, run: run))
                        fflush(nil)
                    }
                }
            }
        }
    }

    private func durations(_ distribution: String, seed: UInt64) -> [UInt64] {
        let mean = taskMs * 1e6
        guard distribution == "pareto" else { return Array(repeating: UInt64(mean), count: tasks) }
        // Pareto with shape 2 has mean 2 x_m: x_m = mean / 2. A fixed seed: runs are comparable.
        var state = seed
        return (0..<tasks).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let u = (Double(state >> 11) + 1) / Double(1 << 53)
            return UInt64(mean / 2 / u.squareRoot())
        }
    }

    private func once(nodes count: Int, distribution: String, strategy: String, run: Int) async throws -> String {
        let work = durations(distribution, seed: 42 + UInt64(run))
        let nodes = try await startLocalMesh(count) { configuration in
            if strategy == "legacy" { configuration.queue = .legacy }
            configuration.queue.replication = replication.value
        }
        let queues = nodes.map { $0.queue(named: "w3") }
        for queue in queues { _ = await queue.size() }
        try await Task.sleep(for: .milliseconds(300))  // queues introduced, first stats exchanged
        let shared = BalanceProgress()
        let done = shared
        let firstRemote = shared.firstRemote
        let slept = shared.slept
        let start = ContinuousClock.now
        let total = tasks
        let perNode = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for (index, queue) in queues.enumerated() {
                group.addTask {
                    var popped = 0
                    while done.done.load(ordering: .relaxed) < total {
                        let item: [UInt8]
                        do {
                            item = try await queue.pop(timeout: .milliseconds(50))
                        } catch {
                            if (error as? QueueError) == .timeout { continue }
                            throw error
                        }
                        if index != 0 {
                            let elapsed = ContinuousClock.now - start
                            firstRemote.withLock { if $0 == nil { $0 = elapsed } }
                        }
                        let nanos = item.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                        let before = ContinuousClock.now
                        try await Task.sleep(for: .nanoseconds(Int64(nanos)))
                        let took = ContinuousClock.now - before
                        slept.withLock { $0 += Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18 }
                        popped += 1
                        done.done.add(1, ordering: .relaxed)
                    }
                    return (index, popped)
                }
            }
            try await queues[0].push(contentsOf: work.map { nanos in withUnsafeBytes(of: nanos.bigEndian, Array.init) })
            var counts = [Int](repeating: 0, count: count)
            for try await (index, popped) in group { counts[index] = popped }
            return counts
        }
        let makespan = ContinuousClock.now - start
        var moved = 0
        var kinds: [TransferKind: Int] = [:]
        for queue in queues {
            guard let counters = await queue.counters() else { continue }
            moved += counters.transferredIn
            kinds.merge(counters.transfersByKind, uniquingKeysWith: +)
        }
        let byKind = TransferKind.allCases.map { "\($0):\(kinds[$0] ?? 0)" }.joined(separator: " ")
        for node in nodes { await node.stop() }
        let seconds = Double(makespan.components.seconds) + Double(makespan.components.attoseconds) / 1e18
        let nominal = Double(work.reduce(0, +)) / 1e9
        let bound = max(nominal / Double(count), Double(work.max() ?? 0) / 1e9)
        // Sleeping overshoots its nominal time; the measured bound counts what sleeping really took.
        let measuredBound = max(slept.withLock { $0 } / Double(count), Double(work.max() ?? 0) / 1e9)
        let remote = firstRemote.withLock { $0 }.map { Double($0.components.seconds) * 1000 + Double($0.components.attoseconds) / 1e15 }
        let remoteMs: Double = remote ?? Double.nan
        let ratio: Double = seconds / bound
        let measuredRatio: Double = seconds / measuredBound
        let movedPerItem: Double = Double(moved) / Double(total)
        let popped: String = perNode.map(String.init).joined(separator: " ")
        var fields: [(String, Any)] = [("bench", "queue-balance"), ("strategy", strategy), ("distribution", distribution)]
        fields += [("nodes", count), ("tasks", total), ("meanTaskMs", taskMs), ("makespanSeconds", seconds)]
        fields += [("lowerBoundSeconds", bound), ("makespanOverBound", ratio), ("makespanOverMeasuredBound", measuredRatio)]
        fields += [("firstRemotePopMs", remoteMs), ("itemsMovedPerItem", movedPerItem), ("poppedPerNode", popped), ("movedByKind", byKind)]
        return jsonLine(fields)
    }
}

/// What the consumers of one balance run share.
private final class BalanceProgress: Sendable {
    let done = Atomic<Int>(0)
    let firstRemote = Box<Duration?>(nil)
    let slept = Box<Double>(0)

    final class Box<T: Sendable>: Sendable {
        let value: Mutex<T>
        init(_ value: T) { self.value = Mutex(value) }
        func withLock<R>(_ body: (inout T) -> R) -> R { value.withLock { body(&$0) } }
    }
}

/// The queue configuration with another stats interval (and the intervals derived from it).
func withStatsInterval(_ base: QueueConfiguration, _ milliseconds: Int) -> QueueConfiguration {
    var configuration = QueueConfiguration(
        strategy: base.strategy, delivery: base.delivery, maxItems: base.maxItems, maxBytes: base.maxBytes,
        maxFrameSize: base.maxFrameSize, statsInterval: UInt64(max(1, milliseconds)) * 1_000_000)
    configuration.replication = base.replication
    return configuration
}
