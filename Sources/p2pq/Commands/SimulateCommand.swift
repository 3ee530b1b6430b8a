import ArgumentParser
import Foundation
import P2PQSimulation

/// `p2pq simulate`: whole node machines on a simulated network (P2PQSimulation), one seed.
struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run N node machines on a simulated clock and network, crash one, and measure failure detection.",
        discussion: """
            The nodes are the real NodeMachine (connection manager, membership, queues) on an \
            in-memory network with one latency. Node 0 is everyone's bootstrap. After --warmup \
            the last node crashes; the run goes on for --duration. Prints one JSON object, then \
            a readable summary on standard error. The same seed gives the same run (and trace hash).
            """
    )

    @Option(help: "Number of nodes.")
    var nodes = 10

    @Option(help: "The seed of every random choice.")
    var seed: UInt64 = 1

    @Option(help: "Simulated seconds before the crash (the mesh forms).")
    var warmup: Double = 10

    @Option(help: "Simulated seconds after the crash.")
    var duration: Double = 20

    @Option(help: "One-way link latency in milliseconds.")
    var latency: Double = 1

    @Flag(help: "Print every suspicion and death verdict (time, observer, subject) on standard error.")
    var printVerdicts = false

    @Option(help: "Print every action of this node until --warmup ends, on standard error (a debugging aid).")
    var traceNode: Int?

    /// What one run measured.
    struct Report: Encodable {
        var scenario = "crash"
        var nodes: Int
        var seed: UInt64
        var traceHash: String
        /// Seconds from the crash to the first death verdict about the crashed node.
        var firstDetectionSeconds: Double?
        /// Seconds from the crash until every live node holds it dead (nil: not all do).
        var fullDisseminationSeconds: Double?
        var liveNodesHoldingItDead: Int
        /// Death verdicts about nodes that never failed.
        var falsePositives: Int
        /// Suspicions about nodes that never failed.
        var falseSuspicions: Int
        /// Messages each node sent per simulated second, over the warm-up's second half.
        var messagesPerNodePerSecond: Double
        var meanLinksPerNode: Double
        var eventsProcessed: Int
        var wallSeconds: Double
        /// Wall time per simulated node-second, in microseconds.
        var wallMicrosecondsPerNodeSecond: Double
        var maxResidentMegabytes: Double
    }

    func validate() throws {
        guard nodes >= 2 else { throw ValidationError("--nodes must be at least 2") }
        guard nodes <= 65_536 else { throw ValidationError("--nodes must be at most 65536") }
        guard warmup > 0, duration > 0, latency > 0 else { throw ValidationError("--warmup, --duration and --latency must be positive") }
    }

    func run() throws {
        let started = Date()
        var configuration = ClusterSimulation.Configuration(nodes: nodes, seed: seed)
        configuration.latency = UInt64(latency * 1e6)
        configuration.recordsTrace = traceNode != nil
        var simulation = ClusterSimulation(configuration)
        let second = simulatedSecond
        let warm = UInt64(warmup * 1e9)
        simulation.run(until: warm / 2)
        let sentBefore = simulation.messagesSent.reduce(0, +)
        simulation.run(until: warm)
        let sentAfter = simulation.messagesSent.reduce(0, +)
        let victim = nodes - 1
        let crashAt = simulation.now
        simulation.crash(victim)
        simulation.run(until: warm + UInt64(duration * 1e9))

        let live = (0..<nodes).filter { $0 != victim }
        if let traceNode {
            for entry in simulation.trace where entry.node == traceNode && entry.time <= warm {
                FileHandle.standardError.write(Data(String(format: "%.4f s: %@\n", Double(entry.time) / 1e9, "\(entry.action)").utf8))
            }
        }
        if printVerdicts {
            for verdict in simulation.verdicts {
                let line = String(format: "%.3f s: node %d %@ node %d\n", Double(verdict.time) / 1e9, verdict.observer,
                                  verdict.dead ? "declares dead" : "suspects", verdict.subject)
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        var firstDead: [Int: UInt64] = [:]
        var falsePositives = 0, falseSuspicions = 0
        for verdict in simulation.verdicts {
            if verdict.subject == victim && verdict.time >= crashAt {
                if verdict.dead, firstDead[verdict.observer] == nil { firstDead[verdict.observer] = verdict.time }
            } else if verdict.dead {
                falsePositives += 1
            } else {
                falseSuspicions += 1
            }
        }
        let holding = live.filter { simulation.machines[$0].membership.state(of: ClusterSimulation.peer(victim)) == .dead }.count
        let seconds = { (t: UInt64) in Double(t - crashAt) / Double(second) }
        let wall = Date().timeIntervalSince(started)
        let simulated = Double(simulation.now) / Double(second)
        let links = live.reduce(0) { $0 + simulation.machines[$1].connections.linkedPeers.count }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let report = Report(
            nodes: nodes, seed: seed, traceHash: simulation.traceHash.description,
            firstDetectionSeconds: firstDead.values.min().map(seconds),
            fullDisseminationSeconds: firstDead.count == live.count ? firstDead.values.max().map(seconds) : nil,
            liveNodesHoldingItDead: holding, falsePositives: falsePositives, falseSuspicions: falseSuspicions,
            messagesPerNodePerSecond: Double(sentAfter - sentBefore) / Double(nodes) / (warmup / 2),
            meanLinksPerNode: Double(links) / Double(live.count),
            eventsProcessed: simulation.eventsProcessed, wallSeconds: wall,
            wallMicrosecondsPerNodeSecond: wall * 1e6 / (Double(nodes) * simulated),
            maxResidentMegabytes: Double(usage.ru_maxrss) / 1024)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
        let format = { (value: Double?) in value.map { String(format: "%.2f s", $0) } ?? "never" }
        let summary = """
            \(nodes) nodes, seed \(seed): node \(victim) crashed at \(String(format: "%.1f", Double(crashAt) / 1e9)) s; \
            first detected after \(format(report.firstDetectionSeconds)), by all \(live.count) live nodes after \
            \(format(report.fullDisseminationSeconds)) (\(holding) hold it dead); \(falsePositives) false verdicts, \
            \(falseSuspicions) false suspicions; \(String(format: "%.1f", report.messagesPerNodePerSecond)) messages \
            per node per second, \(String(format: "%.1f", report.meanLinksPerNode)) links per node; \
            \(String(format: "%.1f", wall)) s wall (\(String(format: "%.1f", report.wallMicrosecondsPerNodeSecond)) µs \
            per node-second), \(String(format: "%.0f", report.maxResidentMegabytes)) MB peak; trace \(report.traceHash)

            """
        FileHandle.standardError.write(Data(summary.utf8))
    }
}
