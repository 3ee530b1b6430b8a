import ArgumentParser
import Foundation
import Glibc
import Logging
import P2PQLink
import P2PQNode
import P2PQRemoteCall
import P2PQWire
import Synchronization

/// Arguments of the `fib` example function: the sleep makes the spread over nodes visible.
struct FibArguments: Codable, Sendable, Hashable {
    var n: Int
    var sleepMilliseconds: Int
}

/// Arguments of the `pi-sim` example function: one Monte Carlo simulation.
struct PiArguments: Codable, Sendable, Hashable {
    var seed: UInt64
    var samples: Int
}

/// The functions every example node registers (`p2pq node --serve-examples`).
enum ExampleFunctions {
    static func register(on rpc: RemoteCall) {
        rpc.registerRaw("echo") { $0 }
        rpc.registerRawInline("echo-inline") { $0 }
        rpc.registerRawSync("echo-sync") { $0 }
        let fib = rpc.function("fib", memoize: true, arguments: FibArguments.self, result: Int.self)
        rpc.register("fib", memoize: true) { (arguments: FibArguments) async throws -> Int in
            if arguments.sleepMilliseconds > 0 { try await Task.sleep(for: .milliseconds(arguments.sleepMilliseconds)) }
            if arguments.n < 2 { return arguments.n }
            var smaller = arguments
            smaller.n -= 1
            var smallest = arguments
            smallest.n -= 2
            // Both halves at once; the task gives its slot up while it waits.
            async let a = fib(smaller)
            async let b = fib(smallest)
            let (x, y) = try await (a, b)
            return x &+ y
        }
        rpc.register("pi-sim") { (arguments: PiArguments) async throws -> Int in
            var random = SplitMix64(seed: arguments.seed &+ 0x9E37_79B9_7F4A_7C15)
            func next() -> UInt64 { random.next() }
            var inside = 0
            for _ in 0..<max(0, arguments.samples) {
                let x = Double(next() >> 11) * 0x1p-53
                let y = Double(next() >> 11) * 0x1p-53
                if x * x + y * y <= 1 { inside += 1 }
            }
            return inside
        }
        rpc.register("sleep-then-answer") { (milliseconds: Int) async throws -> Int in
            try await Task.sleep(for: .milliseconds(milliseconds))
            return milliseconds + 1
        }
    }
}

/// Options shared by the remote-call examples.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Nodes of the local cluster (separate `p2pq node` processes on loopback).")
    var nodes: Int = 4

    @Option(help: "Use nodes already running instead (host:port of one; they must run `p2pq node --serve-examples`).")
    var join: String?

    @Option(help: "Cluster key file of the nodes given with --join.")
    var keyFile: String?

    @Option(help: "Calls each node runs at once.")
    var maxConcurrentCalls: Int = 4
}

/// A submitting node in this process, joined to a local cluster or to running nodes.
struct ExampleSession {
    let node: Node
    let rpc: RemoteCall
    let cluster: LocalCluster?

    static func start(_ options: ClusterOptions, extraArguments: [String] = []) async throws -> ExampleSession {
        guard options.nodes >= 1, options.nodes <= 64 else { throw ValidationError("--nodes must be 1...64") }
        var cluster: LocalCluster?
        var bootstrap: String
        var key: ClusterKey?
        if let join = options.join {
            bootstrap = join
            if let path = options.keyFile {
                do { key = try ClusterKey.load(path: path) } catch { throw CLIError(.keyRefused, "--key-file: \(error)") }
            }
        } else {
            let started = try await LocalCluster.start(
                nodes: options.nodes,
                extraArguments: ["--serve-examples", "--max-concurrent-calls", "\(options.maxConcurrentCalls)"] + extraArguments)
            cluster = started
            bootstrap = started.nodes[0].listenAddress
            key = started.key
        }
        var configuration = loopbackNodeConfiguration(bootstrap: [bootstrap], label: "p2pq")
        configuration.clusterKey = key
        let node = try Node(configuration: configuration)
        try await node.start()
        do { try await waitForMesh([node], peers: cluster?.nodes.count ?? 1, timeout: .seconds(15)) } catch {
            cluster?.stop()
            throw CLIError(.unreachable, "the cluster did not form within 15 s")
        }
        // A moment for the queue gossip to learn which peers wait for calls.
        try await Task.sleep(for: .milliseconds(300))
        let rpc = try await RemoteCall(node: node, maxConcurrentCalls: options.maxConcurrentCalls)
        ExampleFunctions.register(on: rpc)  // handles only: this node never processes
        return ExampleSession(node: node, rpc: rpc, cluster: cluster)
    }

    /// The per-node table of calls executed (from each child's `/status`).
    func printTable() async {
        guard let cluster else {
            print("(nodes joined with --join: see `p2pq status` of each for p2pq_calls_executed_total)")
            return
        }
        var rows: [[String]] = []
        for (index, member) in cluster.nodes.enumerated() {
            let status = await LocalCluster.status(of: member)
            let executed = status?.counters["p2pq_calls_executed_total"].map(String.init) ?? "?"
            rows.append(["\(index + 1)", String(member.peerID.prefix(16)), member.listenAddress, executed])
        }
        print(table(["node", "peer", "address", "calls executed"], rows))
    }

    /// Calls executed so far over these nodes.
    static func executedSoFar(_ members: [LocalCluster.Member]) async -> Int {
        var total = 0
        for member in members { total += await LocalCluster.status(of: member)?.counters["p2pq_calls_executed_total"] ?? 0 }
        return total
    }

    func stop() async {
        await node.stop()
        cluster?.stop()
    }
}

/// A progress line: a bar when stdout is a terminal, plain lines otherwise.
final class Progress: Sendable {
    private let total: Int?
    private let label: String
    private let terminal = isatty(1) == 1
    private let lastPlain = Mutex<Int>(-1)

    init(label: String, total: Int?) {
        self.label = label
        self.total = total
    }

    func show(_ done: Int, elapsed: Duration) {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        if let total, total > 0 {
            let fraction = min(1, Double(done) / Double(total))
            if terminal {
                let width = 30
                let filled = Int(fraction * Double(width))
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                print("\r\(label) [\(bar)] \(Int(fraction * 100))% \(done)/\(total) \(String(format: "%.1fs", seconds))", terminator: "")
            } else {
                let decile = Int(fraction * 10)
                let report = lastPlain.withLock { last -> Bool in
                    guard decile > last else { return false }
                    last = decile
                    return true
                }
                if report { print("\(label): \(done)/\(total) (\(decile * 10)%) after \(String(format: "%.1fs", seconds))") }
            }
        } else if terminal {
            print("\r\(label): \(done) calls executed, \(String(format: "%.1fs", seconds))", terminator: "")
        }
        fflush(nil)
    }

    func end() {
        if terminal {
            print("")
            fflush(nil)
        }
    }
}

/// `p2pq fib N`: memoized recursive Fibonacci as remote calls.
struct FibCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fib",
        abstract: "Memoized recursive Fibonacci as remote calls over a local cluster; prints the result and a per-node table."
    )

    @Argument(help: "Which Fibonacci number (0...92).")
    var n: Int

    @Option(help: "Sleep in every call (ms), so that the spread over nodes is visible.")
    var sleepMs: Int = 0

    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        guard (0...92).contains(n) else { throw ValidationError("N must be 0...92 (larger overflow Int)") }
        guard sleepMs >= 0 else { throw ValidationError("--sleep-ms must not be negative") }
        let session = try await ExampleSession.start(cluster)
        let fib = session.rpc.function("fib", memoize: true, arguments: FibArguments.self, result: Int.self)
        let clock = ContinuousClock()
        let started = clock.now
        let progress = Progress(label: "fib(\(n))", total: nil)
        let members = session.cluster?.nodes ?? []
        let watcher = Task {
            while !Task.isCancelled && !members.isEmpty {
                progress.show(await ExampleSession.executedSoFar(members), elapsed: clock.now - started)
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        let outcome: Result<Int, RemoteCallError>
        do throws(RemoteCallError) {
            outcome = .success(try await fib(FibArguments(n: n, sleepMilliseconds: sleepMs)))
        } catch {
            outcome = .failure(error)
        }
        watcher.cancel()
        _ = await watcher.value
        progress.end()
        let elapsed = clock.now - started
        switch outcome {
        case .success(let value):
            print("fib(\(n)) = \(value)  (\(elapsed.formatted(.units(allowed: [.seconds, .milliseconds]))))")
        case .failure(let error):
            print("fib(\(n)) failed: \(error)")
        }
        await session.printTable()
        await session.stop()
        if case .failure(let error) = outcome { throw CLIError(.failed, "fib(\(n)) failed: \(error)") }
    }
}

/// `p2pq pi N`: N Monte Carlo simulations as remote calls.
struct PiCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pi",
        abstract: "Estimate pi with N Monte Carlo simulations run as remote calls over a local cluster."
    )

    @Argument(help: "Number of simulations (remote calls).")
    var n: Int

    @Option(help: "Random points per simulation.")
    var samples: Int = 100_000

    @Option(help: "Calls in flight at once.")
    var inFlight: Int = 256

    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        guard n >= 1 else { throw ValidationError("N must be at least 1") }
        guard samples >= 1, samples <= 100_000_000 else { throw ValidationError("--samples must be 1...100000000") }
        guard inFlight >= 1 else { throw ValidationError("--in-flight must be at least 1") }
        let session = try await ExampleSession.start(cluster)
        let run = await PiRun.run(session: session, simulations: n, samples: samples, inFlight: inFlight)
        print(run.summary)
        if let firstError = run.firstError { print("\(run.failures) calls failed; first: \(firstError)") }
        await session.printTable()
        await session.stop()
        if run.failures > 0 { throw CLIError(.failed, "\(run.failures) of the calls failed") }
    }
}

/// One Monte Carlo pi run as remote calls (shared by `p2pq pi` and `p2pq demo`).
struct PiRun {
    var estimate: Double
    var simulations: Int
    var samples: Int
    var failures: Int
    var firstError: RemoteCallError?
    var elapsed: Duration

    var summary: String {
        "pi ≈ \(estimate)  error \(String(format: "%+.3e", estimate - Double.pi))  \(simulations) simulations of "
            + "\(samples) points in \(elapsed.formatted(.units(allowed: [.seconds, .milliseconds])))"
    }

    static func run(session: ExampleSession, simulations n: Int, samples: Int, inFlight: Int) async -> PiRun {
        let sim = session.rpc.function("pi-sim", arguments: PiArguments.self, result: Int.self)
        let clock = ContinuousClock()
        let started = clock.now
        let progress = Progress(label: "pi", total: n)
        let total = n
        let (inside, failures, firstError) = await withTaskGroup(of: Result<Int, RemoteCallError>.self) { group in
            var next = 0
            var inside = 0
            var done = 0
            var failures = 0
            var firstError: RemoteCallError?
            func add() {
                let seed = UInt64(next)
                next += 1
                group.addTask {
                    do throws(RemoteCallError) {
                        return .success(try await sim(PiArguments(seed: seed, samples: samples)))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            while next < min(total, inFlight) { add() }
            for await result in group {
                done += 1
                switch result {
                case .success(let count): inside += count
                case .failure(let error):
                    failures += 1
                    if firstError == nil { firstError = error }
                }
                if done % max(1, total / 200) == 0 || done == total { progress.show(done, elapsed: clock.now - started) }
                if next < total { add() }
            }
            return (inside, failures, firstError)
        }
        progress.end()
        let points = Double(n - failures) * Double(samples)
        return PiRun(estimate: points > 0 ? 4 * Double(inside) / points : .nan, simulations: n, samples: samples,
                     failures: failures, firstError: firstError, elapsed: clock.now - started)
    }
}
