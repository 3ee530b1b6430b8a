import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQWire
import Testing

private func pop(_ base: String, queue: String, max: Int, timeoutMs: Int, token: OperationsToken) async throws -> [String] {
    let response = try await operationsRequest(base, "/queue/\(queue)/pop?max=\(max)&timeout=\(timeoutMs)", method: "POST", token: token)
    return try JSONDecoder().decode(QueuePopAnswer.self, from: Data(response.body)).items
}

private func status(_ base: String, token: OperationsToken) async throws -> NodeStatus {
    let response = try await operationsRequest(base, "/status", token: token)
    return try JSONDecoder().decode(NodeStatus.self, from: Data(response.body))
}

/// Run alone (`P2PQ_LOAD_TESTS=1 swift test --filter HealNodeTests`, as .ci/run does): beside
/// the whole suite on 2 cores the paused child once had its pop confirmations lag.
@Suite("Healing after a pause, on real nodes", .serialized,
       .enabled(if: ProcessInfo.processInfo.environment["P2PQ_LOAD_TESTS"] == "1", "set P2PQ_LOAD_TESTS=1 to run (CI runs it alone)"))
struct HealNodeTests {
    let key = ClusterKey.generate()

    /// The issue's paused-node case, smaller: a child node holding thousands of items is
    /// stopped (SIGSTOP) until the owner has re-queued them, then resumed with a consumer
    /// popping at once. It must rejoin (every node lists it alive again), drop the copies its
    /// owner re-queued before its consumer sees them, get work again, and lose nothing.
    @Test("A node paused past its death verdict rejoins, drops its stale copies (under 1 % duplicates), gets work again; nothing lost")
    func pausedHolder() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await startMesh(2, key: key)
        let owner = nodes[0].queue(named: "h")
        let other = nodes[1].queue(named: "h")
        _ = await owner.size()
        _ = await other.size()
        let info = try #require(await nodes[0].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0"])
        let pid = child.process.processIdentifier
        defer {
            kill(pid, SIGCONT)
            kill(pid, SIGKILL)
        }
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        try await eventually("the child links to both", diagnose: { child.diagnostics() }) {
            for node in nodes where !(await node.connectedPeers().contains(child.peerID)) { return false }
            return true
        }
        let total = 20_000
        try await owner.push(contentsOf: (0..<total).map { Array(String($0).utf8) })
        // Only the child pops at first: its waiting pops draw work from the owner, so it holds
        // a few thousand items when it stops.
        var popped: [String] = []
        let clock = ContinuousClock()
        var held = 0
        let until = clock.now + .seconds(20)
        while held < 2000 && clock.now < until {
            popped += try await pop(operations, queue: "h", max: 100, timeoutMs: 200, token: .derived(from: key))
            held = try await status(operations, token: .derived(from: key)).queues.first { $0.name == "h" }?.localCount ?? 0
        }
        #expect(held >= 2000, "the child held only \(held)")
        // Its confirmations reach the owner (batched within 10 ms, later on a loaded machine):
        // what it popped must not count as held when it stops.
        let confirmedPops = popped.count
        try await eventually("the child's pop confirmations reach the owner", timeout: .seconds(15)) {
            (await nodes[0].withCore { $0.queues.ownedItems("h") } ?? total) <= total - confirmedPops
        }
        kill(pid, SIGSTOP)
        let stopped = clock.now
        try await eventually("the owner re-queues what the stopped child held", timeout: .seconds(15)) {
            (await owner.counters()?.requeuedAfterDeath ?? 0) > 0
        }
        // Paused at least past the stall threshold (1 s; docs/reliability.md, "Which pauses are
        // seen"): on a loaded machine the child can be suspected before it stops, and then be
        // declared dead after a shorter pause than it can see.
        let minimumPause = Duration.milliseconds(1500)
        if clock.now - stopped < minimumPause { try await clock.sleep(until: stopped + minimumPause) }
        kill(pid, SIGCONT)
        let resumed = clock.now
        // Its consumer pops at once, as a waiting one would.
        var afterResume: [String] = []
        var converged: Duration?
        while clock.now < resumed + .seconds(2) || (converged == nil && clock.now < resumed + .seconds(10)) {
            afterResume += try await pop(operations, queue: "h", max: 500, timeoutMs: 100, token: .derived(from: key))
            if converged == nil {
                var alive = true
                for node in nodes where await node.members().first(where: { $0.peer == child.peerID })?.state != .alive {
                    alive = false
                }
                if alive { converged = clock.now - resumed }
            }
        }
        #expect(converged != nil, "the resumed child is not listed alive everywhere 10 s after SIGCONT")
        // Everything else, popped at the in-process nodes and the child.
        var seen = Set<String>()
        var duplicates = 0
        for item in popped + afterResume where !seen.insert(item).inserted { duplicates += 1 }
        let deadline = clock.now + .seconds(60)
        while seen.count < total && clock.now < deadline {
            var batch: [String] = []
            for queue in [owner, other] {
                if let items = try? await queue.pop(max: 1000, timeout: .milliseconds(50)) {
                    batch += items.map { String(decoding: $0, as: UTF8.self) }
                }
            }
            batch += try await pop(operations, queue: "h", max: 1000, timeoutMs: 50, token: .derived(from: key))
            for item in batch where !seen.insert(item).inserted { duplicates += 1 }
        }
        #expect(seen == Set((0..<total).map(String.init)), "missing \(total - seen.count)")
        // The queues are linked again: fresh items pushed at the owner reach the child.
        try await owner.push(contentsOf: (0..<500).map { Array("fresh \($0)".utf8) })
        var fresh: [String] = []
        let freshUntil = clock.now + .seconds(10)
        while fresh.isEmpty && clock.now < freshUntil {
            fresh += try await pop(operations, queue: "h", max: 100, timeoutMs: 200, token: .derived(from: key))
        }
        #expect(!fresh.isEmpty, "no item reached the resumed child")
        let requeued = await owner.counters()?.requeuedAfterDeath ?? 0
        print("paused holder: held \(held), owner re-queued \(requeued), child popped \(afterResume.count) in the 2 s after resuming; duplicates \(duplicates) (\(String(format: "%.2f", 100 * Double(duplicates) / Double(max(held, 1)))) % of held); all alive again \(converged.map { "\($0)" } ?? "never") after SIGCONT")
        #expect(duplicates * 100 < max(held, 1), "\(duplicates) duplicates of \(held) held")
        for node in nodes { await node.stop() }
    }
}
