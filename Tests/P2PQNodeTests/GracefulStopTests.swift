import Foundation
import Glibc
import P2PQLink
import P2PQMembership
@testable import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQWire
import Synchronization
import Testing

private func encode(_ n: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(n).bigEndian, Array.init) }
private func decode(_ bytes: [UInt8]) -> Int { Int(bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) }

/// Pops from `queues` until `total` distinct items were seen (counting `already`) or `seconds`
/// pass; returns every item popped, duplicates included.
private func popAll(_ queues: [QueueHandle], total: Int, seconds: Int = 60, already: Set<Int> = [], text: Bool = false) async throws -> [Int] {
    let seen = SeenNumbers(already)
    let deadline = ContinuousClock.now + .seconds(seconds)
    return try await withThrowingTaskGroup(of: [Int].self) { group in
        for queue in queues {
            group.addTask {
                var got: [Int] = []
                while seen.count < total && ContinuousClock.now < deadline {
                    do {
                        let items = try await queue.pop(max: 64, timeout: .milliseconds(100)).map { bytes in
                            text ? Int(String(decoding: bytes, as: UTF8.self)) ?? -1 : decode(bytes)
                        }
                        got += items
                        seen.add(items)
                        try await Task.sleep(for: .microseconds(200))
                    } catch let error as QueueError where error == .timeout {
                        continue
                    }
                }
                return got
            }
        }
        var all: [Int] = []
        for try await got in group { all += got }
        return all
    }
}

private final class SeenNumbers: Sendable {
    private let seen: Mutex<Set<Int>>
    init(_ initial: Set<Int>) { seen = Mutex(initial) }
    var count: Int { seen.withLock { $0.count } }
    func add(_ items: [Int]) { seen.withLock { $0.formUnion(items) } }
}

private func httpPopNumbers(_ base: String, queue: String, max: Int, token: OperationsToken) async throws -> [Int] {
    let response = try await operationsRequest(base, "/queue/\(queue)/pop?max=\(max)&timeout=200", method: "POST", token: token)
    guard response.status == 200 else { return [] }
    return try JSONDecoder().decode(QueuePopAnswer.self, from: Data(response.body)).items.compactMap(Int.init)
}

private func httpLocalCount(_ base: String, queue: String, token: OperationsToken) async throws -> Int {
    let response = try await operationsRequest(base, "/status", token: token)
    return try JSONDecoder().decode(NodeStatus.self, from: Data(response.body)).queues.first { $0.name == queue }?.localCount ?? 0
}

@Suite("Graceful stop and flush on real nodes", .serialized)
struct GracefulStopTests {
    let key = ClusterKey.generate()

    func cluster(_ count: Int, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> [Node] {
        try await startMesh(count, key: key) { configuration in
            configuration.drainTimeout = .seconds(10)
            configure(&configuration)
        }
    }

    @Test("A node holding 10,000 items stops: they are handed over with their ownership, the peers pop all 10,000 once")
    func holderStops() async throws {
        let nodes = try await cluster(3)
        let queues = nodes.map { $0.queue(named: "h") }
        for queue in queues { _ = await queue.size() }
        let total = 10_000
        try await queues[0].push(contentsOf: (0..<total).map(encode))
        #expect(await queues[0].size().local == total)  // nobody consumes: all here
        let report = await nodes[0].stop()
        #expect(report.handedOver == total && report.notHandedOver == 0, "\(report)")
        #expect(report.ownedHeldElsewhere == 0 && !report.timedOut)
        let adopted = await queues[1...].asyncSum { await $0.counters()?.ownershipAdopted ?? 0 }
        #expect(adopted == total)
        let popped = try await popAll(Array(queues[1...]), total: total)
        let exact = popped.count == total && Set(popped) == Set(0..<total)
        #expect(exact, "popped \(popped.count), distinct \(Set(popped).count)")
        for node in nodes[1...] { await node.stop() }
    }

    @Test("A pure producer fills its consumers, still holds a backlog, and stops: nothing is lost")
    func producerStops() async throws {
        // Small queues: full consumers refuse more, so the producer still holds items when it stops.
        let nodes = try await cluster(3) { $0.maxQueueItems = 4000 }
        let queues = nodes.map { $0.queue(named: "p") }
        for queue in queues { _ = await queue.size() }
        // The consumer nodes announce consumers (a pop that found nothing), then take nothing yet.
        for queue in queues[1...] { _ = try? await queue.pop(timeout: .zero) }
        try await Task.sleep(for: .milliseconds(600))
        let total = 11_000
        for start in stride(from: 0, to: total, by: 1000) {
            try await queues[0].push(contentsOf: (start..<start + 1000).map(encode))
        }
        // The backlog may be out on a transfer that a full consumer is about to refuse (on a
        // loaded machine that round trip is long): look again until it is back.
        var held = await queues[0].size().local
        for _ in 0..<100 where held == 0 {
            try await Task.sleep(for: .milliseconds(20))
            held = await queues[0].size().local
        }
        #expect(held > 0)
        let consumers = Task { try await popAll(Array(queues[1...]), total: total) }
        let report = await nodes[0].stop()
        #expect(report.notHandedOver == 0, "\(report)")
        // Its records of the items the consumers held went to them (owner changes).
        #expect(report.ownedHeldElsewhere == 0, "\(report)")
        print("producer stopped holding \(held) queued items: \(report)")
        let popped = try await consumers.value
        let complete = Set(popped) == Set(0..<total)
        #expect(complete, "missing \(total - Set(popped).count); \(report)")
        #expect(popped.count == total, "duplicates: \(popped.count - Set(popped).count)")
        for node in nodes[1...] { await node.stop() }
    }

    @Test("The new owner's death after a hand-over loses nothing: it re-queues what its next holder (killed) held")
    func newOwnerReQueues() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await cluster(2)
        let leaving = nodes[0].queue(named: "o")
        let owner = nodes[1].queue(named: "o")
        _ = await leaving.size()
        _ = await owner.size()
        let total = 5000
        // Text items: the child's HTTP pops return them as strings.
        try await leaving.push(contentsOf: (0..<total).map { Array(String($0).utf8) })
        let report = await nodes[0].stop()
        #expect(report.handedOver == total, "\(report)")
        #expect(await owner.counters()?.ownershipAdopted == total)

        // A child node takes items from the new owner (its waiting pops steal batches), and is
        // killed while it holds some.
        let info = try #require(await nodes[1].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0"])
        defer { if child.process.isRunning { kill(child.process.processIdentifier, SIGKILL) } }
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        try await eventually("the child links to the owner", diagnose: { child.diagnostics() }) {
            await nodes[1].connectedPeers().contains(child.peerID)
        }
        var childPopped: [Int] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while childPopped.count < 500 && ContinuousClock.now < deadline {
            childPopped += try await httpPopNumbers(operations, queue: "o", max: 50, token: .derived(from: key))
        }
        let held = try await httpLocalCount(operations, queue: "o", token: .derived(from: key))
        kill(child.process.processIdentifier, SIGKILL)

        let popped = try await popAll([owner], total: total, already: Set(childPopped), text: true)
        let seen = Set(childPopped + popped)
        let complete = seen == Set(0..<total)
        #expect(complete, "missing \(total - seen.count) (child popped \(childPopped.count), held \(held))")
        let requeued = await owner.counters()?.requeuedAfterDeath ?? 0
        print("hand-over then holder killed: child popped \(childPopped.count), held \(held), the new owner re-queued \(requeued)")
        if held > 0 { #expect(requeued > 0) }
        await nodes[1].stop()
    }

    @Test("A consumer stops with pop confirmations pending: they reach the owner first, which re-queues nothing")
    func consumerStops() async throws {
        let nodes = try await cluster(2) { configuration in
            // Confirmations are held back (no batch fills, no delay expires) until the stop.
            configuration.queue.confirmDelay = 3600 * 1_000_000_000
            configuration.queue.confirmBatch = 1 << 30
        }
        let owner = nodes[0].queue(named: "c")
        let consumer = nodes[1].queue(named: "c")
        _ = await owner.size()
        _ = await consumer.size()
        let total = 2000
        try await owner.push(contentsOf: (0..<total).map(encode))
        let popped = try await popAll([consumer], total: total)
        let complete = Set(popped) == Set(0..<total)
        #expect(complete, "popped \(Set(popped).count) distinct")
        let consumerID = try #require(await nodes[1].withCore { $0.identity.peerID })
        let report = await nodes[1].stop()
        #expect(report.noticesFlushed >= total && report.noticesNotFlushed == 0, "\(report)")
        try await eventually("the owner sees the consumer leave") {
            await nodes[0].members().contains { $0.peer == consumerID && $0.state == .left }
        }
        let counters = try #require(await owner.counters())
        #expect(counters.requeuedAfterDeath == 0)
        #expect(await owner.size().local == 0)
        await nodes[0].stop()
    }

    @Test("flush(): returns once a peer holds every item pushed before it; times out when nobody takes them; no live peer throws")
    func flushSemantics() async throws {
        // Alone: the items can only be here.
        let alone = try await cluster(1)
        let solo = alone[0].queue(named: "f")
        try await solo.push(contentsOf: (0..<10).map(encode))
        await #expect(throws: QueueError.noLivePeer) { try await solo.flush(timeout: .seconds(5)) }
        await alone[0].stop()

        let nodes = try await cluster(2)
        let producer = nodes[0].queue(named: "f")
        let consumer = nodes[1].queue(named: "f")
        _ = await producer.size()
        _ = await consumer.size()
        // Nobody consumes: the items stay with the producer.
        try await producer.push(contentsOf: (0..<10).map(encode))
        await #expect(throws: QueueError.timeout) { try await producer.flush(timeout: .milliseconds(300)) }
        // A consumer appears: the producer (no consumers of its own) gives it everything.
        let consuming = Task { try await popAll([consumer], total: 3010) }
        try await producer.push(contentsOf: (10..<3010).map(encode))
        try await producer.flush(timeout: .seconds(20))
        let counters = try #require(await producer.counters())
        #expect(counters.transferredOut == 3010)
        #expect(await producer.size().local == 0)
        let consumed = Set(try await consuming.value)
        let complete = consumed == Set(0..<3010)
        #expect(complete, "consumed \(consumed.count) distinct")
        for node in nodes { await node.stop() }
    }

    @Test("No peer alive: stop() reports how many items it could not hand over, at once")
    func stopAlone() async throws {
        let nodes = try await cluster(1)
        let queue = nodes[0].queue(named: "s")
        try await queue.push(contentsOf: (0..<1000).map(encode))
        let report = await nodes[0].stop()
        #expect(report.notHandedOver == 1000 && report.handedOver == 0 && !report.hadLivePeer, "\(report)")
        #expect(!report.timedOut && report.duration < .seconds(5))
        #expect(await nodes[0].stop() == StopReport())  // idempotent
    }

    @Test("Duplicate deliveries (second pop confirmations) and dropped retransmissions are counted apart")
    func duplicateCounters() async throws {
        let nodes = try await cluster(1)
        let node = nodes[0]
        let queue = node.queue(named: "d")
        try await queue.push(contentsOf: (0..<5).map(encode))
        #expect(try await queue.pop(max: 5, timeout: .seconds(1)).count == 5)
        let stranger = try #require(PeerID(bytes: [UInt8](repeating: 0x77, count: 32)))
        await node.onCoreForTesting { core in
            // A peer confirms the five items popped here: each a second delivery.
            let first = Swift.max(core.configuration.queue.firstSequence, core.incarnation)
            core.queues.receiveForTesting(.ownerUpdate(queue: "d", updateID: 1, popped: [SequenceRun(first: first, count: 5)], custody: []),
                                          from: stranger)
            // The same transfer twice: the second copy of its three items is dropped.
            let items = (1...3).map { QueueItem(id: ItemID(origin: stranger, sequence: UInt64($0)), hops: 1, payload: encode($0)) }
            for id in [7, 8] as [UInt64] {
                core.queues.receiveForTesting(.transfer(queue: "d", transferID: id, kind: .balance, requestID: 0,
                                                        items: TransferItems(items)), from: stranger)
            }
        }
        let counters = try #require(await node.status()?.counters)
        #expect(counters["p2pq_duplicate_deliveries_total"] == 5)
        #expect(counters["p2pq_retransmissions_dropped_total"] == 3)
        #expect(counters["p2pq_duplicates_total"] == 0)
        await node.stop()
    }
}

extension Collection where Element: Sendable {
    fileprivate func asyncSum(_ value: (Element) async -> Int) async -> Int {
        var total = 0
        for element in self { total += await value(element) }
        return total
    }
}
