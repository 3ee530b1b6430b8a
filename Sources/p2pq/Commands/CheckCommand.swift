import ArgumentParser
import Foundation
import P2PQWorkloads

/// `p2pq check`: the fault-injection suite's checker, over the logs of one run.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Count every item and call in the operation logs of a run (`p2pq workload` and the harness): lost, duplicates, recovery after each fault.",
        discussion: """
            Prints one JSON object, then a readable summary on standard error. Exit status: 0 if \
            nothing was lost, 1 if an acknowledged item or a live caller's call was lost (or a \
            popped item was never pushed), 2 if only the duplicates exceed --max-duplicate-percent.
            """
    )

    @Argument(help: "Operation logs (JSON lines).")
    var logs: [String]

    @Option(help: "Fail (exit 2) when duplicate deliveries exceed this percentage of the items popped.")
    var maxDuplicatePercent: Double?

    func run() throws {
        var check = FaultCheck()
        for path in logs {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("cannot read \(path)")
            }
            check.read(text)
        }
        let report = check.report()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
        FileHandle.standardError.write(Data((report.summary + "\n").utf8))
        if !report.passed { throw ExitCode(1) }
        if let limit = maxDuplicatePercent, report.duplicatePercent > limit {
            FileHandle.standardError.write(Data("FAIL: duplicates \(String(format: "%.2f", report.duplicatePercent)) % > \(limit) %\n".utf8))
            throw ExitCode(2)
        }
    }
}
