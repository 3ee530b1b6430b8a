import ArgumentParser
import Foundation
import P2PQSimulation

/// `p2pq simulate --scenario faults`: the random-fault run (``FaultRun``) of a range of seeds,
/// or of one seed with its details.
extension SimulateCommand {
    /// One seed's run.
    struct FaultsReport: Encodable {
        var scenario = "faults"
        var seed: UInt64
        var nodes: Int
        var slow: Bool
        var calls: Bool
        var traceHash: String
        var passed: Bool
        var failures: [String]
        var acknowledged: Int
        var unacknowledged: Int
        var popped: Int
        var duplicates: Int
        var lost: Int
        var lostBothHoldersDied: Int
        var lostUnreplicated: Int
        var callsMade: Int?
        var callsSucceeded: Int?
        var callsFailed: Int?
        var callsLost: Int?
        var wallSeconds: Double
    }

    /// A range of seeds.
    struct FaultsSweepReport: Encodable {
        var scenario = "faults"
        var firstSeed: UInt64
        var lastSeed: UInt64
        var seedsRun: Int
        var failed: Int
        var failingSeeds: [UInt64]
        var wallSeconds: Double
        var meanSecondsPerSeed: Double
        var maxSecondsPerSeed: Double
    }

    /// `A-B` (both included, A <= B) or one number.
    static func seedRange(_ text: String) -> ClosedRange<UInt64>? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count <= 2, let first = UInt64(parts[0]), let last = UInt64(parts.last ?? parts[0]), first <= last else { return nil }
        return first...last
    }

    private static func shape(_ run: FaultRun) -> String {
        "\(run.nodes) nodes, \(run.slow ? "slow" : "fast") workload\(run.calls ? ", calls" : "")"
    }

    func faults() throws {
        guard let text = seeds, let range = Self.seedRange(text) else { return try replayFaults(seed) }
        let started = Date()
        var failing: [UInt64] = []
        var longest = 0.0
        for seed in range {
            let began = Date()
            let outcome = FaultRun.drawn(seed: seed).runAndCheck()
            longest = max(longest, Date().timeIntervalSince(began))
            guard let first = outcome.failures.first else { continue }
            failing.append(seed)
            let line = "FAIL seed \(seed) (\(Self.shape(outcome.run))): trace hash \(outcome.traceHash), "
                + "\(outcome.failures.count) failures, the first at \(Double(first.time) / 1e9) s: \(first.kind): \(first.detail)\n"
            FileHandle.standardError.write(Data(line.utf8))
        }
        let wall = Date().timeIntervalSince(started)
        let count = range.count
        let report = FaultsSweepReport(firstSeed: range.lowerBound, lastSeed: range.upperBound, seedsRun: count,
                                       failed: failing.count, failingSeeds: failing, wallSeconds: wall,
                                       meanSecondsPerSeed: wall / Double(count), maxSecondsPerSeed: longest)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
        let summary = """
            faults, seeds \(range.lowerBound)-\(range.upperBound): \(count) run, \(failing.count) failed\
            \(failing.isEmpty ? "" : " (\(failing.map(String.init).joined(separator: ", ")))"); \
            \(String(format: "%.1f", wall)) s wall, \(String(format: "%.3f", report.meanSecondsPerSeed)) s per seed on average \
            (\(String(format: "%.3f", longest)) s at most)

            """
        FileHandle.standardError.write(Data(summary.utf8))
        if !failing.isEmpty { throw ExitCode(1) }
    }

    /// Runs one seed and prints its report, its verdicts if asked, and every failure.
    private func replayFaults(_ seed: UInt64) throws {
        let started = Date()
        var run = FaultRun.drawn(seed: seed)
        run.recordsTrace = traceNode != nil
        var simulation = run.run()
        let outcome = run.check(&simulation)
        let deliveries = outcome.deliveries
        let report = FaultsReport(
            seed: seed, nodes: run.nodes, slow: run.slow, calls: run.calls, traceHash: outcome.traceHash.description,
            passed: outcome.passed, failures: outcome.failures.map(\.description),
            acknowledged: deliveries.acknowledged, unacknowledged: deliveries.unacknowledged, popped: deliveries.popped,
            duplicates: deliveries.duplicates, lost: deliveries.lost, lostBothHoldersDied: deliveries.lostBothHoldersDied,
            lostUnreplicated: deliveries.lostUnreplicated,
            callsMade: outcome.calls?.made, callsSucceeded: outcome.calls?.succeeded,
            callsFailed: outcome.calls.map { $0.failed.values.reduce(0, +) }, callsLost: outcome.calls?.lost,
            wallSeconds: Date().timeIntervalSince(started))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
        if printVerdicts {
            for verdict in simulation.verdicts {
                let line = String(format: "%.3f s: node %d %@ node %d\n", Double(verdict.time) / 1e9, verdict.observer,
                                  verdict.dead ? "declares dead" : "suspects", verdict.subject)
                FileHandle.standardError.write(Data(line.utf8))
            }
        }
        if let traceNode {
            for entry in simulation.trace where entry.node == traceNode {
                FileHandle.standardError.write(Data(String(format: "%.4f s: %@\n", Double(entry.time) / 1e9, "\(entry.action)").utf8))
            }
        }
        let summary = """
            faults, seed \(seed) (\(Self.shape(run))): \(deliveries.acknowledged) items acknowledged, \(deliveries.popped) popped, \
            \(deliveries.lost) lost (\(deliveries.lostBothHoldersDied) more with both holders dead, \
            \(deliveries.lostUnreplicated) acknowledged alone, unreplicated, with their owner dead), \
            \(deliveries.duplicates) duplicates\
            \(outcome.calls.map { "; \($0.made) calls made, \($0.succeeded) returned, \($0.lost) lost" } ?? ""); \
            \(outcome.passed ? "passed" : "\(outcome.failures.count) failures"); \
            \(String(format: "%.2f", report.wallSeconds)) s wall; trace \(outcome.traceHash)

            """
        FileHandle.standardError.write(Data(summary.utf8))
        for failure in outcome.failures { FileHandle.standardError.write(Data("failure: \(failure)\n".utf8)) }
        if !outcome.passed { throw ExitCode(1) }
    }
}
