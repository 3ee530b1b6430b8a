import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import Testing

/// Runs the `p2pq` binary to completion and returns its exit status and standard output.
func runP2PQ(_ arguments: [String], timeout: Duration = .seconds(30)) async throws -> (status: Int32, output: String) {
    try await offPool { try runP2PQBlocking(arguments, timeout: timeout) }
}

private func runP2PQBlocking(_ arguments: [String], timeout: Duration) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = ChildNode.binary
    process.environment = ChildNode.environment
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw TimedOut(description: "p2pq \(arguments.joined(separator: " ")) ran over \(timeout)")
    }
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite("The p2pq command", .serialized)
struct CLITests {
    /// A `p2pq node` child with its operations address (its second stdout line).
    struct OperatedNode {
        let child: ChildNode
        let operations: String
        var process: Process { child.process }
        var listen: String { child.address }
        var peerID: String { child.peerID.description }

        init(keyFile: String, bootstrap: String?) async throws {
            child = try await ChildNode(arguments: ["--key-file", keyFile, "--metrics", "127.0.0.1:0"]
                                  + (bootstrap.map { ["--bootstrap", $0] } ?? []))
            let words = try await child.nextLine().split(separator: " ")
            guard words.count == 2, words[0] == "operations", words[1].hasPrefix("http://") else {
                throw TimedOut(description: "unexpected second line from p2pq node: \(words)")
            }
            operations = String(words[1].dropFirst("http://".count))
        }
    }

    @Test("3 nodes: push through one, pop through another, status, SIGTERM: all exit 0, nothing lost")
    func threeNodeRoundTrip() async throws {
        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-cli-\(UUID().uuidString).key").path
        defer { unlink(keyFile) }
        let keygen = try await runP2PQ(["keygen", keyFile])
        #expect(keygen.status == 0)

        let a = try await OperatedNode(keyFile: keyFile, bootstrap: nil)
        let b = try await OperatedNode(keyFile: keyFile, bootstrap: a.listen)
        let c = try await OperatedNode(keyFile: keyFile, bootstrap: a.listen)
        let nodes = [a, b, c]

        // The mesh forms (peer exchange gives b and c each other).
        try await eventually("every node links to the two others", timeout: .seconds(15)) {
            for node in nodes {
                guard let status = try? await runP2PQ(["status", node.operations, "--json", "--token-file", keyFile]), status.status == 0,
                      let decoded = try? JSONDecoder().decode(NodeStatus.self, from: Data(status.output.utf8)),
                      decoded.peers.filter({ $0.state == "connected" && $0.member == "alive" }).count == 2
                else { return false }
            }
            return true
        }

        let items = (0..<200).map { "item-\($0)" }
        let pushed = try await runP2PQ(["push", a.operations, "--queue", "cli", "--token-file", keyFile] + items)
        #expect(pushed.status == 0, "push: \(pushed.output)")

        var popped: [String] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while popped.count < items.count && ContinuousClock.now < deadline {
            let answer = try await runP2PQ(["pop", b.operations, "--queue", "cli", "--max", "64", "--timeout", "500", "--token-file", keyFile])
            popped += answer.output.split(separator: "\n").map(String.init).filter { $0.hasPrefix("item-") }
        }
        #expect(popped.count == items.count, "popped \(popped.count) of \(items.count)")
        #expect(Set(popped) == Set(items), "lost or foreign items")

        // status prints a table with the peers and the counters.
        let table = try await runP2PQ(["status", c.operations, "--token-file", keyFile])
        #expect(table.status == 0)
        #expect(table.output.contains(a.peerID.prefix(16)) && table.output.contains("p2pq_items_popped_total"), "status:\n\(table.output)")
        let bStatus = try JSONDecoder().decode(NodeStatus.self, from: Data(try await runP2PQ(["status", b.operations, "--json", "--token-file", keyFile]).output.utf8))
        #expect(bStatus.counters["p2pq_items_popped_total"] == items.count)
        // The queue's own counters: a pushed them all, b popped them all, none twice.
        let aStatus = try JSONDecoder().decode(NodeStatus.self, from: Data(try await runP2PQ(["status", a.operations, "--json", "--token-file", keyFile]).output.utf8))
        let aCounters = aStatus.queues.first { $0.name == "cli" }?.counters ?? [:]
        let bCounters = bStatus.queues.first { $0.name == "cli" }?.counters ?? [:]
        #expect(aCounters["pushed"] == items.count && aCounters["duplicatePops"] == 0, "a's counters: \(aCounters)")
        #expect(bCounters["popped"] == items.count && bCounters["requeuedAfterDeath"] == 0, "b's counters: \(bCounters)")

        for node in nodes { kill(node.process.processIdentifier, SIGTERM) }
        for node in nodes {
            let deadline = ContinuousClock.now + .seconds(10)
            while node.process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(!node.process.isRunning, "a node did not exit after SIGTERM")
            if !node.process.isRunning {
                #expect(node.process.terminationReason == .exit && node.process.terminationStatus == 0)
            }
        }
    }

    @Test("Issue 19.8: a waiting `p2pq pop` that is killed takes no item; the next pop gets the 3 pushed after")
    func killedPopTakesNothing() async throws {
        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-cli-\(UUID().uuidString).key").path
        defer { unlink(keyFile) }
        #expect(try await runP2PQ(["keygen", keyFile]).status == 0)
        let node = try await OperatedNode(keyFile: keyFile, bootstrap: nil)
        defer { kill(node.process.processIdentifier, SIGKILL) }
        func waiting() async -> Int? {
            guard let answer = try? await runP2PQ(["status", node.operations, "--json", "--token-file", keyFile]),
                  let status = try? JSONDecoder().decode(NodeStatus.self, from: Data(answer.output.utf8)) else { return nil }
            return status.queues.first { $0.name == "w" }?.waitingConsumers ?? 0
        }
        // Killed (SIGKILL) once the node holds its waiter, long before its 20 s wait ends.
        let pop = Process()
        pop.executableURL = ChildNode.binary
        pop.environment = ChildNode.environment
        pop.arguments = ["pop", node.operations, "--queue", "w", "--timeout", "20000", "--token-file", keyFile]
        pop.standardOutput = FileHandle.nullDevice
        pop.standardError = FileHandle.nullDevice
        try pop.run()
        try await eventually("the pop's waiter is registered") { await waiting() == 1 }
        #expect(pop.isRunning, "the pop returned instead of waiting")
        kill(pop.processIdentifier, SIGKILL)
        pop.waitUntilExit()
        try await eventually("the killed pop's waiter is withdrawn", diagnose: { "waiting consumers: \(String(describing: await waiting()))" }) {
            await waiting() == 0
        }
        #expect(try await runP2PQ(["push", node.operations, "--queue", "w", "--token-file", keyFile, "1", "2", "3"]).status == 0)
        let popped = try await runP2PQ(["pop", node.operations, "--queue", "w", "--max", "10", "--timeout", "2000", "--token-file", keyFile])
        #expect(popped.output.split(separator: "\n") == ["1", "2", "3"], "popped: \(popped.output)")
    }

    @Test("The embedding example runs a node in a ServiceGroup, uses queue and calls, and exits 0")
    func embeddedServiceExample() async throws {
        let binary = ChildNode.binary.deletingLastPathComponent().appendingPathComponent("EmbeddedService")
        try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build it with `swift build`")
        let process = Process()
        process.executableURL = binary
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let text = try await offPool {
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return text
        }
        #expect(process.terminationStatus == 0)
        #expect(text.contains("sum of squares 1...100 = 338350 (expected 338350)"), "output: \(text)")
    }
}
