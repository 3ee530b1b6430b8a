import Foundation
import P2PQLink
@testable import P2PQNode
import P2PQQueue
import P2PQWire
import Synchronization
import Testing

private func number(_ bytes: [UInt8]) -> Int {
    Int(bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
}

private func item(_ n: Int) -> [UInt8] {
    withUnsafeBytes(of: UInt64(n).bigEndian, Array.init)
}

@Suite("Queues on real nodes", .serialized)
struct QueueNodeTests {
    let key = ClusterKey.generate()

    func cluster(_ count: Int, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> [Node] {
        try await startMesh(count, key: key, configure: configure)
    }

    @Test("Local push and pop: FIFO, timeout, batch, tryPush and backpressure, close")
    func local() async throws {
        let node = try Node(configuration: {
            var configuration = testConfiguration(key: key)
            configuration.queue = QueueConfiguration(maxItems: 3)
            return configuration
        }())
        try await node.start()
        let queue = node.queue(named: "local")
        try await queue.push(item(1), item(2))
        #expect(number(try await queue.pop(timeout: .seconds(1))) == 1)
        #expect(try await queue.pop(max: 10, timeout: .seconds(1)).map(number) == [2])
        let timedOut = await attempt { () async throws(QueueError) in try await queue.pop(timeout: .milliseconds(50)) }
        #expect(timedOut.failureValue == .timeout)

        // Backpressure: a full queue makes tryPush false and push wait until a pop.
        #expect(try await queue.tryPush(item(1), item(2), item(3)))
        #expect(try await !queue.tryPush(item(4)))
        let pusher = Task { try await queue.push(item(4)) }
        try await Task.sleep(for: .milliseconds(50))
        #expect(await queue.size().local == 3)
        #expect(number(try await queue.pop()) == 1)
        try await pusher.value
        #expect(try await queue.pop(max: 10).map(number) == [2, 3, 4])

        // Waiting pops are served first-in first-out.
        let first = Task { try await queue.pop(timeout: .seconds(5)) }
        try await Task.sleep(for: .milliseconds(30))
        let second = Task { try await queue.pop(timeout: .seconds(5)) }
        try await Task.sleep(for: .milliseconds(30))
        try await queue.push(item(7), item(8))
        #expect(number(try await first.value) == 7)
        #expect(number(try await second.value) == 8)

        // An ItemBatch is all or nothing too, and pops as its items.
        #expect(try await queue.tryPush(ItemBatch([item(20), item(21)])))
        #expect(try await !queue.tryPush(ItemBatch([item(22), item(23)])))
        #expect(try await queue.popPayloads(max: 10, timeout: .seconds(1)).map { number($0.bytes) } == [20, 21])

        // close(): waiting pops fail, pushes are refused.
        let waiting = Task { await attempt { () async throws(QueueError) in try await queue.pop(timeout: .seconds(5)) } }
        try await Task.sleep(for: .milliseconds(30))
        await queue.close()
        #expect(await waiting.value.failureValue == .closed)
        let closedPush = await attempt { () async throws(QueueError) in try await queue.push(item(9)) }
        #expect(closedPush.failureValue == .closed)
        await node.stop()
    }

    @Test("A task on the node's reactor pushes, pops and stops the node")
    func taskOnTheReactor() async throws {
        let node = try Node(configuration: testConfiguration(key: key))
        #expect(node.taskExecutor == nil)
        try await node.start()
        let executor = try #require(node.taskExecutor)
        let queue = node.queue(named: "on-reactor")
        let popped = try await withTaskExecutorPreference(executor) { () async throws -> [Int] in
            var popped: [Int] = []
            for round in 0..<20 {
                try await queue.push(contentsOf: (0..<10).map { item(round * 10 + $0) })
                popped += try await queue.pop(max: 10, timeout: .seconds(5)).map(number)
            }
            // Waiting pops resumed by a push from another task.
            let waiting = Task(executorPreference: executor) { try await queue.pop(timeout: .seconds(5)) }
            try await Task.sleep(for: .milliseconds(20))
            try await queue.push(item(999))
            popped.append(number(try await waiting.value))
            // Stopping from the reactor's own thread must not join that thread.
            await node.stop()
            return popped
        }
        #expect(popped == Array(0..<200) + [999])
        #expect(node.taskExecutor == nil)
    }

    @Test("An ItemBatch pushed at one node pops elsewhere as the same items, with popPayloads and pop")
    func batchAcrossNodes() async throws {
        let nodes = try await cluster(2) { $0.queue.maxItems = 1000 }
        let source = nodes[0].queue(named: "batch")
        let sink = nodes[1].queue(named: "batch")
        var batch = ItemBatch(capacity: 600, bytes: 600 * 40)
        for n in 0..<600 { batch.append(item(n) + [UInt8](repeating: UInt8(n % 251), count: n % 40)) }
        try await source.push(batch)
        var got: [ItemPayload] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while got.count < 400 && ContinuousClock.now < deadline {
            got += try await sink.popPayloads(max: 400 - got.count, timeout: .seconds(10))
        }
        var rest: [[UInt8]] = []
        while got.count + rest.count < 600 && ContinuousClock.now < deadline {
            rest += try await sink.pop(max: 600, timeout: .seconds(10))
        }
        let all = got.map(\.bytes) + rest
        #expect(all.count == 600)
        #expect(all.map(number) == Array(0..<600), "one producer, one consumer: in push order")
        for (n, bytes) in all.enumerated() where bytes != item(n) + [UInt8](repeating: UInt8(n % 251), count: n % 40) {
            Issue.record("item \(n) arrived as \(bytes)")
        }
        for node in nodes { await node.stop() }
    }

    @Test("Small items travel and pop as ranges of one shared buffer, large ones as an array each; pop(max:) hands out arrays either way")
    func poppedItemsShareBuffers() async throws {
        let nodes = try await cluster(2)
        let source = nodes[0].queue(named: "shape")
        let sink = nodes[1].queue(named: "shape")
        for size in [8, 20_000] {
            // The consumer waits first, so the pushed items travel to it in one transfer.
            let popped = Task { try await sink.popPayloads(max: 20, timeout: .seconds(10)) }
            try await Task.sleep(for: .milliseconds(100))
            let items = (0..<20).map { item($0) + [UInt8](repeating: 7, count: size - 8) }
            try await source.push(contentsOf: items)
            var got = Array(try await popped.value)
            while got.count < 20 { got += try await sink.popPayloads(max: 20 - got.count, timeout: .seconds(10)) }
            #expect(got.map(\.bytes) == items)
            let starts = got.map { payload in payload.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }
            if size == 8 {
                // Back to back in one buffer (8 bytes each).
                #expect(zip(starts, starts.dropFirst()).filter { $1 == $0 + 8 }.count >= 15, "\(starts.prefix(5))")
            } else {
                // Each item is a whole array: `bytes` is that array, no copy.
                let copies = zip(got, starts).filter { payload, start in
                    payload.bytes.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } != start
                }
                #expect(copies.isEmpty, "items that were ranges of a shared buffer")
            }
        }
        // Arrays of their own, from the shared buffer.
        let popped = Task { try await sink.pop(max: 20, timeout: .seconds(10)) }
        try await Task.sleep(for: .milliseconds(100))
        try await source.push(contentsOf: (0..<20).map(item))
        var got = try await popped.value
        while got.count < 20 { got += try await sink.pop(max: 20 - got.count, timeout: .seconds(10)) }
        #expect(got == (0..<20).map(item))
        for node in nodes { await node.stop() }
    }

    @Test("Pushed arrays of small items are packed into one batch; large ones, or a single item, are kept as they are")
    func smallArraysArePacked() {
        let small = (0..<100).map { [UInt8](repeating: UInt8($0), count: $0 % 70) }
        guard case .batch(let batch) = PushItems(small) else {
            Issue.record("small items not packed")
            return
        }
        #expect(batch.map(\.bytes) == small)
        let large = (0..<3).map { [UInt8](repeating: UInt8($0), count: PushItems.packedItemLimit + 1) }
        guard case .arrays(let kept) = PushItems(large) else {
            Issue.record("large items packed")
            return
        }
        #expect(kept.enumerated().allSatisfy { index, array in
            array.withUnsafeBytes { $0.baseAddress } == large[index].withUnsafeBytes { $0.baseAddress }
        })
        guard case .arrays = PushItems([[1, 2, 3]]) else {
            Issue.record("a single item packed")
            return
        }
    }

    @Test("3 nodes: 3,000 items pushed at one node are popped exactly once, on every node")
    func distributed() async throws {
        let nodes = try await cluster(3)
        let queues = nodes.map { $0.queue(named: "jobs") }
        try await queues[0].push(contentsOf: (0..<3000).map(item))
        let total = Counter()
        let deadline = ContinuousClock.now + .seconds(30)
        let results = try await withThrowingTaskGroup(of: [Int].self) { group in
            for queue in queues {
                group.addTask {
                    var got: [Int] = []
                    // Pop until all 3,000 are out somewhere (bounded by the deadline).
                    while total.value.withLock({ $0 }) < 3000 && ContinuousClock.now < deadline {
                        switch await attempt({ () async throws(QueueError) in try await queue.pop(max: 1, timeout: .milliseconds(100)) }) {
                        case .success(let batch):
                            got += batch.map(number)
                            total.value.withLock { $0 += batch.count }
                            try await Task.sleep(for: .microseconds(200))  // a little work per item
                        case .failure(let error):
                            if error != .timeout { throw error }
                        }
                    }
                    return got
                }
            }
            var all: [[Int]] = []
            for try await got in group { all.append(got) }
            return all
        }
        let popped = results.flatMap { $0 }
        #expect(popped.count == 3000)
        #expect(Set(popped) == Set(0..<3000))
        if results.contains(where: { $0.count <= 100 }) {
            for queue in queues { print("QDEBUG", await queue.counters().map { "\($0)" } ?? "-") }
        }
        for got in results { #expect(got.count > 100, "a node popped only \(got.count) (\(results.map(\.count)))") }
        for node in nodes { await node.stop() }
    }
}

private final class Counter: Sendable {
    let value = Mutex(0)
}

private func attempt<T>(_ body: () async throws(QueueError) -> T) async -> Result<T, QueueError> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
