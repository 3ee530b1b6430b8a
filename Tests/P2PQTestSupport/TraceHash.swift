import Foundation
@_exported import struct P2PQSimulation.EventQueue
@_exported import struct P2PQSimulation.TraceHash

/// Runs this test binary again as a child process, with only the test `filter` selected and
/// `environment` added, and returns every line of its standard output that starts with
/// `prefix` (the prefix removed). Each process seeds Swift's hashing afresh (the variable that
/// fixes it is removed), so a result that depends on dictionary or set order differs between
/// processes.
public func linesFromChildRun(filter: String, environment: [String: String], prefix: String) throws -> [String] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
    process.arguments = ["--testing-library", "swift-testing", "--filter", filter]
    var childEnvironment = ProcessInfo.processInfo.environment
    childEnvironment["SWIFT_DETERMINISTIC_HASHING"] = nil
    for (key, value) in environment { childEnvironment[key] = value }
    process.environment = childEnvironment
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: "\n")
        .compactMap { $0.hasPrefix(prefix) ? String($0.dropFirst(prefix.count)) : nil }
}

/// The cross-process determinism check the suites share: each suite's child test is enabled
/// only in a child run (``isChild``) and prints its hash after a prefix; the parent compares
/// what ``hashes(printedBy:prefix:runs:)`` returns with its own.
public enum DeterminismChild {
    static let variable = "P2PQ_DETERMINISM_CHILD"

    /// True in a child run (the parent's cross-process test then does nothing).
    public static var isChild: Bool { ProcessInfo.processInfo.environment[variable] != nil }

    /// Runs test `filter` in `runs` child processes; for each, the lines it printed after `prefix`.
    public static func hashes(printedBy filter: String, prefix: String, runs: Int = 2) throws -> [[String]] {
        try (0..<runs).map { _ in try linesFromChildRun(filter: filter, environment: [variable: "1"], prefix: prefix) }
    }
}
