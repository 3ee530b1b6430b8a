import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQWire
import Testing

/// Pushes `lines` (one item each) through a node's operations endpoint; true on 200.
private func httpPush(_ base: String, queue: String, _ lines: [String], token: OperationsToken) async throws -> Bool {
    let body = Array(lines.joined(separator: "\n").utf8) + [UInt8(ascii: "\n")]
    return try await operationsRequest(base, "/queue/\(queue)/push", method: "POST", token: token, body: body, timeout: .seconds(20)).status == 200
}

/// What the nodes' queue `name` and the child's endpoint say, for a failed push.
private func describe(_ nodes: [Node], _ child: ChildNode, _ operations: String, token: OperationsToken) async -> String {
    var lines: [String] = []
    for node in nodes {
        let counters = await node.withCore { core -> String in
            "\(core.queues.counters("r").map { "\($0)" } ?? "no queue r") connected \(core.connectedPeers.map(\.short))"
        }
        lines.append("node \(node.peerID.short): \(counters ?? "not running")")
    }
    if let response = try? await operationsRequest(operations, "/metrics", token: token) {
        lines.append(response.text.split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n"))
    }
    lines.append(child.diagnostics())
    return lines.joined(separator: "\n")
}

/// Pushes items "0" ..< "total" to the child in pushes of 500; on a failed push, records the
/// nodes' and the child's state, stops the nodes and returns false.
private func pushAll(_ total: Int, to operations: String, token: OperationsToken, nodes: [Node], child: ChildNode) async -> Bool {
    var took: [Duration] = []
    do {
        for start in stride(from: 0, to: total, by: 500) {
            let began = ContinuousClock.now
            defer { took.append(ContinuousClock.now - began) }
            #expect(try await httpPush(operations, queue: "r", (start..<start + 500).map(String.init), token: token))
        }
        return true
    } catch {
        Issue.record("push to the child failed: \(error) (pushes took \(took))\n\(await describe(nodes, child, operations, token: token))")
        for node in nodes { await node.stop() }
        return false
    }
}

@Suite("Replication on real nodes", .serialized)
struct ReplicationNodeTests {
    let key = ClusterKey.generate()

    /// The owner is a `p2pq node` child: it takes pushes, nobody consumes, it is SIGKILLed with
    /// all of them still queued. With replication its peers pop every item; with `local` they
    /// pop none (what the mode documents it loses).
    func killOwner(replication: ReplicationMode) async throws -> (popped: Set<String>, total: Int) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await startMesh(2, key: key) { $0.queue.replication = replication == .replicated ? .replicated : .local }
        let queues = nodes.map { $0.queue(named: "r") }
        for queue in queues { _ = await queue.size() }
        let info = try #require(await nodes[0].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0",
                                                    "--replication", replication.rawValue])
        defer { if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) } }
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        try await eventually("the child links to both", diagnose: { child.diagnostics() }) {
            for node in nodes where !(await node.connectedPeers().contains(child.peerID)) { return false }
            return true
        }
        let total = 5000
        let token = OperationsToken.derived(from: key)
        guard await pushAll(total, to: operations, token: token, nodes: nodes, child: child) else {
            return (Set((0..<total).map(String.init)), total)
        }
        // Every push returned: kill the owner before anything moves.
        kill(child.process.processIdentifier, SIGKILL)
        var popped = Set<String>()
        let deadline = ContinuousClock.now + .seconds(replication == .replicated ? 30 : 6)
        while popped.count < total && ContinuousClock.now < deadline {
            for queue in queues {
                if let items = try? await queue.pop(max: 1000, timeout: .milliseconds(100)) {
                    popped.formUnion(items.map { String(decoding: $0, as: UTF8.self) })
                }
            }
        }
        for node in nodes { await node.stop() }
        return (popped, total)
    }

    enum ReplicationMode: String { case replicated, local }

    @Test("Replicated: an owner SIGKILLed with its 5,000 pushed items still queued loses none; its replica holder re-queues them")
    func killOwnerReplicated() async throws {
        let (popped, total) = try await killOwner(replication: .replicated)
        #expect(popped == Set((0..<total).map(String.init)), "missing \(total - popped.count)")
    }

    @Test("A paused owner (SIGSTOP) whose replica holder re-queued its 5,000 items does not deliver its originals after SIGCONT")
    func pausedOwnerDeliversNoOriginals() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await startMesh(2, key: key)
        let queues = nodes.map { $0.queue(named: "r") }
        for queue in queues { _ = await queue.size() }
        let info = try #require(await nodes[0].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0"])
        defer {
            kill(child.process.processIdentifier, SIGCONT)
            if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) }
        }
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        try await eventually("the child links to both", diagnose: { child.diagnostics() }) {
            for node in nodes where !(await node.connectedPeers().contains(child.peerID)) { return false }
            return true
        }
        let total = 5000
        let token = OperationsToken.derived(from: key)
        guard await pushAll(total, to: operations, token: token, nodes: nodes, child: child) else { return }
        // Paused only once the replica holders keep exactly what the child still holds: items it
        // passed on to a node (a balance right after the pushes) must have their replicas
        // released first. Paused in that window, the holder's verdict re-queues copies of items
        // another node already holds: duplicates of the documented kind (docs/reliability.md,
        // "Which pauses are seen"), not the stale originals this test is about.
        // A transfer still on its way counts nowhere yet (CI once paused the child with 3,500
        // items in flight to a node: 3,498 duplicates), so the match must hold twice, 300 ms
        // apart, with nothing arriving in between.
        func sample() async -> (shelved: Int, queuedElsewhere: Int) {
            var shelved = 0, queuedElsewhere = 0
            for node in nodes {
                let (kept, queued) = await node.withCore { core in
                    core.machine.queues["r"].map { ($0.shelvedItems, $0.count) } ?? (0, 0)
                } ?? (0, 0)
                shelved += kept
                queuedElsewhere += queued
            }
            return (shelved, queuedElsewhere)
        }
        // Items the child passed on after the check and before the pause (a steal answered in
        // between) fall in the documented window too: both they and the holder's copies are
        // delivered. They are counted where they arrive, before SIGCONT (a stopped child sends
        // nothing more); anything it passes on after SIGCONT is not excused.
        let childID = child.peerID
        func receivedFromChild() async -> Int {
            var received = 0
            for node in nodes {
                received += await node.withCore { $0.queues.counters("r")?.transferredInByPeer[childID] ?? 0 } ?? 0
            }
            return received
        }
        var receivedAtCheck = 0
        try await eventually("the replicas match the items the child still holds", diagnose: { child.diagnostics() }) {
            receivedAtCheck = await receivedFromChild()
            let first = await sample()
            guard first.shelved + first.queuedElsewhere == total else { return false }
            try? await Task.sleep(for: .milliseconds(300))
            let second = await sample()
            return second == first
        }
        kill(child.process.processIdentifier, SIGSTOP)
        let stopped = ContinuousClock.now
        // Paused: declared dead; its replica holder re-queues the copies and they are popped here.
        var deliveries: [String: Int] = [:]
        func popRound() async {
            for queue in queues {
                if let items = try? await queue.pop(max: 1000, timeout: .milliseconds(100)) {
                    for item in items { deliveries[String(decoding: item, as: UTF8.self), default: 0] += 1 }
                }
            }
        }
        let pausedUntil = ContinuousClock.now + .seconds(20)
        while deliveries.count < total && ContinuousClock.now < pausedUntil { await popRound() }
        #expect(deliveries.count == total, "popped \(deliveries.count) of \(total) while the owner was paused")
        // Paused past the stall threshold (1 s), as a pause into a death verdict is unless the
        // owner was already suspected when it stopped (docs/reliability.md, "Which pauses are
        // seen"): a loaded machine makes that likely.
        if ContinuousClock.now - stopped < .milliseconds(1500) { try await Task.sleep(until: stopped + .milliseconds(1500)) }
        let passedOnBeforePause = await receivedFromChild() - receivedAtCheck
        // Resumed: it must learn that its originals are stale before a consumer gets them.
        kill(child.process.processIdentifier, SIGCONT)
        let after = ContinuousClock.now + .seconds(6)
        while ContinuousClock.now < after { await popRound() }
        let duplicates = deliveries.values.reduce(0) { $0 + $1 - 1 }
        // Stale originals delivered after SIGCONT are what this test is about: at most 1 %
        // beyond the items passed on in the documented window.
        if (duplicates - passedOnBeforePause) * 100 >= total {
            Issue.record("\(duplicates) duplicate deliveries of \(total), \(passedOnBeforePause) items passed on by the child between the check and the pause\n\(await describe(nodes, child, operations, token: token))\n\(child.diagnostics())")
        }
        kill(child.process.processIdentifier, SIGTERM)
        for node in nodes { await node.stop() }
    }

    @Test("Local: the same kill loses the owner's queued items (the documented cost of the mode)")
    func killOwnerLocal() async throws {
        let (popped, total) = try await killOwner(replication: .local)
        #expect(popped.count < total)
    }
}
