import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQRemoteCall
import P2PQWire
import Synchronization
import Testing

/// An error a registered function throws (shared by the remote-call node tests).
struct Boom: Error, CustomStringConvertible {
    var code: Int
    var description: String { "boom \(code)" }
}

/// The outcome of a call as a value (shared by the remote-call node tests).
func result<T>(_ body: () async throws(RemoteCallError) -> T) async -> Result<T, RemoteCallError> {
    do throws(RemoteCallError) {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}

/// Counts concurrent executions and remembers the peak.
private final class Gauge: Sendable {
    private let state = Mutex<(now: Int, peak: Int, total: Int)>((0, 0, 0))
    func enter() { state.withLock { $0.now += 1; $0.total += 1; $0.peak = max($0.peak, $0.now) } }
    func leave() { state.withLock { $0.now -= 1 } }
    var peak: Int { state.withLock { $0.peak } }
    var total: Int { state.withLock { $0.total } }
}

private func fibonacci(_ n: Int) -> Int {
    var (a, b) = (0, 1)
    for _ in 0..<n { (a, b) = (b, a + b) }
    return a
}

@Suite("Remote calls on real nodes", .serialized)
struct RemoteCallNodeTests {
    let key = ClusterKey.generate()

    /// `count` nodes in a full mesh with membership settled, and a RemoteCall on each.
    func cluster(_ count: Int, maxConcurrentCalls: Int = 4) async throws -> [(Node, RemoteCall)] {
        let nodes = try await startMesh(count, key: key)
        var result: [(Node, RemoteCall)] = []
        for node in nodes {
            result.append((node, try await RemoteCall(node: node, maxConcurrentCalls: maxConcurrentCalls)))
        }
        return result
    }

    func stop(_ nodes: [(Node, RemoteCall)]) async {
        for (node, _) in nodes { await node.stop() }
    }

    @Test("maxConcurrentCalls is never exceeded (counter inside the function)")
    func concurrencyLimit() async throws {
        let nodes = try await cluster(2, maxConcurrentCalls: 3)
        let gauges = [Gauge(), Gauge()]
        var handles: [RemoteFunction<Int, Int>] = []
        for (index, (_, rpc)) in nodes.enumerated() {
            let gauge = gauges[index]
            handles.append(rpc.register("slow") { (n: Int) async throws -> Int in
                gauge.enter()
                defer { gauge.leave() }
                try await Task.sleep(for: .milliseconds(5))
                return n * 2
            })
            try await rpc.process()
        }
        let results = await handles[0].call(batch: Array(0..<120))
        #expect(results.map { try? $0.get() } == (0..<120).map { $0 * 2 })
        #expect(gauges[0].peak <= 3 && gauges[1].peak <= 3, "peaks \(gauges[0].peak), \(gauges[1].peak)")
        #expect(gauges[0].total + gauges[1].total >= 120)
        await stop(nodes)
    }

    @Test("Recursive fib with maxConcurrentCalls = 1 on 3 nodes finishes and is correct")
    func recursiveFib() async throws {
        let nodes = try await cluster(3, maxConcurrentCalls: 1)
        for (_, rpc) in nodes {
            let fib = rpc.function("fib", memoize: true, arguments: Int.self, result: Int.self)
            rpc.register("fib", memoize: true) { (n: Int) async throws -> Int in
                if n < 2 { return n }
                async let a = fib(n - 1)
                async let b = fib(n - 2)
                return try await a + b
            }
            // Plain sequential recursion too, without memoization. Registered before process()
            // (docs/api.md): executors offer credit up front, so a call can reach a node as
            // soon as it processes.
            let plain = rpc.function("plain", arguments: Int.self, result: Int.self)
            rpc.register("plain") { (n: Int) async throws -> Int in
                n < 2 ? n : try await plain(n - 1) + plain(n - 2)
            }
            try await rpc.process()
        }
        let fib = nodes[0].1.function("fib", memoize: true, arguments: Int.self, result: Int.self)
        let value = try await fib(25, timeout: .seconds(60))
        #expect(value == fibonacci(25))
        let plain = nodes[1].1.function("plain", arguments: Int.self, result: Int.self)
        #expect(try await plain(10, timeout: .seconds(60)) == fibonacci(10))
        await stop(nodes)
    }

    @Test("Errors: thrown error, unknown function, bad arguments, deadline, cancellation")
    func errors() async throws {
        let nodes = try await cluster(2)
        for (_, rpc) in nodes {
            rpc.register("fail") { (code: Int) async throws -> Int in throw Boom(code: code) }
            rpc.register("sleep") { (ms: Int) async throws -> Int in
                try await Task.sleep(for: .milliseconds(ms))
                return ms
            }
            rpc.register("text") { (s: String) async throws -> String in s }
        }
        // Only the second node executes, so every call crosses the link.
        try await nodes[1].1.process()
        let rpc = nodes[0].1

        let thrown = await result { () async throws(RemoteCallError) in try await rpc.function("fail", arguments: Int.self, result: Int.self)(7) }
        guard case .failure(.remote(let typeName, let description)) = thrown else {
            Issue.record("expected a remote error, got \(thrown)")
            return
        }
        #expect(typeName.hasSuffix("Boom"))
        #expect(description == "boom 7")

        let unknown = await result { () async throws(RemoteCallError) in try await rpc.function("nothing", arguments: Int.self, result: Int.self)(1) }
        #expect(unknown == .failure(.unknownFunction("nothing")))

        // An Int where a String is expected.
        let bad = await result { () async throws(RemoteCallError) in try await rpc.function("text", arguments: Int.self, result: String.self)(5) }
        guard case .failure(.badArguments(let function, _)) = bad else {
            Issue.record("expected bad arguments, got \(bad)")
            return
        }
        #expect(function == "text")

        let late = await result { () async throws(RemoteCallError) in
            try await rpc.function("sleep", arguments: Int.self, result: Int.self)(2000, timeout: .milliseconds(100))
        }
        #expect(late == .failure(.timedOut(function: "sleep")))

        let sleeper = rpc.function("sleep", arguments: Int.self, result: Int.self)
        let task = Task { await result { () async throws(RemoteCallError) in try await sleeper(3000) } }
        try await Task.sleep(for: .milliseconds(100))
        task.cancel()
        #expect(await task.value == .failure(.cancelled(function: "sleep")))

        // The executor survived all of it.
        let text = rpc.function("text", arguments: String.self, result: String.self)
        #expect(try await text("still here") == "still here")
        await stop(nodes)
    }

    @Test("The executing function sees the caller's cancel and the call's deadline as task cancellation")
    func executorSideCancellation() async throws {
        let nodes = try await cluster(2)
        let running = Gauge()  // total: calls that started
        let cancelled = Mutex(0)
        for (_, rpc) in nodes {
            rpc.register("wait") { (ms: Int) async throws -> Int in
                running.enter()
                defer { running.leave() }
                do {
                    try await Task.sleep(for: .milliseconds(ms))
                } catch is CancellationError {
                    cancelled.withLock { $0 += 1 }
                    throw CancellationError()
                }
                return ms
            }
        }
        try await nodes[1].1.process()
        let wait = nodes[0].1.function("wait", arguments: Int.self, result: Int.self)
        // A first call teaches the caller's node where calls run (queue gossip), so the next
        // ones start well within their deadline.
        #expect(try await wait(1) == 1)

        let late = await result { () async throws(RemoteCallError) in try await wait(20_000, timeout: .seconds(1)) }
        #expect(late == .failure(.timedOut(function: "wait")))
        #expect(running.total == 2, "the call did not start before its deadline")
        try await eventually("the deadline to cancel the running function", timeout: .seconds(5)) { cancelled.withLock { $0 } == 1 }

        let task = Task { await result { () async throws(RemoteCallError) in try await wait(20_000) } }
        try await eventually("the call to start", timeout: .seconds(5)) { running.total == 3 }
        task.cancel()
        #expect(await task.value == .failure(.cancelled(function: "wait")))
        try await eventually("the caller's cancel to reach the running function", timeout: .seconds(5)) { cancelled.withLock { $0 } == 2 }
        try await eventually("one call at a time, three in all", timeout: .seconds(5)) { running.peak == 1 && running.total == 3 }
        await stop(nodes)
    }

    @Test("Functions that hold their thread: the rest of their batch still runs, a cancel still reaches them and the calls not started yet, and a stopped node starts none of those",
          .enabled(if: RemoteCallBridge.runnerWidth >= 2, "a function that holds the only pool thread holds every call"))
    func threadHoldingFunctions() async throws {
        let nodes = try await cluster(2, maxConcurrentCalls: 64)
        let quick = Atomic(0)
        let started = Gauge()
        let sawCancel = Atomic(0)
        let startedCancelled = Atomic(0)
        let startedUncancelled = Atomic(0)
        let release = Atomic(false)
        let ranAfterStop = Atomic(0)
        /// Holds the thread (never suspends) for up to 5 s, until `done`.
        @Sendable func hold(until done: () -> Bool) {
            let deadline = ContinuousClock.now + .seconds(5)
            while !done() && ContinuousClock.now < deadline { usleep(1_000) }
        }
        for (_, rpc) in nodes {
            rpc.register("hold") { (n: Int) async throws -> Int in
                switch n {
                case 0:  // holds until the 20 quick calls of its batch are done
                    hold { quick.load(ordering: .relaxed) == 20 }
                    return quick.load(ordering: .relaxed)
                case -1:  // holds until it sees its cancel
                    started.enter()
                    hold { Task.isCancelled }
                    if Task.isCancelled { sawCancel.add(1, ordering: .relaxed) }
                    throw CancellationError()
                case -2:  // started after its cancel: sees it at once
                    if Task.isCancelled {
                        startedCancelled.add(1, ordering: .relaxed)
                    } else {
                        startedUncancelled.add(1, ordering: .relaxed)
                    }
                    throw CancellationError()
                case -3:  // holds until released
                    started.enter()
                    hold { release.load(ordering: .relaxed) }
                    return n
                case -4:
                    ranAfterStop.add(1, ordering: .relaxed)
                    return n
                case 1...20:
                    quick.add(1, ordering: .relaxed)
                    return n
                default:
                    return n
                }
            }
        }
        try await nodes[1].1.process()
        let function = nodes[0].1.function("hold", arguments: Int.self, result: Int.self)
        // The test's own tasks run on the calling node's reactor: the executing node's functions
        // hold every thread of the global pool below.
        let executor = try #require(nodes[0].0.taskExecutor)
        try await withTaskExecutorPreference(executor) { () async throws -> Void in
            #expect(try await function(100) == 100)  // teaches the caller where calls run

            // One batch: the first call holds its thread until the other 20 are done.
            let results = await function.call(batch: [0] + Array(1...20))
            #expect(try results.map { try $0.get() } == [20] + Array(1...20), "the quick calls waited for the holding one")

            // A function that never suspends still sees its caller's cancel.
            let single = Task(executorPreference: executor) { await result { () async throws(RemoteCallError) in try await function(-1) } }
            try await eventually("the call to start", timeout: .seconds(5)) { started.total == 1 }
            single.cancel()
            #expect(await single.value == .failure(.cancelled(function: "hold")))
            try await eventually("the cancel to reach a function holding its thread", timeout: .seconds(5)) { sawCancel.load(ordering: .relaxed) == 1 }

            // Every runner held (one holding call per core, in one batch with a call behind them):
            // the cancel of the whole batch reaches the call not started yet, which starts
            // cancelled, or never starts when the cancel reached the executor before the call was
            // handed to a runner (a race of the two messages under load); it never runs uncancelled.
            let width = RemoteCallBridge.runnerWidth
            let batch = Task(executorPreference: executor) { await function.call(batch: Array(repeating: -1, count: width) + [-2]) }
            try await eventually("the holding calls to start", timeout: .seconds(5)) { started.total == 1 + width }
            batch.cancel()
            let cancelled = await batch.value
            #expect(cancelled.allSatisfy { $0 == .failure(.cancelled(function: "hold")) })
            try await eventually("the cancel to reach every holding call", timeout: .seconds(5)) { sawCancel.load(ordering: .relaxed) == 1 + width }
            try? await eventually("the call cancelled before it started to start cancelled", timeout: .seconds(2)) { startedCancelled.load(ordering: .relaxed) == 1 }
            #expect(startedUncancelled.load(ordering: .relaxed) == 0, "the call behind the holding ones ran uncancelled")
            #expect(startedCancelled.load(ordering: .relaxed) <= 1)

            // The executing node's calls are stopped (what its `stop()` does to them, called here
            // directly: `stop()` itself needs a thread of the pool these functions hold) while
            // every runner is held: the call behind them never starts.
            let stopping = Task(executorPreference: executor) { await function.call(batch: Array(repeating: -3, count: width) + [-4]) }
            try await eventually("the holding calls to start", timeout: .seconds(5)) { started.total == 1 + 2 * width }
            nodes[1].1.bridge.cancelAll()
            release.store(true, ordering: .relaxed)
            try await Task.sleep(for: .milliseconds(300))
            #expect(ranAfterStop.load(ordering: .relaxed) == 0, "a call started on a stopped node")
            stopping.cancel()
            _ = await stopping.value
            #expect(startedUncancelled.load(ordering: .relaxed) == 0, "the cancelled call behind the holding ones ran later, uncancelled")
        }
        await stop(nodes)
    }

    @Test("A batch call: results in order with per-call errors, nested batches under maxConcurrentCalls = 1, cancellation")
    func batchCalls() async throws {
        let nodes = try await cluster(2, maxConcurrentCalls: 1)
        for (_, rpc) in nodes {
            let square = rpc.function("square", arguments: Int.self, result: Int.self)
            rpc.register("square") { (n: Int) async throws -> Int in
                if n < 0 { throw Boom(code: n) }
                return n * n
            }
            // A function that awaits a batch of other calls: with one slot per node it must give
            // its slot up while it waits, or the two nodes would deadlock.
            rpc.register("sumOfSquares") { (n: Int) async throws -> Int in
                try await square.call(batch: Array(1...n)).reduce(0) { try $0 + $1.get() }
            }
            rpc.register("sleep") { (ms: Int) async throws -> Int in
                try await Task.sleep(for: .milliseconds(ms))
                return ms
            }
            try await rpc.process()
        }
        let rpc = nodes[0].1
        let square = rpc.function("square", arguments: Int.self, result: Int.self)
        let inputs = Array(-3..<300)
        let results = await square.call(batch: inputs)
        #expect(results.count == inputs.count)
        for (n, result) in zip(inputs, results) {
            switch result {
            case .success(let value): #expect(n >= 0 && value == n * n, "\(n) -> \(value)")
            case .failure(.remote(_, let description)): #expect(n < 0 && description == "boom \(n)")
            case .failure(let error): Issue.record("\(n): \(error)")
            }
        }
        #expect(await square.call(batch: []).isEmpty)

        // Raw batches too, and nested ones.
        let raw = rpc.rawFunction("square")
        let rawResults = await raw.call(batch: [[0x80]])  // a varint cut short
        guard case .failure(.badArguments(let function, _)) = rawResults[0] else {
            Issue.record("expected bad arguments, got \(rawResults)")
            return
        }
        #expect(function == "square")
        let sums = await rpc.function("sumOfSquares", arguments: Int.self, result: Int.self).call(batch: [10, 20, 30], timeout: .seconds(60))
        #expect(sums.map { try? $0.get() } == [385, 2870, 9455])

        // Cancelling the calling task cancels every call of the batch.
        let sleeper = rpc.function("sleep", arguments: Int.self, result: Int.self)
        let clock = ContinuousClock()
        let started = clock.now
        let task = Task { await sleeper.call(batch: [3000, 3000, 3000]) }
        try await Task.sleep(for: .milliseconds(200))
        task.cancel()
        let cancelled = await task.value
        #expect(cancelled == Array(repeating: .failure(.cancelled(function: "sleep")), count: 3))
        #expect(clock.now - started < .seconds(2.5), "the batch waited for its calls instead of cancelling them")
        await stop(nodes)
    }

    @Test("Cancelling a call still queued removes its item from the queue")
    func cancelRemovesQueuedItem() async throws {
        let nodes = try await cluster(2)
        // Nobody processes: the calls wait in the caller's queue.
        let rpc = nodes[0].1
        let queue = nodes[0].0.queue(named: rpc.queueName)
        let echo = rpc.rawFunction("echo")
        let tasks = (0..<3).map { _ in Task { await result { () async throws(RemoteCallError) in try await echo([1]) } } }
        var size = 0
        for _ in 0..<200 where size < 3 {
            size = await queue.size().local
            if size < 3 { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(size == 3)
        tasks[0].cancel()
        tasks[2].cancel()
        #expect(await tasks[0].value == .failure(.cancelled(function: "echo")))
        #expect(await tasks[2].value == .failure(.cancelled(function: "echo")))
        for _ in 0..<200 where size > 1 {
            size = await queue.size().local
            if size > 1 { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(size == 1)
        #expect(await queue.counters()?.removed == 2)
        // The one left is still wanted: it runs once somebody processes.
        _ = nodes[1].1.registerRaw("echo") { $0 }
        try await nodes[1].1.process()
        #expect(await tasks[1].value == .success([1]))
        await stop(nodes)
    }

    @Test("Calls from tasks on the caller's reactor: all results right, executed on the other node")
    func callsFromTheReactor() async throws {
        let nodes = try await cluster(2, maxConcurrentCalls: 8)
        let gauge = Gauge()
        for (_, rpc) in nodes {
            rpc.register("triple") { (n: Int) async throws -> Int in
                gauge.enter()
                defer { gauge.leave() }
                return 3 * n
            }
        }
        try await nodes[1].1.process()
        let triple = nodes[0].1.function("triple", arguments: Int.self, result: Int.self)
        let executor = try #require(nodes[0].0.taskExecutor)
        let sums = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<16 {
                group.addTask(executorPreference: executor) {
                    var sum = 0
                    for step in 0..<25 { sum += (try? await triple(worker * 100 + step)) ?? -1_000_000 }
                    return sum
                }
            }
            return await group.reduce(0, +)
        }
        let expected = (0..<16).reduce(0) { total, worker in total + (0..<25).reduce(0) { $0 + 3 * (worker * 100 + $1) } }
        #expect(sums == expected)
        #expect(gauge.total == 400)
        await stop(nodes)
    }

    @Test("Memoization: 100 concurrent identical calls run once")
    func coalescing() async throws {
        let nodes = try await cluster(2)
        let gauge = Gauge()
        for (_, rpc) in nodes {
            rpc.register("square", memoize: true) { (n: Int) async throws -> Int in
                gauge.enter()
                defer { gauge.leave() }
                try await Task.sleep(for: .milliseconds(50))
                return n * n
            }
            try await rpc.process()
        }
        let square = nodes[0].1.function("square", memoize: true, arguments: Int.self, result: Int.self)
        let results = await withTaskGroup(of: Int?.self) { group in
            for _ in 0..<100 { group.addTask { try? await square(12) } }
            var all: [Int?] = []
            for await value in group { all.append(value) }
            return all
        }
        #expect(results.count == 100 && results.allSatisfy { $0 == 144 })
        #expect(gauge.total == 1)
        #expect(try await square(12) == 144)  // cached
        #expect(gauge.total == 1)
        await stop(nodes)
    }

    @Test("Pi over 3 nodes: every node executes some calls")
    func piSpread() async throws {
        let nodes = try await cluster(3, maxConcurrentCalls: 2)
        let gauges = [Gauge(), Gauge(), Gauge()]
        for (index, (_, rpc)) in nodes.enumerated() {
            let gauge = gauges[index]
            rpc.register("pi") { (seed: UInt64) async throws -> Int in
                gauge.enter()
                defer { gauge.leave() }
                var generator = SplitMix64(seed: seed &+ 0x9E37_79B9_7F4A_7C15)
                var inside = 0
                for _ in 0..<20_000 {
                    let x = Double(generator.next() >> 11) / Double(1 << 53)
                    let y = Double(generator.next() >> 11) / Double(1 << 53)
                    if x * x + y * y <= 1 { inside += 1 }
                }
                try await Task.sleep(for: .milliseconds(2))
                return inside
            }
            try await rpc.process()
        }
        let pi = nodes[0].1.function("pi", arguments: UInt64.self, result: Int.self)
        let results = await pi.call(batch: (0..<150).map { UInt64($0) })
        let inside = results.compactMap { try? $0.get() }.reduce(0, +)
        #expect(results.allSatisfy { (try? $0.get()) != nil })
        let estimate = 4 * Double(inside) / Double(150 * 20_000)
        #expect(abs(estimate - Double.pi) < 0.05)
        #expect(gauges.allSatisfy { $0.total > 0 }, "executed per node: \(gauges.map(\.total))")
        await stop(nodes)
    }

    @Test("A submit-only node's calls run elsewhere; stopped nodes fail calls")
    func submitOnly() async throws {
        let nodes = try await cluster(2)
        let echo = nodes[0].1.rawFunction("echo")
        _ = nodes[1].1.registerRaw("echo") { $0 }
        nodes[0].1.registerRaw("echo") { _ in [0] }  // never runs: node 0 does not process
        // Registered before process(), so the calls that succeed below prove it is in place
        // (a registration takes effect on the node's reactor, after the call returns).
        nodes[1].1.registerRaw("hold") { bytes in
            try await Task.sleep(for: .seconds(10))
            return bytes
        }
        try await nodes[1].1.process()
        for round in 0..<20 {
            #expect(try await echo([UInt8(round), 1, 2]) == [UInt8(round), 1, 2])
        }
        let counters = try #require(await nodes[1].1.counters())
        #expect(counters.executor.executed >= 20)
        // A batch waiting when its node stops fails whole, and so does one made afterwards.
        let waiting = Task { await nodes[0].1.rawFunction("hold").call(batch: [[1], [2], [3]]) }
        try await Task.sleep(for: .milliseconds(200))
        await stop(nodes)
        let stopped = await waiting.value
        #expect(stopped == Array(repeating: .failure(.nodeStopped), count: 3), "\(stopped)")
        let after = await result { () async throws(RemoteCallError) in try await echo([1]) }
        #expect(after == .failure(.nodeStopped))
        #expect(await echo.call(batch: [[1], [2]]) == [.failure(.nodeStopped), .failure(.nodeStopped)])
    }

    /// A node (not processing calls yet, one slot) and a `p2pq node --serve-examples` child
    /// process linked to it: at first only the child executes.
    func nodeWithChildExecutor() async throws -> (Node, RemoteCall, ChildNode) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-key-\(UUID().uuidString)").path
        try key.save(path: path)
        defer { unlink(path) }  // the child has read it by the time it prints its first line
        let node = try Node(configuration: testConfiguration(key: key))
        let info = try await node.start()
        let rpc = try await RemoteCall(node: node, maxConcurrentCalls: 1)
        rpc.register("sleep-then-answer") { (ms: Int) async throws -> Int in
            try await Task.sleep(for: .milliseconds(ms))
            return ms + 1
        }
        let child = try await ChildNode(arguments: ["--bootstrap", "\(info.listenAddress)", "--key-file", path, "--serve-examples"])
        try await child.connected(to: node)
        try await eventually("the child is a member") { await node.members().contains { $0.peer == child.peerID && $0.state == .alive } }
        return (node, rpc, child)
    }

    @Test("Killing the executing node (a child process) with SIGKILL: the call still returns the right result")
    func executorKilled() async throws {
        let (node, rpc, child) = try await nodeWithChildExecutor()
        let call = rpc.function("sleep-then-answer", arguments: Int.self, result: Int.self)
        let pending = Task { await result { () async throws(RemoteCallError) in try await call(1500, timeout: .seconds(30)) } }
        // Let the child take it and start it, then kill it mid-call.
        try await Task.sleep(for: .milliseconds(700))
        try await rpc.process()  // the survivor takes the retry
        kill(child.process.processIdentifier, SIGKILL)
        let value = await pending.value
        #expect(value == .success(1501))
        // Normally the child had started it (a caller retry); if the item had not reached it yet,
        // the queue's owner re-queued it instead. Either way it was recovered, not lost.
        let counters = try #require(await rpc.counters())
        let requeued = await node.queue(named: RemoteCall.defaultQueueName).counters()?.requeuedAfterDeath ?? 0
        #expect(counters.caller.retries + requeued >= 1)
        await node.stop()
    }

    @Test("A direct call (sent on the executor's credit) whose executor is SIGKILLed is retried and returns the right result")
    func directCallExecutorKilled() async throws {
        let (node, rpc, child) = try await nodeWithChildExecutor()
        let call = rpc.function("sleep-then-answer", arguments: Int.self, result: Int.self)
        // Warm up through the queue until the child has credited this node.
        var direct = 0
        for attempt in 0..<50 where direct == 0 {
            #expect(try await call(attempt, timeout: .seconds(10)) == attempt + 1)
            direct = try #require(await rpc.counters()).caller.direct
        }
        #expect(direct > 0)
        let before = try #require(await rpc.counters()).caller
        let pending = Task { await result { () async throws(RemoteCallError) in try await call(1500, timeout: .seconds(30)) } }
        try await eventually("the call went direct") { (await rpc.counters()?.caller.direct ?? 0) > before.direct }
        try await Task.sleep(for: .milliseconds(300))
        try await rpc.process()  // the survivor takes the retry
        kill(child.process.processIdentifier, SIGKILL)
        #expect(await pending.value == .success(1501))
        #expect(try #require(await rpc.counters()).caller.retries > before.retries)
        await node.stop()
    }
}

