import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQWire
import Testing

/// Pops (plainly) from `queues` until `total` distinct items were seen or `seconds` pass.
private func collect(_ queues: [QueueHandle], total: Int, already: Set<String> = [], seconds: Int = 60) async throws -> Set<String> {
    var seen = already
    let deadline = ContinuousClock.now + .seconds(seconds)
    while seen.count < total && ContinuousClock.now < deadline {
        for queue in queues {
            if let items = try? await queue.pop(max: 256, timeout: .milliseconds(50)) {
                seen.formUnion(items.map { String(decoding: $0, as: UTF8.self) })
            }
        }
    }
    return seen
}

/// docs/api.md, "Leased pops"; docs/reliability.md, "Consumer leases".
@Suite("Leased pops on real nodes", .serialized)
struct LeaseNodeTests {
    let key = ClusterKey.generate()

    @Test("API: pop(max:lease:) with delivery counts, ack, nack, lease end, unknown tokens")
    func api() async throws {
        let nodes = try await startMesh(1, key: key)
        let queue = nodes[0].queue(named: "a")
        try await queue.push(Array("1".utf8), Array("2".utf8))
        let items = try await queue.pop(max: 2, lease: .seconds(30), timeout: .seconds(1))
        #expect(items.map(\.bytes) == [Array("1".utf8), Array("2".utf8)])
        #expect(items.map(\.deliveryCount) == [1, 1])
        #expect(await queue.leasedCount() == 2)
        try await items[0].ack()
        await #expect(throws: QueueError.unknownLease([items[0].token])) { try await items[0].ack() }
        try await items[1].nack()
        let again = try await queue.pop(max: 2, lease: .milliseconds(100), timeout: .seconds(1))
        #expect(again.map(\.bytes) == [Array("2".utf8)] && again[0].deliveryCount == 2)
        // Not acked in time: delivered again. (A long lease this time: under the whole suite's
        // load this test has taken 50 s, and a 5 s lease ended before the ack below.)
        let third = try await queue.pop(max: 1, lease: .seconds(120), timeout: .seconds(5))
        #expect(third[0].bytes == Array("2".utf8) && third[0].deliveryCount == 3)
        await #expect(throws: QueueError.unknownLease([again[0].token])) { try await again[0].ack() }
        try await queue.ack(third)
        await #expect(throws: QueueError.invalidLease) { _ = try await queue.pop(max: 1, lease: .zero, timeout: .zero) }
        await #expect(throws: QueueError.invalidLease) { _ = try await queue.pop(max: 1, lease: .seconds(13 * 3600), timeout: .zero) }
        #expect(await queue.leasedCount() == 0)
        #expect(await nodes[0].withCore { $0.queues.ownedItems("a") } == 0)
        for node in nodes { await node.stop() }
    }

    @Test("Typed queue: leased values are acked or nacked; an undecodable batch is nacked whole and reported")
    func typed() async throws {
        let nodes = try await startMesh(1, key: key)
        let typed = nodes[0].queue(named: "t", of: Int.self)
        try await typed.push(1, 2)
        let got = try await typed.pop(max: 2, lease: .seconds(30), timeout: .seconds(1))
        #expect(got.map(\.value) == [1, 2])
        try await typed.ack([got[0].item])
        try await typed.nack([got[1].item])
        let again = try await typed.pop(max: 2, lease: .seconds(30), timeout: .seconds(1))
        #expect(again.map(\.value) == [2] && again[0].item.deliveryCount == 2)
        try await typed.ack(again.map(\.item))
        try await typed.raw.push([0xFF, 0xFF, 0xFF])  // not a compact Int
        do {
            _ = try await typed.pop(max: 1, lease: .seconds(30), timeout: .seconds(1))
            Issue.record("an undecodable item decoded")
        } catch {
            guard case .decoding(_, let index, let payloads) = error else { throw error }
            #expect(index == 0 && payloads == [[0xFF, 0xFF, 0xFF]])
        }
        // Nacked: back in the queue, not lost.
        #expect(await typed.raw.leasedCount() == 0)
        #expect(await typed.size().local == 1)
        for node in nodes { await node.stop() }
    }

    @Test("After the maximum of deliveries an item is pushed into the dead-letter queue and confirmed")
    func deadLetterQueue() async throws {
        let nodes = try await startMesh(1, key: key) { configuration in
            configuration.queue.deadLetter = DeadLetterPolicy(maxDeliveries: 2, queue: "dead")
        }
        let queue = nodes[0].queue(named: "work")
        try await queue.push(Array("poison".utf8))
        for delivery in 1...2 {
            let items = try await queue.pop(max: 1, lease: .seconds(30), timeout: .seconds(1))
            #expect(items[0].deliveryCount == delivery)
            try await items[0].nack()
        }
        let dead = try await nodes[0].queue(named: "dead").pop(max: 10, timeout: .seconds(2))
        #expect(dead == [Array("poison".utf8)])
        #expect(await queue.size().local == 0)
        #expect(await queue.leasedCount() == 0)
        #expect(await nodes[0].withCore { $0.queues.ownedItems("work") } == 0)
        #expect(try #require(await queue.counters()).deadLettered == 1)
        for node in nodes { await node.stop() }
    }

    @Test("A consumer node that stops gracefully hands its un-acked leased items on: all are delivered elsewhere")
    func consumerStopHandsLeasesOn() async throws {
        let nodes = try await startMesh(2, key: key) { $0.drainTimeout = .seconds(10) }
        let owner = nodes[0].queue(named: "s")
        let consumer = nodes[1].queue(named: "s")
        _ = await consumer.size()
        let total = 300
        // Half the items are the consumer node's own (it is their owner), half another node's.
        try await consumer.push(contentsOf: (0..<total / 2).map { Array("\($0)".utf8) })
        try await owner.push(contentsOf: (total / 2..<total).map { Array("\($0)".utf8) })
        // The consumer leases its own items and what it gets from the other node by stealing.
        var leased: [LeasedItem] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while leased.count < 200 && ContinuousClock.now < deadline {
            leased += (try? await consumer.pop(max: 64, lease: .seconds(600), timeout: .milliseconds(200))) ?? []
        }
        #expect(leased.count >= 200, "the consumer leased only \(leased.count)")
        // It acks a few: those are done.
        let acked = Array(leased.prefix(10))
        try await consumer.ack(acked)
        await nodes[1].stop()
        let done = Set(acked.map { String(decoding: $0.bytes, as: UTF8.self) })
        let seen = try await collect([owner], total: total, already: done, seconds: 30)
        #expect(seen == Set((0..<total).map(String.init)), "missing \(total - seen.count)")
        await nodes[0].stop()
    }

    @Test("A `p2pq node` child holding leased items is SIGKILLed: another node delivers every item")
    func sigkilledLeaseHolder() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await startMesh(2, key: key)
        let owner = nodes[0].queue(named: "k")
        let other = nodes[1].queue(named: "k")
        _ = await owner.size()
        _ = await other.size()
        let info = try #require(await nodes[0].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0"])
        defer { if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) } }
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        try await eventually("the child links to both", diagnose: { child.diagnostics() }) {
            for node in nodes where !(await node.connectedPeers().contains(child.peerID)) { return false }
            return true
        }
        let total = 2000
        try await owner.push(contentsOf: (0..<total).map { Array(String($0).utf8) })

        // Only the child consumes at first, leasing through its endpoint and never acking.
        let token = OperationsToken.derived(from: key)
        var leased = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while leased < 500 && ContinuousClock.now < deadline {
            let response = try await operationsRequest(operations, "/queue/k/pop?max=100&timeout=200&lease=600000", method: "POST", token: token)
            leased += try JSONDecoder().decode(QueuePopAnswer.self, from: Data(response.body)).items.count
        }
        #expect(leased >= 500, "the child leased only \(leased)")
        kill(child.process.processIdentifier, SIGKILL)

        let seen = try await collect([owner, other], total: total, seconds: 60)
        #expect(seen == Set((0..<total).map(String.init)), "missing \(total - seen.count) (the child had leased \(leased))")
        let counters = try #require(await owner.counters())
        #expect(counters.requeuedAfterDeath > 0)
        for node in nodes { await node.stop() }
    }
}
