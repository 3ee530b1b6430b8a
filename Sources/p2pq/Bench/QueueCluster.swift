import Foundation
import Glibc
import ArgumentParser
import Logging
import P2PQLink
import P2PQNode
import Synchronization

/// A node configuration for the queue example and benchmarks: loopback, no mDNS, quiet logs.
func loopbackNodeConfiguration(bootstrap: [String] = [], logLevel: Logger.Level = .error, label: String = "p2pq.bench",
                               linkCipher: LinkCipher? = nil) -> NodeConfiguration {
    var configuration = NodeConfiguration()
    configuration.linkCipher = linkCipher
    configuration.listenHost = "127.0.0.1"
    configuration.listenPort = 0
    configuration.bootstrap = bootstrap
    // Separate runs must not find each other (nor other developers' nodes) over mDNS.
    configuration.discovery.enabled = false
    var logger = Logger(label: label)
    logger.logLevel = logLevel
    configuration.logger = logger
    return configuration
}

/// Waits (at most `timeout`) until every node is linked to all the others.
func waitForMesh(_ nodes: [Node], peers: Int, timeout: Duration = .seconds(10)) async throws {
    let deadline = ContinuousClock.now + timeout
    for node in nodes {
        do {
            try await node.waitForPeers(count: peers, timeout: max(.zero, deadline - ContinuousClock.now))
        } catch {
            throw ClusterError("the nodes did not link up within \(timeout): \(error)")
        }
    }
}

/// `count` in-process nodes in a full mesh, each on its own reactor thread.
func startLocalMesh(_ count: Int, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> [Node] {
    var nodes: [Node] = []
    var first: String?
    for _ in 0..<count {
        var configuration = loopbackNodeConfiguration(bootstrap: first.map { [$0] } ?? [])
        configure(&configuration)
        let node = try Node(configuration: configuration)
        let info = try await node.start()
        if first == nil { first = "\(info.listenAddress)" }
        nodes.append(node)
    }
    try await waitForMesh(nodes, peers: count - 1)
    return nodes
}

struct ClusterError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// CPU seconds (user + system) of this process, or of its waited-for children.
func cpuSeconds(children: Bool = false) -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(children ? RUSAGE_CHILDREN.rawValue : RUSAGE_SELF.rawValue), &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU seconds (user + system) a process of ours has used so far, from `/proc/<pid>/stat`; nil
/// when it cannot be read.
func cpuSeconds(ofProcess pid: Int32) -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return nil }
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    return (user + system) / ticks
}

/// This program, spawned again with other arguments; its standard output read line by line.
final class SelfProcess: @unchecked Sendable {
    let process = Process()
    private let output = Pipe()
    private let input = Pipe()
    private let lines = Lines()

    /// The lines read so far, shared with the reading thread.
    private final class Lines: Sendable {
        let value = Mutex<[String]>([])
        func withLock<T>(_ body: (inout [String]) -> T) -> T { value.withLock { body(&$0) } }
    }

    static var executable: URL {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: path)
    }

    /// Starts `p2pq` with `arguments`; its output lines go to `onLine` as they come. `quiet`
    /// discards its standard error (it goes to ours otherwise).
    init(arguments: [String], quiet: Bool = false, onLine: @escaping @Sendable (String) -> Void = { _ in }) throws {
        process.executableURL = Self.executable
        process.arguments = arguments
        process.environment = ParentWatch.childEnvironment
        process.standardOutput = output
        process.standardInput = input
        process.standardError = quiet ? FileHandle.nullDevice : FileHandle.standardError
        try process.run()
        let fd = output.fileHandleForReading.fileDescriptor
        let thread = Thread { [lines] in
            // Raw reads: a child's signals may interrupt them (EINTR).
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                for byte in buffer[0..<n] {
                    if byte == UInt8(ascii: "\n") {
                        let line = String(decoding: pending, as: UTF8.self)
                        pending.removeAll(keepingCapacity: true)
                        lines.withLock { $0.append(line) }
                        onLine(line)
                    } else {
                        pending.append(byte)
                    }
                }
            }
        }
        thread.start()
    }

    /// The lines read so far.
    var allLines: [String] { lines.withLock { $0 } }

    /// Waits (at most `timeout`) for a line starting with `prefix`.
    func line(startingWith prefix: String, timeout: Duration = .seconds(20)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = lines.withLock({ $0.first { $0.hasPrefix(prefix) } }) { return line }
            if !process.isRunning, lines.withLock({ $0.first { $0.hasPrefix(prefix) } }) == nil {
                try await Task.sleep(for: .milliseconds(50))  // the reader may still be draining
                if let line = lines.withLock({ $0.first { $0.hasPrefix(prefix) } }) { return line }
                throw ClusterError("child exited (\(process.terminationStatus)) before printing '\(prefix)'")
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw ClusterError("no '\(prefix)' line from the child within \(timeout)")
    }

    /// Writes a line to the child's standard input.
    func send(_ line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Waits for the child to exit (at most `timeout`, then kills it).
    func wait(timeout: Duration = .seconds(30)) async {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Reads one line from standard input without blocking the cooperative pool for long.
func readStandardInputLine() async -> String? {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: readLine()) }.start()
    }
}

/// Median of a list (NaN when empty).
func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// A JSON object from ordered key/value pairs (numbers, strings, booleans), one line.
func jsonLine(_ fields: [(String, Any)]) -> String {
    let parts = fields.map { key, value -> String in
        let text: String
        switch value {
        case let string as String: text = "\"\(string)\""
        case let double as Double: text = double.isFinite ? String(format: "%.6g", double) : "null"
        case let bool as Bool: text = bool ? "true" : "false"
        default: text = "\(value)"
        }
        return "\"\(key)\":\(text)"
    }
    return "{" + parts.joined(separator: ",") + "}"
}

/// `--link-cipher` of the CLI.
enum LinkCipherOption: String, ExpressibleByArgument, CaseIterable {
    /// Negotiated per link (AES-256-GCM when both ends have AES instructions).
    case auto, chachapoly, aesgcm

    var cipher: LinkCipher? {
        switch self {
        case .auto: nil
        case .chachapoly: .chaChaPoly
        case .aesgcm: .aesGCM
        }
    }
}
