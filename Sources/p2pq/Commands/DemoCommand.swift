import ArgumentParser
import Foundation
import P2PQNode

/// `p2pq demo`: the main job. A local cluster of separate `p2pq node` processes runs Monte
/// Carlo pi as remote calls, then the queue example (integers pushed at this process's node, a
/// pure producer, popped by the cluster's consumers), then prints what each node did.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a local cluster (4 node processes on loopback), run Monte Carlo pi and the queue example across it, and show what each node did."
    )

    @Option(help: "Node processes of the local cluster.")
    var nodes: Int = 4

    @Option(help: "Monte Carlo simulations (remote calls).")
    var simulations: Int = 400

    @Option(help: "Random points per simulation.")
    var samples: Int = 200_000

    @Option(help: "Integers pushed onto the queue.")
    var items: Int = 4_000

    @Option(help: "Milliseconds of pretend work per queue item on the consuming nodes.")
    var workMs: Int = 2

    @Flag(help: "Stop the cluster and exit once the demo has run (for scripts); without it the cluster stays up for the dashboard until Ctrl-C.")
    var exit = false

    func validate() throws {
        guard (1...16).contains(nodes) else { throw ValidationError("--nodes must be 1...16") }
        guard (1...1_000_000).contains(simulations) else { throw ValidationError("--simulations must be 1...1000000") }
        guard (1...100_000_000).contains(samples) else { throw ValidationError("--samples must be 1...100000000") }
        guard (0...10_000_000).contains(items) else { throw ValidationError("--items must be 0...10000000") }
        guard (0...1000).contains(workMs) else { throw ValidationError("--work-ms must be 0...1000") }
    }

    func run() async throws {
        let options = try ClusterOptions.parse(["--nodes", "\(nodes)"])
        print("starting \(nodes) nodes on loopback ...")
        let session = try await ExampleSession.start(options, extraArguments: ["--consume", "demo", "--consume-work-ms", "\(workMs)", "--dashboard-pull"])
        guard let cluster = session.cluster else { return }
        for (index, member) in cluster.nodes.enumerated() {
            print("  node \(index + 1): \(member.peerID.prefix(16)) on \(member.listenAddress)  (\(member.operationsURL))")
        }
        // The endpoints take the token derived from the demo's temporary cluster key.
        print("  while it runs: p2pq status --token-file \(cluster.keyFile) <address>")
        // Node 1's dashboard; the token in the address is exchanged for a cookie at once.
        print("  dashboard: \(cluster.nodes[0].operationsURL)/?token=\(cluster.nodes[0].token)")

        // 1. Monte Carlo pi, as remote calls that run wherever there is capacity.
        print("\n== Monte Carlo pi: \(simulations) simulations of \(samples) points as remote calls")
        let pi = await PiRun.run(session: session, simulations: simulations, samples: samples, inFlight: 64)
        print(pi.summary)
        if let firstError = pi.firstError { print("\(pi.failures) calls failed; first: \(firstError)") }

        // 2. The queue example: this node only pushes; the cluster's consumers pop.
        print("\n== Queue: \(items) integers pushed at this node, popped by the cluster (\(workMs) ms of work each)")
        let before = await Self.popped(cluster.nodes)
        let clock = ContinuousClock()
        let started = clock.now
        let queue = session.node.queue(named: "demo")
        var batch: [[UInt8]] = []
        for value in 0..<items {
            batch.append(withUnsafeBytes(of: UInt64(value).littleEndian, Array.init))
            if batch.count == 1000 || value == items - 1 {
                try await queue.push(contentsOf: batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        let progress = Progress(label: "queue", total: items)
        let deadline = clock.now + .seconds(120)
        var done = 0
        while done < items && clock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
            done = await Self.popped(cluster.nodes) - before
            progress.show(done, elapsed: clock.now - started)
        }
        progress.end()
        print("\(done) of \(items) items popped in \((clock.now - started).formatted(.units(allowed: [.seconds, .milliseconds])))")

        print("\n== What each node did")
        var rows: [[String]] = []
        for (index, member) in cluster.nodes.enumerated() {
            let status = await LocalCluster.status(of: member)
            let counters = status?.counters ?? [:]
            let bytesIn = status?.peers.compactMap(\.bytesIn).reduce(0, +) ?? 0
            let bytesOut = status?.peers.compactMap(\.bytesOut).reduce(0, +) ?? 0
            rows.append([
                "\(index + 1)", String(member.peerID.prefix(16)),
                "\(counters["p2pq_calls_executed_total"] ?? 0)", "\(counters["p2pq_items_popped_total"] ?? 0)",
                "\(counters["p2pq_items_transferred_total"] ?? 0)", Self.bytes(bytesIn), Self.bytes(bytesOut),
            ])
        }
        print(table(["node", "peer", "calls executed", "items popped", "items moved", "bytes in", "bytes out"], rows))
        if !exit {
            print("\nThe cluster stays up for the dashboard: \(cluster.nodes[0].operationsURL)/?token=\(cluster.nodes[0].token)")
            print("Ctrl-C stops it (--exit stops at once).")
            fflush(nil)
            await Self.waitForInterrupt()
        }
        await session.stop()
        if pi.failures > 0 || done < items {
            throw CLIError(.failed, "the demo did not finish: \(pi.failures) calls failed, \(done) of \(items) items popped")
        }
    }

    /// Returns on SIGINT or SIGTERM (taken from the default handlers, so the cluster is
    /// stopped in order).
    static func waitForInterrupt() async {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let (signals, report) = AsyncStream.makeStream(of: Int32.self)
        let sources = [SIGINT, SIGTERM].map { signo in
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { report.yield(signo) }
            source.resume()
            return source
        }
        for await _ in signals { break }
        sources.forEach { $0.cancel() }
    }

    /// Items popped so far on the cluster's nodes (from their `/status`).
    static func popped(_ members: [LocalCluster.Member]) async -> Int {
        var total = 0
        for member in members { total += await LocalCluster.status(of: member)?.counters["p2pq_items_popped_total"] ?? 0 }
        return total
    }

    static func bytes(_ count: Int) -> String {
        count >= 1 << 20 ? String(format: "%.1f MiB", Double(count) / 1048576)
            : count >= 1 << 10 ? String(format: "%.1f KiB", Double(count) / 1024) : "\(count) B"
    }
}
