import Foundation
import Glibc
import P2PQCodable
import P2PQLink
@testable import P2PQNode
import P2PQQueue
import P2PQOperations
import P2PQWire
import Synchronization
import Testing

private func encodeNumber(_ n: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(n).bigEndian, Array.init) }
private func decodeNumber(_ bytes: [UInt8]) -> Int { Int(bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) }

/// Pops from every queue until `total` distinct items are seen in all or `deadline` passes.
/// Each consumer pauses `work` per batch so the others get a share. Returns what each popped.
private func drain(_ queues: [QueueHandle], total: Int, batch: Int = 32, work: Duration = .microseconds(300),
                   active: [Bool]? = nil, seconds: Int = 60, already: [[UInt8]] = []) async throws -> [[[UInt8]]] {
    let seen = Tally()
    seen.add(already)
    let deadline = ContinuousClock.now + .seconds(seconds)
    return try await withThrowingTaskGroup(of: (Int, [[UInt8]]).self) { group in
        for (index, queue) in queues.enumerated() where active?[index] ?? true {
            group.addTask {
                var got: [[UInt8]] = []
                while seen.count < total && ContinuousClock.now < deadline {
                    do {
                        let items = try await queue.pop(max: batch, timeout: .milliseconds(100))
                        got += items
                        seen.add(items)
                        try await Task.sleep(for: work)
                    } catch {
                        if (error as? QueueError) != .timeout { throw error }
                    }
                }
                return (index, got)
            }
        }
        var all = [[[UInt8]]](repeating: [], count: queues.count)
        for try await (index, got) in group { all[index] = got }
        return all
    }
}

/// Distinct items seen by all consumers.
private final class Tally: Sendable {
    private let seen = Mutex(Set<[UInt8]>())
    var count: Int { seen.withLock { $0.count } }
    func add(_ items: [[UInt8]]) { seen.withLock { $0.formUnion(items) } }
}

/// A message with any body: lets a test put bytes on a link that a real encoder refuses.
private struct RawMessage: WireMessage {
    var messageType: MessageType
    var body: [UInt8]
    func validate() throws(WireError) {}
    var bodySize: Int { body.count }
    func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) { writer.writeRaw(body) }
}

private struct Job: Codable, Sendable, Equatable {
    var id: Int
    var name: String
    var weights: [Double]
}

@Suite("Queue delivery on real nodes", .serialized)
struct QueueDeliveryTests {
    let key = ClusterKey.generate()

    func cluster(_ count: Int, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> [Node] {
        try await startMesh(count, key: key, configure: configure)
    }

    @Test("Exactly once without faults: 4 nodes, 100,000 items pushed at one, popped on all four")
    func exactlyOnce() async throws {
        let nodes = try await cluster(4)
        let queues = nodes.map { $0.queue(named: "w") }
        for queue in queues { _ = await queue.size() }
        let total = 100_000
        let items = (0..<total).map(encodeNumber)
        for start in stride(from: 0, to: total, by: 10_000) {
            try await queues[0].push(contentsOf: Array(items[start..<start + 10_000]))
        }
        let popped = try await drain(queues, total: total)
        let all = popped.flatMap { $0 }
        #expect(all.count == total, "popped \(all.count) (per node \(popped.map(\.count)))")
        #expect(Set(all).count == total)
        for (index, got) in popped.enumerated() { #expect(!got.isEmpty, "node \(index) popped nothing (\(popped.map(\.count)))") }
        // Nothing left anywhere, no duplicates counted.
        try await Task.sleep(for: .milliseconds(300))
        for queue in queues {
            #expect(await queue.size().local == 0)
            let counters = try #require(await queue.counters())
            #expect(counters.duplicatePops == 0)
        }
        let pops = await nodes.asyncMap { await $0.withCore { $0.metrics.itemsPopped } ?? 0 }
        #expect(pops.reduce(0, +) == total)
        for node in nodes { await node.stop() }
    }

    @Test("A producer-only node's items are all consumed by the others")
    func producerOnly() async throws {
        let nodes = try await cluster(4)
        let queues = nodes.map { $0.queue(named: "p") }
        for queue in queues { _ = await queue.size() }
        try await queues[0].push(contentsOf: (0..<5000).map(encodeNumber))
        let popped = try await drain(queues, total: 5000, active: [false, true, true, true])
        let all = popped.flatMap { $0 }
        #expect(Set(all.map(decodeNumber)) == Set(0..<5000))
        #expect(all.count == 5000)
        #expect(popped[0].isEmpty)
        #expect(await queues[0].size().local == 0)
        for node in nodes { await node.stop() }
    }

    @Test("close() on a node holding items: pushes refused, waiting pops fail, no item lost")
    func closeHandsOff() async throws {
        let nodes = try await cluster(3)
        let queues = nodes.map { $0.queue(named: "c") }
        for queue in queues { _ = await queue.size() }
        try await queues[0].push(contentsOf: (0..<5000).map(encodeNumber))
        #expect(await queues[0].size().local > 0)
        await queues[0].close()
        await #expect(throws: QueueError.closed) { try await queues[0].push(encodeNumber(1)) }
        await #expect(throws: QueueError.closed) { try await queues[0].pop(timeout: .seconds(1)) }
        let popped = try await drain(queues, total: 5000, active: [false, true, true])
        let all = popped.flatMap { $0 }
        #expect(Set(all.map(decodeNumber)) == Set(0..<5000))
        #expect(all.count == 5000)
        #expect(await queues[0].size().local == 0)
        // The node itself keeps running.
        #expect(await nodes[0].connectedPeers().count == 2)
        for node in nodes { await node.stop() }
    }

    @Test("A child node holding items is killed with SIGKILL: every item is still popped, duplicates counted")
    func sigkillHolder() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let nodes = try await cluster(2)
        let owner = nodes[0].queue(named: "k")
        let other = nodes[1].queue(named: "k")
        _ = await owner.size()
        _ = await other.size()
        let info = try #require(await nodes[0].withCore { "\($0.advertised)" })
        let child = try await ChildNode(arguments: ["--bootstrap", info, "--key-file", path, "--metrics", "127.0.0.1:0"])
        let operations = try await child.nextLine().replacingOccurrences(of: "operations ", with: "")
        #expect(operations.hasPrefix("http://"))
        try await eventually("the child links to both", diagnose: { child.diagnostics() }) {
            for node in nodes where !(await node.connectedPeers().contains(child.peerID)) { return false }
            return true
        }
        let total = 20_000
        try await owner.push(contentsOf: (0..<total).map { Array(String($0).utf8) })

        // Only the child pops at first, through its operations endpoint: its waiting pops attract
        // work from the owner, in batches, so it holds some when it is killed.
        var childPopped: [String] = []
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(20)
        while childPopped.count < 2000 && clock.now < deadline {
            let answer = try await httpPop(operations, queue: "k", max: 100, timeoutMs: 200, token: OperationsToken.derived(from: key))
            childPopped += answer
        }
        let held = try await httpStatus(operations, token: OperationsToken.derived(from: key)).queues.first { $0.name == "k" }?.localCount ?? 0
        kill(child.process.processIdentifier, SIGKILL)

        let popped = try await drain([owner, other], total: total, seconds: 60, already: childPopped.map { Array($0.utf8) })
        var seen = Set(childPopped)
        var duplicates = childPopped.count - seen.count
        for item in popped.flatMap({ $0 }).map({ String(decoding: $0, as: UTF8.self) }) {
            if !seen.insert(item).inserted { duplicates += 1 }
        }
        // drain stops at the count; give late re-queued copies a moment, then take them too.
        try await Task.sleep(for: .milliseconds(500))
        for queue in [owner, other] {
            while let more = try? await queue.pop(max: 1000, timeout: .milliseconds(200)) {
                for item in more.map({ String(decoding: $0, as: UTF8.self) }) where !seen.insert(item).inserted { duplicates += 1 }
            }
        }
        #expect(seen == Set((0..<total).map(String.init)), "missing \(total - seen.count)")
        let counters = try #require(await owner.counters())
        print("sigkill: child popped \(childPopped.count), held \(held) when killed; owner re-queued \(counters.requeuedAfterDeath); duplicates \(duplicates) (counted by the owner: \(counters.duplicatePops))")
        if held > 0 { #expect(counters.requeuedAfterDeath > 0) }
        for node in nodes { await node.stop() }
    }

    @Test("Typed queue: round trip between nodes, and a decoding error surfaces with the raw item")
    func typed() async throws {
        let nodes = try await cluster(2)
        let jobs0 = nodes[0].queue(named: "jobs", of: Job.self)
        let jobs1 = nodes[1].queue(named: "jobs", of: Job.self)
        let sent = (0..<50).map { Job(id: $0, name: "job \($0)", weights: [Double($0), 0.5]) }
        try await jobs0.push(contentsOf: sent)
        try await jobs0.push(Job(id: 99, name: "last", weights: []))
        var got: [Job] = []
        while got.count < 51 {
            got += try await jobs1.pop(max: 100, timeout: .seconds(5))
        }
        #expect(got == sent + [Job(id: 99, name: "last", weights: [])])

        // Bytes that are not a Job: the pop throws, and the error carries the item.
        try await jobs0.raw.push([0x01, 0xFF, 0xFF])
        let result = await typedPop(jobs0)
        switch result {
        case .success(let job): Issue.record("decoded garbage as \(job)")
        case .failure(.decoding(_, let index, let payloads)):
            #expect(index == 0)
            #expect(payloads == [[0x01, 0xFF, 0xFF]])
        case .failure(let other): Issue.record("unexpected \(other)")
        }
        // A value of another type is a decoding error too.
        let strings = nodes[0].queue(named: "jobs", of: String.self)
        try await strings.push("not a job")
        let mismatch = await typedPop(jobs0)
        if case .failure(.decoding) = mismatch {} else { Issue.record("expected a decoding error, got \(mismatch)") }
        for node in nodes { await node.stop() }
    }

    @Test("Backpressure through NodeConfiguration.maxQueueItems: tryPush false when full, push waits for a pop")
    func backpressure() async throws {
        let node = try Node(configuration: {
            var configuration = testConfiguration(key: key)
            configuration.maxQueueItems = 4
            return configuration
        }())
        try await node.start()
        let queue = node.queue(named: "bp")
        #expect(try await queue.tryPush(contentsOf: (0..<4).map(encodeNumber)))
        #expect(try await !queue.tryPush(encodeNumber(4)))
        let pusher = Task { try await queue.push(encodeNumber(4), encodeNumber(5)) }
        try await Task.sleep(for: .milliseconds(100))
        #expect(await queue.size().local == 4)
        _ = try await queue.pop(max: 2)
        try await pusher.value
        #expect(try await queue.pop(max: 10).map(decodeNumber) == [2, 3, 4, 5])
        await node.stop()
    }

    @Test("A stats report with NaN over a real link is rejected: the receiver closes the link")
    func nanStats() async throws {
        let nodes = try await cluster(2)
        _ = await nodes[0].queue(named: "s").size()
        _ = await nodes[1].queue(named: "s").size()
        let target = try #require(await nodes[1].withCore { $0.identity.peerID })
        let marker = 1234.5
        let message = QueueMessage.stats(queue: "s", LoadStats(
            sequence: 1 << 40, length: 3, waiting: 0, serviceRate: marker, finishTime: 1, hasConsumers: true, accepting: true))
        var frame: [UInt8] = []
        try message.encode(into: &frame)
        var body = Array(frame.dropFirst(5))
        let pattern = withUnsafeBytes(of: marker.bitPattern.bigEndian, Array.init)
        let at = try #require((0...(body.count - 8)).first { Array(body[$0..<$0 + 8]) == pattern })
        body.replaceSubrange(at..<at + 8, with: withUnsafeBytes(of: Double.nan.bitPattern.bigEndian, Array.init))
        let raw = RawMessage(messageType: .queueStats, body: body)
        let sent = await nodes[0].withCore { $0.send(raw, to: target) }
        #expect(sent == true)
        var closed = false
        let deadline = ContinuousClock.now + .seconds(3)
        for await event in nodes[1].events {
            if case .peerDisconnected = event { closed = true; break }
            if ContinuousClock.now > deadline { break }
        }
        #expect(closed, "the receiver kept the link after a NaN report")
        for node in nodes { await node.stop() }
    }
}

private func typedPop(_ queue: TypedQueue<Job>) async -> Result<Job, TypedQueueError> {
    do {
        return .success(try await queue.pop(timeout: .seconds(5)))
    } catch {
        return .failure(error)
    }
}

private func httpPop(_ base: String, queue: String, max: Int, timeoutMs: Int, token: OperationsToken) async throws -> [String] {
    let response = try await operationsRequest(base, "/queue/\(queue)/pop?max=\(max)&timeout=\(timeoutMs)", method: "POST", token: token)
    #expect(response.status == 200)
    return try JSONDecoder().decode(QueuePopAnswer.self, from: Data(response.body)).items
}

private func httpStatus(_ base: String, token: OperationsToken) async throws -> NodeStatus {
    let response = try await operationsRequest(base, "/status", token: token)
    return try JSONDecoder().decode(NodeStatus.self, from: Data(response.body))
}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        for element in self { out.append(await transform(element)) }
        return out
    }
}
