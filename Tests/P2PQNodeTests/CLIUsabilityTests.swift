import Foundation
import Glibc
import Logging
import P2PQLink
@testable import P2PQNode
import P2PQReactor
import P2PQRemoteCall
import Synchronization
import Testing

/// One finished `p2pq` run: its exit status and both outputs.
struct CLIRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `p2pq` to completion with standard output and standard error kept apart.
func runCLI(_ arguments: [String], stdin: String? = nil, timeout: Duration = .seconds(30)) async throws -> CLIRun {
    try await offPool {
        let directory = FileManager.default.temporaryDirectory
        let outPath = directory.appendingPathComponent("p2pq-out-\(UUID().uuidString)").path
        let errPath = directory.appendingPathComponent("p2pq-err-\(UUID().uuidString)").path
        defer { unlink(outPath); unlink(errPath) }
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let process = Process()
        process.executableURL = ChildNode.binary
        process.environment = ChildNode.environment
        process.arguments = arguments
        process.standardOutput = FileHandle(forWritingAtPath: outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        let input = Pipe()
        process.standardInput = stdin == nil ? FileHandle.nullDevice : input
        try process.run()
        if let stdin {
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        }
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TimedOut(description: "p2pq \(arguments.joined(separator: " ")) ran over \(timeout)")
        }
        return CLIRun(status: process.terminationStatus,
                      stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }
}

/// A TCP port on loopback with nothing listening (bound, then closed).
func deadLoopbackPort() -> Int { freePorts(1)[0] }

/// A fresh cluster key file (mode 0600) in the temporary directory.
func temporaryKeyFile() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
    try ClusterKey.generate().save(path: path)
    return path
}

/// Strings recorded from closures that may run on any thread.
final class Recorded: Sendable {
    let values = Mutex<[String]>([])
}

/// Log messages kept in memory, for tests that check what a node logs.
final class LogCapture: Sendable {
    private let lines = Mutex<[(Logger.Level, String)]>([])

    func logger(level: Logger.Level) -> Logger {
        var logger = Logger(label: "capture") { _ in Handler(capture: self) }
        logger.logLevel = level
        return logger
    }

    func messages(at level: Logger.Level, containing text: String) -> [String] {
        lines.withLock { $0.filter { $0.0 == level && $0.1.contains(text) }.map(\.1) }
    }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            capture.lines.withLock { $0.append((event.level, "\(event.message)")) }
        }
    }
}

@Suite("The p2pq command as a new user meets it", .serialized)
struct CLIUsabilityTests {
    // MARK: Logs (issue 20.12)

    @Test("p2pq node writes only its machine-readable lines to stdout and its log to stderr")
    func nodeLogsToStandardError() async throws {
        let directory = FileManager.default.temporaryDirectory
        let outPath = directory.appendingPathComponent("p2pq-node-out-\(UUID().uuidString)").path
        let errPath = directory.appendingPathComponent("p2pq-node-err-\(UUID().uuidString)").path
        defer { unlink(outPath); unlink(errPath) }
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let process = Process()
        process.executableURL = ChildNode.binary
        process.environment = ChildNode.environment
        process.arguments = ["node", "--no-discovery", "--log-level", "info", "--metrics", "127.0.0.1:0"]
        process.standardOutput = FileHandle(forWritingAtPath: outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        try await eventually("the node prints its operations line") {
            ((try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "").contains("operations http://")
        }
        kill(process.processIdentifier, SIGTERM)
        try await offPool { process.waitUntilExit() }
        #expect(process.terminationStatus == 0)
        let stdout = try String(contentsOfFile: outPath, encoding: .utf8)
        let stderr = try String(contentsOfFile: errPath, encoding: .utf8)
        let lines = stdout.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].hasPrefix("listening ") && lines[1].hasPrefix("operations http://"),
                "stdout must hold only the two machine-readable lines:\n\(stdout)")
        #expect(stderr.contains("listening on") && stderr.contains("stopped"), "the log lines belong on stderr:\n\(stderr)")
    }

    @Test("A node started with --busy-poll-us sleeps when idle: its reactor polls only for the window after each event")
    func busyPollingNodeSleepsWhenIdle() async throws {
        let process = Process()
        process.executableURL = ChildNode.binary
        process.environment = ChildNode.environment
        process.arguments = ["node", "--no-discovery", "--log-level", "error", "--busy-poll-us", "1000"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let pid = process.processIdentifier
        /// User plus system CPU of the node so far, in clock ticks (100 a second).
        func cpuTicks() throws -> Int {
            let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
            // Fields after the command name, which ends with the last ')': state is field 3,
            // utime and stime are fields 14 and 15.
            let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
            return Int(fields[11])! + Int(fields[12])!
        }
        try await Task.sleep(for: .seconds(1))  // started, its first timers run
        let before = try cpuTicks()
        try await Task.sleep(for: .seconds(2))
        let used = try cpuTicks() - before
        // A loop that never slept would take a core: about 200 ticks in 2 s alone, and still a
        // large share beside a CI build. Idle timers cost a few ticks at most.
        #expect(used < 40, "an idle busy-polling node used \(used) ticks of CPU in 2 s")
        kill(pid, SIGTERM)
        try await offPool { process.waitUntilExit() }
        #expect(process.terminationStatus == 0)
    }

    // MARK: Help (issue 20.19)

    @Test("p2pq node --help shows --serve-examples, which fib and pi point at")
    func serveExamplesIsDocumented() async throws {
        let node = try await runCLI(["node", "--help"])
        #expect(node.status == 0)
        #expect(node.stdout.contains("--serve-examples"), "node --help:\n\(node.stdout)")
        let fib = try await runCLI(["fib", "--help"])
        #expect(fib.stdout.contains("--serve-examples"))
    }

    // MARK: Runtime errors (issue 20.15)

    @Test("An unreachable node is one line on stderr and exit 69, not the usage text and 64")
    func unreachableNode() async throws {
        let dead = "127.0.0.1:\(deadLoopbackPort())"
        for arguments in [["status", dead], ["push", dead, "an-item"], ["pop", dead, "--timeout", "0"]] {
            let run = try await runCLI(arguments)
            #expect(run.status == 69, "\(arguments): exit \(run.status)")
            let lines = run.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].hasPrefix("p2pq: cannot reach"), "\(arguments): stderr:\n\(run.stderr)")
            #expect(!run.stderr.contains("USAGE") && !run.stderr.contains("Usage"))
            #expect(run.stdout.isEmpty)
        }
    }

    @Test("A request the node refuses (HTTP 4xx) exits 65 with the node's answer on one line")
    func refusedRequest() async throws {
        let keyFile = try temporaryKeyFile()
        defer { unlink(keyFile) }
        defer { unlink(keyFile) }
        let node = try await CLITests.OperatedNode(keyFile: keyFile, bootstrap: nil)
        defer { kill(node.process.processIdentifier, SIGKILL) }
        // A queue name over 255 bytes cannot exist: the route answers 400.
        let run = try await runCLI(["push", node.operations, "--queue", String(repeating: "q", count: 300), "--token-file", keyFile, "item"])
        #expect(run.status == 65, "exit \(run.status), stderr: \(run.stderr)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.contains("answered 4"), "stderr:\n\(run.stderr)")
    }

    @Test("A node that cannot start, or a refused key, exits with its own status and one line; --help lists the statuses")
    func startFailuresAndHelp() async throws {
        // The listen port is taken.
        let taken = try Node(configuration: testConfiguration(key: nil))
        let info = try await taken.start()
        let busy = try await runCLI(["node", "--no-discovery", "--listen", "\(info.listenAddress)"])
        await taken.stop()
        #expect(busy.status == 71, "exit \(busy.status), stderr: \(busy.stderr)")
        #expect(busy.stdout.isEmpty && busy.stderr.hasPrefix("p2pq: the node could not start"), "stderr:\n\(busy.stderr)")

        // A bootstrap name that does not resolve (.invalid never does, RFC 6761).
        let unresolvable = try await runCLI(["node", "--no-discovery", "--bootstrap", "no-such-host.invalid:7000"],
                                            timeout: .seconds(60))
        #expect(unresolvable.status == 71, "exit \(unresolvable.status), stderr: \(unresolvable.stderr)")
        #expect(unresolvable.stdout.isEmpty && unresolvable.stderr.contains("cannot resolve 'no-such-host.invalid'"),
                "stderr:\n\(unresolvable.stderr)")

        // A malformed key file.
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-badkey-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: bad, contents: Data("not a key\n".utf8), attributes: [.posixPermissions: 0o600])
        defer { unlink(bad) }
        let refused = try await runCLI(["node", "--no-discovery", "--key-file", bad])
        #expect(refused.status == 77, "exit \(refused.status), stderr: \(refused.stderr)")
        #expect(refused.stdout.isEmpty && refused.stderr.split(separator: "\n").count == 1)
        #expect(!refused.stderr.contains("USAGE"))

        let help = try await runCLI(["--help"])
        for code in ["3:", "64:", "65:", "69:", "70:", "71:", "77:"] {
            #expect(help.stdout.contains(code), "p2pq --help does not explain exit status \(code)\n\(help.stdout)")
        }
    }

    // MARK: Flags checked before the node starts (issue 20.18)

    @Test("A bad --metrics, --bootstrap or --listen fails before anything is printed as listening", arguments: [
        ["--metrics", "9100"], ["--metrics", ":19130"], ["--bootstrap", "no-port"], ["--bootstrap", "host:99999"],
        ["--listen", "127.0.0.1"], ["--discovery-port", "0"], ["--advertise", "a host"],
        ["--busy-poll-us=-1"], ["--busy-poll-us", "1000001"],
    ])
    func badFlagsFailFirst(_ flags: [String]) async throws {
        let run = try await runCLI(["node", "--no-discovery"] + flags, timeout: .seconds(10))
        #expect(run.status == 64, "\(flags): exit \(run.status)")
        #expect(run.stdout.isEmpty, "\(flags): printed before failing:\n\(run.stdout)")
    }

    @Test("A key file readable by others is refused unless --allow-insecure-key-permissions")
    func looseKeyFile() async throws {
        let keyFile = try temporaryKeyFile()
        defer { unlink(keyFile) }
        defer { unlink(keyFile) }
        chmod(keyFile, 0o644)
        let refused = try await runCLI(["node", "--no-discovery", "--key-file", keyFile], timeout: .seconds(10))
        #expect(refused.status == 77, "exit \(refused.status)")
        #expect(refused.stdout.isEmpty)
        #expect(refused.stderr.contains("chmod 600") && refused.stderr.contains("--allow-insecure-key-permissions"),
                "stderr:\n\(refused.stderr)")

        let allowed = try await ChildNode(arguments: ["--key-file", keyFile, "--allow-insecure-key-permissions"])
        #expect(allowed.address.hasPrefix("127.0.0.1:"))
        let process = allowed.process
        kill(process.processIdentifier, SIGTERM)
        try await offPool { process.waitUntilExit() }
        #expect(allowed.process.terminationStatus == 0)
    }

    @Test("A bootstrap host name is resolved at start and again before every redial")
    func bootstrapHostNames() async throws {
        let key = ClusterKey.generate()
        let target = try Node(configuration: testConfiguration(key: key))
        let real = try await target.start().listenAddress
        let dead = try SocketAddress(host: "127.0.0.1", port: deadLoopbackPort())
        let resolutions = Recorded()
        var configuration = testConfiguration(key: key, bootstrap: ["peer-a.test:7000"])
        configuration.baseBackoff = .milliseconds(20)
        configuration.maxBackoff = .milliseconds(100)
        // The name first points nowhere (a peer not up yet, or moved), then at the node.
        configuration.resolveHost = { host, port in
            let count = resolutions.values.withLock { $0.append("\(host):\(port)"); return $0.count }
            return count == 1 ? dead : real
        }
        let node = try Node(configuration: configuration)
        try await node.start()
        let peers = try await node.waitForPeers(count: 1, timeout: .seconds(10))
        #expect(peers == [target.peerID])
        let asked = resolutions.values.withLock { $0 }
        #expect(asked.count >= 2 && asked.allSatisfy { $0 == "peer-a.test:7000" }, "resolved \(asked)")
        await node.stop()
        await target.stop()

        // A name that does not resolve fails start() with the reason.
        var unresolvable = testConfiguration(key: key, bootstrap: ["no-such-host.invalid:7000"])
        unresolvable.resolveHost = { (host: String, _: Int) throws(NodeError) -> SocketAddress in
            throw .invalidConfiguration("cannot resolve '\(host)'")
        }
        let failing = try Node(configuration: unresolvable)
        await #expect(throws: NodeError.self) { try await failing.start() }
    }

    // MARK: pop defaults and gathering (issue 20.16)

    @Test("p2pq pop finds items queued on another node, and --max gathers that many within the timeout")
    func popGathersFromTheCluster() async throws {
        let keyFile = try temporaryKeyFile()
        defer { unlink(keyFile) }
        defer { unlink(keyFile) }
        let a = try await CLITests.OperatedNode(keyFile: keyFile, bootstrap: nil)
        defer { kill(a.process.processIdentifier, SIGKILL) }
        let b = try await CLITests.OperatedNode(keyFile: keyFile, bootstrap: a.listen)
        defer { kill(b.process.processIdentifier, SIGKILL) }
        try await eventually("a and b link", timeout: .seconds(15)) {
            guard let run = try? await runCLI(["status", b.operations, "--json", "--token-file", keyFile]), run.status == 0,
                  let status = try? JSONDecoder().decode(NodeStatus.self, from: Data(run.stdout.utf8)) else { return false }
            return status.peers.contains { $0.state == "connected" && $0.member == "alive" }
        }
        let items = (0..<10_000).map { "item-\($0)" }
        let pushed = try await runCLI(["push", a.operations, "--queue", "gather", "--token-file", keyFile], stdin: items.joined(separator: "\n") + "\n")
        #expect(pushed.status == 0, "push: \(pushed.stderr)")

        // Defaults: the items sit on a; b's pop waits for them to come over.
        let one = try await runCLI(["pop", b.operations, "--queue", "gather", "--token-file", keyFile])
        #expect(one.status == 0, "pop with the defaults: exit \(one.status), \(one.stderr)")
        let first = one.stdout.split(separator: "\n").map(String.init)
        #expect(first.count == 1 && first.allSatisfy { $0.hasPrefix("item-") }, "pop printed \(first)")

        // More than one transfer's worth (4,096) in one command.
        let many = try await runCLI(["pop", b.operations, "--queue", "gather", "--max", "9000", "--timeout", "25000", "--token-file", keyFile],
                                    timeout: .seconds(45))
        #expect(many.status == 0, "exit \(many.status), \(many.stderr)")
        let gathered = many.stdout.split(separator: "\n").map(String.init)
        #expect(gathered.count == 9000, "gathered \(gathered.count) of 9000")
        #expect(Set(gathered + first).count == gathered.count + first.count, "an item came twice")
        #expect(Set(gathered + first).isSubset(of: Set(items)))
    }

    // MARK: Join failures logged once (issue 20.17)

    @Test("A node that cannot join logs the reason once at info, not once per retry", arguments: ["dead address", "wrong key"])
    func joinFailureLoggedOnce(_ cause: String) async throws {
        var target: Node?
        let address: String
        if cause == "wrong key" {
            let other = try Node(configuration: testConfiguration(key: ClusterKey.generate()))
            address = "\(try await other.start().listenAddress)"
            target = other
        } else {
            address = "127.0.0.1:\(deadLoopbackPort())"
        }
        let capture = LogCapture()
        var configuration = testConfiguration(key: ClusterKey.generate(), bootstrap: [address])
        configuration.baseBackoff = .milliseconds(10)
        configuration.maxBackoff = .milliseconds(40)
        configuration.logger = capture.logger(level: .debug)
        let node = try Node(configuration: configuration)
        try await node.start()
        // Many redials (each logs a debug line), one info line with the reason.
        try await eventually("the node redials several times") {
            capture.messages(at: .debug, containing: "ended before the handshake").count >= 6
        }
        await node.stop()
        await target?.stop()
        let info = capture.messages(at: .info, containing: "cannot link to \(address)")
        #expect(info.count == 1, "info lines: \(info)")
        if cause == "wrong key" {
            #expect(info.first?.contains("cluster key") == true, "\(info)")
        }
    }

    // MARK: The library's waits and defaults (issues 20.13, 20.11)

    @Test("Node.waitForPeers returns the linked peers, times out with fewer, fails on a stopped node")
    func waitForPeers() async throws {
        let key = ClusterKey.generate()
        let a = try Node(configuration: testConfiguration(key: key))
        let info = try await a.start()
        let b = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        try await b.start()
        let peers = try await b.waitForPeers(count: 1, timeout: .seconds(10))
        #expect(peers == [a.peerID])
        await #expect(throws: NodeError.self) { try await b.waitForPeers(count: 2, timeout: .milliseconds(200)) }
        await b.stop()
        await a.stop()
        do {
            try await a.waitForPeers(timeout: .seconds(1))
            Issue.record("a stopped node has no peers to wait for")
        } catch {
            guard case .stopped = error else { Issue.record("expected .stopped, got \(error)"); return }
        }
    }

    @Test("maxConcurrentCalls defaults to 16 per core (64...1,024), at least 256 for inline functions")
    func maxConcurrentCallsDefault() async throws {
        #expect(RemoteCall.defaultMaxConcurrentCalls(processorCount: 1) == 64)
        #expect(RemoteCall.defaultMaxConcurrentCalls(processorCount: 2) == 64)
        #expect(RemoteCall.defaultMaxConcurrentCalls(processorCount: 8) == 128)
        #expect(RemoteCall.defaultMaxConcurrentCalls(processorCount: 512) == 1024)
        #expect(RemoteCall.defaultMaxConcurrentCalls(for: .inline, processorCount: 2) == 256)
        #expect(RemoteCall.defaultMaxConcurrentCalls(for: .inline, processorCount: 32) == 512)
        let node = try Node(configuration: testConfiguration(key: nil))
        try await node.start()
        let rpc = try await RemoteCall(node: node)
        #expect(rpc.maxConcurrentCalls == RemoteCall.defaultMaxConcurrentCalls())
        #expect(rpc.maxConcurrentCalls >= 64)
        await node.stop()
    }
}
