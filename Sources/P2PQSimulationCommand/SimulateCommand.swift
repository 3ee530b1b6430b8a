import ArgumentParser
import Foundation
import P2PQSimulation

/// `p2pq simulate` (also the `p2pq-simulate` executable, which builds without the network
/// stack): whole node machines on a simulated network (P2PQSimulation), one seed.
public struct SimulateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run N node machines on a simulated clock and network: failure detection, load balancing, remote calls or random faults.",
        discussion: """
            The nodes are the real NodeMachine (connection manager, membership, queues) on an \
            in-memory network. Node 0 is everyone's bootstrap. --scenario detect: after --warmup \
            the last node crashes; the run goes on for --duration. --scenario balance: after \
            --warmup, --items items are pushed at node 0 (--inject one) or at every node in turn \
            (--inject everywhere); one consumer per node pops them, each task taking --task-ms on \
            average; the run ends when all are done (or after --duration). --scenario calls: every \
            node executes "echo" (--max-concurrent-calls at once, each task taking --task-ms on \
            average); from --warmup on, the first --callers nodes each call it --call-rate times \
            a second for --duration; the run ends once every call returned. Prints one JSON \
            object, then a readable summary on standard error. The same seed gives the same run \
            (and trace hash). --scenario faults: the random-fault run of each of --seeds A-B (3 to \
            12 nodes, crashes, restarts, pauses, partitions, one-way cuts, link resets and stalls, \
            producers, consumers and for some seeds remote calls, all drawn from the seed; the \
            other options do not apply); prints one line per failing seed and a JSON summary, and \
            exits 1 if any seed failed. Without --seeds it replays --seed with its details.
            """
    )

    enum Scenario: String, ExpressibleByArgument, CaseIterable {
        case detect, balance, calls, faults
    }

    enum Injection: String, ExpressibleByArgument, CaseIterable {
        case one, everywhere
    }

    @Option(help: "What to measure: detect (a crash), balance (work spread to consumers) or calls (remote calls).")
    var scenario = Scenario.detect

    @Option(help: "Number of nodes.")
    var nodes = 10

    @Option(help: "The seed of every random choice.")
    var seed: UInt64 = 1

    @Option(help: "faults: the seeds to run, as A-B (both included) or one number.")
    var seeds: String?

    @Option(help: "Simulated seconds before the crash (the mesh forms).")
    var warmup: Double = 10

    @Option(help: "Simulated seconds after the crash.")
    var duration: Double = 20

    @Option(help: "One-way link latency in milliseconds (the base, with --jitter-ms).")
    var latency: Double = 1

    @Flag(help: "detect, faults (one seed): print every suspicion and death verdict (time, observer, subject) on standard error.")
    var printVerdicts = false

    @Option(help: "detect: print every action of this node until --warmup ends; balance, faults (one seed): all its actions; on standard error (a debugging aid).")
    var traceNode: Int?

    @Option(help: "Mean of an exponential jitter added to each message's latency, in milliseconds (order on a link is kept).")
    var jitterMs: Double = 0

    @Option(help: "Each node's outgoing bandwidth in megabits per second, shared by its links (default: unlimited).")
    var bandwidthMbit: Double?

    @Option(help: "balance: where the items are pushed.")
    var inject = Injection.one

    @Option(help: "balance: items pushed.")
    var items = 10_000

    @Option(help: "balance, calls: mean task duration in milliseconds (half fixed, half exponential).")
    var taskMs: Double = 10

    @Option(help: "calls: how many nodes call (the first ones).")
    var callers = 1

    @Option(help: "calls: calls per second of each caller.")
    var callRate: Double = 1000

    @Option(help: "calls: calls each node executes at once.")
    var maxConcurrentCalls = 16

    /// What one calls run measured.
    struct CallsReport: Encodable {
        var scenario = "calls"
        var nodes: Int
        var seed: UInt64
        var callers: Int
        var traceHash: String
        var made: Int
        var succeeded: Int
        var failed: [String: Int]
        var lost: Int
        var wrongResults: Int
        var duplicateExecutions: Int
        /// Calls that returned, per simulated second of calling.
        var callsPerSecond: Double
        var latencyP50Ms: Double?
        var latencyP90Ms: Double?
        var latencyP99Ms: Double?
        var latencyMaxMs: Double?
        /// Nodes that executed at least one call.
        var executors: Int
        /// Calls executed per node: fewest, most, and the mean over all nodes.
        var executedMin: Int
        var executedMax: Int
        var executedMean: Double
        var messagesPerNodePerSecond: Double
        var eventsProcessed: Int
        var wallSeconds: Double
    }

    /// What one balance run measured.
    struct BalanceReport: Encodable {
        var scenario = "balance"
        var nodes: Int
        var seed: UInt64
        var inject: String
        var items: Int
        var traceHash: String
        /// From the first push to the end of the last task.
        var makespanSeconds: Double?
        /// The total work divided by the consumers: a perfect split with free transfers.
        var lowerBoundSeconds: Double
        var makespanOverLowerBound: Double?
        /// From the first push until every node's consumer had taken an item (nil: some never did).
        var convergeSeconds: Double?
        var consumersThatWorked: Int
        var popped: Int
        var lost: Int
        var duplicates: Int
        var eventsProcessed: Int
        var wallSeconds: Double
    }

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
        /// Live nodes that declared it dead themselves.
        var verdicts: Int
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

    public init() {}

    public func validate() throws {
        guard nodes >= 2 else { throw ValidationError("--nodes must be at least 2") }
        guard nodes <= 65_536 else { throw ValidationError("--nodes must be at most 65536") }
        guard warmup > 0, duration > 0, latency > 0 else { throw ValidationError("--warmup, --duration and --latency must be positive") }
        guard jitterMs >= 0, taskMs > 0, items > 0 else { throw ValidationError("--jitter-ms must be at least 0, --task-ms and --items positive") }
        if let bandwidthMbit, !(bandwidthMbit > 0 && bandwidthMbit <= 1e6) { throw ValidationError("--bandwidth-mbit must be in (0, 1000000]") }
        if let seeds {
            guard scenario == .faults else { throw ValidationError("--seeds is for --scenario faults") }
            guard Self.seedRange(seeds) != nil else { throw ValidationError("--seeds must be A-B with A <= B, or one number") }
        }
        guard callers > 0, callRate > 0, callRate <= 1e6, maxConcurrentCalls > 0 else {
            throw ValidationError("--callers and --max-concurrent-calls must be positive, --call-rate in (0, 1000000]")
        }
    }

    public func run() throws {
        switch scenario {
        case .detect: try detect()
        case .balance: try balance()
        case .calls: try calls()
        case .faults: try faults()
        }
    }

    private func configuration() -> ClusterSimulation.Configuration {
        var configuration = ClusterSimulation.Configuration(nodes: nodes, seed: seed)
        configuration.network.latency = DelayDistribution(
            base: UInt64(latency * 1e6), jitter: jitterMs > 0 ? .exponential(mean: UInt64(jitterMs * 1e6)) : .none)
        configuration.network.egressBandwidth = bandwidthMbit.map { UInt64($0 * 1e6 / 8) }
        configuration.recordsTrace = traceNode != nil
        return configuration
    }

    private func calls() throws {
        let started = Date()
        var configuration = configuration()
        let warm = UInt64(warmup * 1e9), end = warm + UInt64(duration * 1e9)
        let half = UInt64(taskMs * 1e6 / 2)
        configuration.calls = CallWorkload(
            callers: Array(0..<min(callers, nodes)), interval: UInt64(1e9 / callRate),
            taskDuration: DelayDistribution(base: half, jitter: .exponential(mean: half)),
            maxConcurrentCalls: maxConcurrentCalls, start: warm, end: end)
        var simulation = ClusterSimulation(configuration)
        simulation.run(until: warm)
        let sentBefore = simulation.messagesSent.reduce(0, +)
        simulation.run(until: end)
        let sentAfter = simulation.messagesSent.reduce(0, +)
        // The calls made last return within their timeout; checked once, at the end.
        while simulation.now < end + 12 * simulatedSecond, simulation.callsWaiting > 0 {
            simulation.run(until: simulation.now + simulatedSecond / 10)
        }
        let report = simulation.checkCalls(faultFree: true)
        let ms = { (ns: UInt64?) in ns.map { Double($0) / 1e6 } }
        let executed = simulation.machines.map { $0.executor.counters.executed }
        let result = CallsReport(
            nodes: nodes, seed: seed, callers: min(callers, nodes), traceHash: simulation.traceHash.description,
            made: report.made, succeeded: report.succeeded, failed: report.failed, lost: report.lost,
            wrongResults: report.wrongResults, duplicateExecutions: report.duplicateExecutions,
            callsPerSecond: Double(report.succeeded) / duration,
            latencyP50Ms: ms(report.latency(at: 0.5)), latencyP90Ms: ms(report.latency(at: 0.9)),
            latencyP99Ms: ms(report.latency(at: 0.99)), latencyMaxMs: ms(report.latencies.last),
            executors: executed.filter { $0 > 0 }.count,
            executedMin: executed.min() ?? 0, executedMax: executed.max() ?? 0,
            executedMean: Double(executed.reduce(0, +)) / Double(max(1, nodes)),
            messagesPerNodePerSecond: Double(sentAfter - sentBefore) / Double(nodes) / duration,
            eventsProcessed: simulation.eventsProcessed, wallSeconds: Date().timeIntervalSince(started))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(result), as: UTF8.self))
        let format = { (value: Double?) in value.map { String(format: "%.1f ms", $0) } ?? "-" }
        let summary = """
            \(nodes) nodes, seed \(seed), \(result.callers) callers at \(callRate) calls/s each: \(report.made) made, \
            \(report.succeeded) returned (\(String(format: "%.0f", result.callsPerSecond)) calls/s), \
            \(report.failed.values.reduce(0, +)) failed, \(report.lost) lost, \(report.duplicateExecutions) run twice; \
            latency p50 \(format(result.latencyP50Ms)), p99 \(format(result.latencyP99Ms)); ran on \(result.executors) nodes \
            (\(result.executedMin) to \(result.executedMax) calls each, mean \(String(format: "%.0f", result.executedMean))); \
            \(String(format: "%.1f", result.messagesPerNodePerSecond)) messages per node per second; \
            \(String(format: "%.1f", result.wallSeconds)) s wall; trace \(result.traceHash)

            """
        FileHandle.standardError.write(Data(summary.utf8))
        for failure in simulation.failures { FileHandle.standardError.write(Data("failure: \(failure)\n".utf8)) }
    }

    private func balance() throws {
        let started = Date()
        var simulation = ClusterSimulation(configuration())
        let warm = UInt64(warmup * 1e9), end = warm + UInt64(duration * 1e9)
        simulation.run(until: warm)
        let half = UInt64(taskMs * 1e6 / 2)
        for n in 0..<nodes {
            simulation.add(Consumer(node: n, taskDuration: DelayDistribution(base: half, jitter: .exponential(mean: half))))
        }
        simulation.add(Producer(inject == .one ? .node(0) : .spread, items: items, batch: inject == .one ? 100 : 10, interval: 0))
        while simulation.now < end {
            simulation.run(until: min(end, simulation.now + simulatedSecond / 10))
            let ledger = simulation.ledger
            // Every item acknowledged (a push waits for its replica's ack) and popped, every task over.
            if simulation.producersDone, ledger.acknowledged.count >= items, ledger.pops.count >= items,
               simulation.now >= ledger.lastTaskEnd { break }
        }
        let report = simulation.checkDeliveries(faultFree: true)
        let ledger = simulation.ledger
        let done = report.popped >= items && simulation.now >= ledger.lastTaskEnd
        let makespan = done ? Double(ledger.lastTaskEnd - warm) / 1e9 : nil
        let lowerBound = Double(ledger.totalWork) / Double(nodes) / 1e9
        let converge = ledger.firstTaskAt.count == nodes ? ledger.firstTaskAt.values.max().map { Double($0 - warm) / 1e9 } : nil
        let result = BalanceReport(
            nodes: nodes, seed: seed, inject: inject.rawValue, items: items, traceHash: simulation.traceHash.description,
            makespanSeconds: makespan, lowerBoundSeconds: lowerBound, makespanOverLowerBound: makespan.map { $0 / lowerBound },
            convergeSeconds: converge, consumersThatWorked: ledger.firstTaskAt.count, popped: report.popped, lost: report.lost,
            duplicates: report.duplicates, eventsProcessed: simulation.eventsProcessed, wallSeconds: Date().timeIntervalSince(started))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(result), as: UTF8.self))
        let format = { (value: Double?) in value.map { String(format: "%.2f s", $0) } ?? "never" }
        let summary = """
            \(nodes) nodes, seed \(seed), \(items) items injected at \(inject == .one ? "node 0" : "every node"): \
            makespan \(format(makespan)) over a lower bound of \(format(lowerBound)) \
            (\(result.makespanOverLowerBound.map { String(format: "%.2f", $0) } ?? "-")x); every consumer busy after \
            \(format(converge)) (\(ledger.firstTaskAt.count) of \(nodes) worked); \(report.popped) popped, \(report.lost) lost, \
            \(report.duplicates) duplicates; \(String(format: "%.1f", result.wallSeconds)) s wall; trace \(result.traceHash)

            """
        FileHandle.standardError.write(Data(summary.utf8))
        for failure in simulation.failures { FileHandle.standardError.write(Data("failure: \(failure)\n".utf8)) }
        if let traceNode {
            for entry in simulation.trace where entry.node == traceNode {
                FileHandle.standardError.write(Data(String(format: "%.4f s: %@\n", Double(entry.time) / 1e9, "\(entry.action)").utf8))
            }
        }
    }

    private func detect() throws {
        let started = Date()
        var simulation = ClusterSimulation(configuration())
        let second = simulatedSecond
        let warm = UInt64(warmup * 1e9)
        simulation.run(until: warm / 2)
        let sentBefore = simulation.messagesSent.reduce(0, +)
        simulation.run(until: warm)
        let sentAfter = simulation.messagesSent.reduce(0, +)
        let victim = nodes - 1
        let crashAt = simulation.now
        simulation.crash(victim)
        let live = (0..<nodes).filter { $0 != victim }
        // When each live node first holds the crashed one dead, by its own verdict or by
        // gossip (a member first heard of as dead raises no verdict), read every 10 ms; a
        // verdict's own time is exact.
        var heldDeadAt: [Int: UInt64] = [:]
        let end = warm + UInt64(duration * 1e9)
        while simulation.now < end {
            simulation.run(until: min(end, simulation.now + second / 100))
            for node in live where heldDeadAt[node] == nil
                && simulation.machines[node].membership.state(of: ClusterSimulation.peer(victim)) == .dead {
                heldDeadAt[node] = simulation.now
            }
        }

        if printVerdicts {
            for verdict in simulation.verdicts {
                let line = String(format: "%.3f s: node %d %@ node %d\n", Double(verdict.time) / 1e9, verdict.observer,
                                  verdict.dead ? "declares dead" : "suspects", verdict.subject)
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        if let traceNode {
            for entry in simulation.trace where entry.node == traceNode && entry.time <= warm {
                FileHandle.standardError.write(Data(String(format: "%.4f s: %@\n", Double(entry.time) / 1e9, "\(entry.action)").utf8))
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
            fullDisseminationSeconds: heldDeadAt.count == live.count
                ? live.map { min(heldDeadAt[$0] ?? .max, firstDead[$0] ?? .max) }.max().map(seconds) : nil,
            verdicts: firstDead.count,
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
            \(format(report.fullDisseminationSeconds)) (\(holding) hold it dead, \(report.verdicts) by a verdict of their own); \(falsePositives) false verdicts, \
            \(falseSuspicions) false suspicions; \(String(format: "%.1f", report.messagesPerNodePerSecond)) messages \
            per node per second, \(String(format: "%.1f", report.meanLinksPerNode)) links per node; \
            \(String(format: "%.1f", wall)) s wall (\(String(format: "%.1f", report.wallMicrosecondsPerNodeSecond)) µs \
            per node-second), \(String(format: "%.0f", report.maxResidentMegabytes)) MB peak; trace \(report.traceHash)

            """
        FileHandle.standardError.write(Data(summary.utf8))
    }
}
