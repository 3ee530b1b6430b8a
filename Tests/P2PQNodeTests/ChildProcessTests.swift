import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQWire
import Testing

/// A `p2pq node` child process.
final class ChildNode {
    let process = Process()
    let peerID: PeerID
    let address: String
    private let output = Pipe()

    /// The environment of every `p2pq` child a test starts: the test's own, with
    /// `P2PQ_EXIT_WITH_PARENT=1`, so that a crashed or killed test process leaves no node behind.
    static var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["P2PQ_EXIT_WITH_PARENT"] = "1"
        return environment
    }

    /// The `p2pq` binary built next to the test bundle.
    static var binary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("p2pq")
    }

    init(arguments: [String]) async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary.path) else {
            throw TimedOut(description: "no p2pq binary at \(Self.binary.path): build it with `swift build`")
        }
        process.executableURL = Self.binary
        process.environment = ChildNode.environment
        process.arguments = ["node", "--log-level", "info", "--no-discovery"] + arguments
        process.standardOutput = output
        // The child's log goes to a file, read back when a test gives up on it.
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        // The first line is "listening <address> <peer id>".
        let fd = output.fileHandleForReading.fileDescriptor
        let line = try await offPool { Self.readLine(fd) }
        let words = line.split(separator: " ").map(String.init)
        guard words.count == 3, words[0] == "listening",
              let peer = PeerID(bytes: Self.hexBytes(words[2].trimmingCharacters(in: .whitespacesAndNewlines))) else {
            process.terminate()
            throw TimedOut(description: "unexpected first line from p2pq node: \(line)")
        }
        address = words[1]
        peerID = peer
    }

    /// The child's next line of standard output (without the newline); empty at its end.
    func nextLine() async throws -> String {
        let fd = output.fileHandleForReading.fileDescriptor
        return try await offPool { Self.readLine(fd) }
    }

    /// Reads one line from `fd`. Raw reads: the child's signals interrupt reads (EINTR), which
    /// FileHandle turns into a trap.
    static func readLine(_ fd: Int32) -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            if n == 1 {
                if byte == UInt8(ascii: "\n") { break }
                line.append(byte)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return String(decoding: line, as: UTF8.self)
    }

    static func hexBytes(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex, let next = text.index(index, offsetBy: 2, limitedBy: text.endIndex) {
            guard let byte = UInt8(text[index..<next], radix: 16) else { return [] }
            bytes.append(byte)
            index = next
        }
        return bytes
    }

    private let logPath = FileManager.default.temporaryDirectory
        .appendingPathComponent("p2pq-child-\(UUID().uuidString).log").path

    /// The last lines of the child's log, and whether it still runs (for failure messages).
    func diagnostics() -> String {
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "(no log)"
        let tail = log.split(separator: "\n", omittingEmptySubsequences: false).suffix(30).joined(separator: "\n")
        return "child \(process.processIdentifier) \(process.isRunning ? "running" : "exited (\(process.terminationStatus))"), log tail:\n\(tail)"
    }

    /// Waits until `node` has exactly this child as its peer; on a timeout the issue carries the
    /// child's log and the node's view of its peers.
    func connected(to node: Node, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await eventually("the child connects", sourceLocation: sourceLocation, diagnose: {
            "node peers: \(await node.peers())\n\(self.diagnostics())"
        }) { await node.connectedPeers() == [peerID] }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

@Suite("Nodes as child processes", .serialized)
struct ChildProcessTests {
    /// A shell starts `p2pq node` in the background and exits: the node, re-parented, must stop
    /// by itself (with the variable) and must keep running without it (so the test can fail).
    @Test("With P2PQ_EXIT_WITH_PARENT=1 a node stops when its parent is gone; without it, it runs on",
          arguments: [true, false])
    func exitsWithParent(watch: Bool) async throws {
        let shell = Process()
        // The shell starts the node and waits for a line on its standard input, then exits.
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", "\"$0\" node --no-discovery --listen 127.0.0.1:0 >/dev/null 2>&1 </dev/null & echo $!; read line",
                           ChildNode.binary.path]
        var environment = ChildNode.environment
        if !watch { environment["P2PQ_EXIT_WITH_PARENT"] = nil }
        shell.environment = environment
        let output = Pipe()
        let input = Pipe()
        shell.standardOutput = output
        shell.standardInput = input
        try shell.run()
        let line = try await offPool { ChildNode.readLine(output.fileHandleForReading.fileDescriptor) }
        let pid = try #require(pid_t(line.trimmingCharacters(in: .whitespaces)), "no pid from the shell: \(line)")
        defer { kill(pid, SIGKILL) }
        // Neither gone nor a zombie waiting to be reaped (state after the command's ")").
        func running() -> Bool {
            let fd = open("/proc/\(pid)/stat", O_RDONLY)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 512)
            let n = read(fd, &buffer, buffer.count)
            guard n > 0, let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return false }
            return buffer[close + 2] != UInt8(ascii: "Z")
        }
        // Long enough for the node to start its watch with the shell as its parent.
        try await Task.sleep(for: .seconds(1))
        #expect(running(), "the node did not start or stopped while its parent lived")
        input.fileHandleForWriting.write(Data("go\n".utf8))
        if watch {
            try await eventually("the orphaned node stops", timeout: .seconds(10)) { !running() }
        } else {
            try await Task.sleep(for: .seconds(2))
            #expect(running(), "without the variable the node stopped by itself")
        }
    }

    func keyFile() throws -> (ClusterKey, String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        let key = ClusterKey.generate()
        try key.save(path: path)
        return (key, path)
    }

    /// The closed socket tells at once (milliseconds here); the keepalive timeout is set far
    /// out so that only that can explain a disconnect within the bound, which leaves room for a
    /// loaded 2-core machine (1.17 s was seen beside the whole suite).
    @Test("A peer killed with SIGKILL is seen as disconnected at once, not at the keepalive timeout")
    func sigkill() async throws {
        let (key, path) = try keyFile()
        defer { unlink(path) }
        var configuration = testConfiguration(key: key)
        configuration.keepaliveTimeout = .seconds(30)
        let node = try Node(configuration: configuration)
        let info = try await node.start()
        let child = try await ChildNode(arguments: ["--bootstrap", "\(info.listenAddress)", "--key-file", path])
        try await child.connected(to: node)
        let clock = ContinuousClock()
        let killedAt = clock.now
        kill(child.process.processIdentifier, SIGKILL)
        var seen: Duration?
        for await event in node.events {
            if case .peerDisconnected(let peer, let left) = event, peer == child.peerID {
                seen = clock.now - killedAt
                #expect(!left, "a killed peer did not leave gracefully")
                break
            }
        }
        let elapsed = try #require(seen)
        #expect(elapsed < .seconds(5), "took \(elapsed)")
        await node.stop()
    }

    @Test("SIGTERM makes a node leave gracefully and exit 0")
    func sigterm() async throws {
        let (key, path) = try keyFile()
        defer { unlink(path) }
        let node = try Node(configuration: testConfiguration(key: key))
        let info = try await node.start()
        let child = try await ChildNode(arguments: ["--bootstrap", "\(info.listenAddress)", "--key-file", path])
        try await child.connected(to: node)
        kill(child.process.processIdentifier, SIGTERM)
        var left: Bool?
        for await event in node.events {
            if case .peerDisconnected(let peer, let didLeave) = event, peer == child.peerID {
                left = didLeave
                break
            }
        }
        #expect(left == true)
        let process = child.process
        try await offPool { process.waitUntilExit() }
        #expect(child.process.terminationReason == .exit)
        #expect(child.process.terminationStatus == 0)
        await node.stop()
    }
}
