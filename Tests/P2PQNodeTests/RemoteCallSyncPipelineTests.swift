import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQRemoteCall
import Synchronization
import Testing


/// The kernel's name of the calling thread.
private func threadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    return name.isEmpty ? "unnamed" : name
}

/// Blocks the calling thread (never suspends) until `done` or 5 s.
private func hold(until done: () -> Bool) {
    let deadline = ContinuousClock.now + .seconds(5)
    while !done() && ContinuousClock.now < deadline { usleep(1_000) }
}

/// Counts started and running calls.
private final class Counter: Sendable {
    private let state = Mutex<(started: Int, running: Int, peak: Int)>((0, 0, 0))
    func enter() { state.withLock { $0.started += 1; $0.running += 1; $0.peak = max($0.peak, $0.running) } }
    func leave() { state.withLock { $0.running -= 1 } }
    var started: Int { state.withLock { $0.started } }
    var peak: Int { state.withLock { $0.peak } }
}

@Suite("Synchronous functions and pipelined calls on real nodes", .serialized)
struct RemoteCallSyncPipelineTests {
    let key = ClusterKey.generate()

    /// Two nodes; only the second executes calls, so every call of the first crosses the link.
    func pair(maxConcurrentCalls: Int = 8, syncThreads: Int? = nil,
              register: (RemoteCall) -> Void) async throws -> [(Node, RemoteCall)] {
        let nodes = try await startMesh(2, key: key)
        var result: [(Node, RemoteCall)] = []
        for node in nodes {
            let rpc = try await RemoteCall(node: node, maxConcurrentCalls: maxConcurrentCalls,
                                           configuration: RemoteCallConfiguration(syncThreads: syncThreads))
            register(rpc)
            result.append((node, rpc))
        }
        try await result[1].1.process()
        return result
    }

    func stop(_ nodes: [(Node, RemoteCall)]) async {
        for (node, _) in nodes { await node.stop() }
    }

    // MARK: registerSync

    @Test("A sync function runs on a worker thread with no task, never on the reactor; results and thrown errors come back")
    func syncRunsOnWorkers() async throws {
        let nodes = try await pair(syncThreads: 2) { rpc in
            rpc.registerSync("where") { (n: Int) throws -> String in
                let inTask = withUnsafeCurrentTask { $0 != nil }
                return "\(n) \(threadName()) \(inTask ? "task" : "no-task")"
            }
            rpc.registerSync("fail") { (n: Int) throws -> Int in
                if n < 0 { throw Boom(code: n) }
                return n
            }
            rpc.registerRawSync("raw") { bytes in bytes.reversed() }
        }
        let function = nodes[0].1.function("where", arguments: Int.self, result: String.self)
        let answers = await function.call(batch: Array(0..<100))
        for (n, answer) in answers.enumerated() {
            let text = try answer.get()
            let parts = text.split(separator: " ")
            #expect(parts.count == 3 && parts[0] == "\(n)")
            #expect(parts[1].hasPrefix("p2pq-sync-"), "ran on \(parts[1])")
            #expect(parts[2] == "no-task")
        }
        let fail = nodes[0].1.function("fail", arguments: Int.self, result: Int.self)
        #expect(try await fail(5) == 5)
        let failed = await result { () async throws(RemoteCallError) in try await fail(-7) }
        guard case .failure(.remote(let typeName, let description)) = failed else {
            Issue.record("expected a remote error, got \(failed)")
            await stop(nodes)
            return
        }
        #expect(typeName.hasSuffix("Boom") && description == "boom -7")
        #expect(try await nodes[0].1.rawFunction("raw")([1, 2, 3]) == [3, 2, 1])
        let bad = await result { () async throws(RemoteCallError) in
            try await nodes[0].1.function("fail", arguments: String.self, result: Int.self)("not an int")
        }
        if case .failure(.badArguments) = bad {} else { Issue.record("expected bad arguments, got \(bad)") }
        await stop(nodes)
    }

    @Test("A cancelled call waiting behind a held sync worker never runs; the held one finishes and its slot is free again")
    func syncCancellation() async throws {
        let release = Atomic(false)
        let held = Counter()
        let ranCancelled = Atomic(0)
        let nodes = try await pair(syncThreads: 1) { rpc in
            rpc.registerSync("job") { (n: Int) throws -> Int in
                if n == 0 {
                    held.enter()
                    hold { release.load(ordering: .relaxed) }
                    return 0
                }
                if n == 1 { ranCancelled.add(1, ordering: .relaxed) }
                return n
            }
        }
        let job = nodes[0].1.function("job", arguments: Int.self, result: Int.self)
        let first = Task { await result { () async throws(RemoteCallError) in try await job(0, timeout: .seconds(30)) } }
        try await eventually("the first call to hold the only worker") { held.started == 1 }
        let second = Task { await result { () async throws(RemoteCallError) in try await job(1, timeout: .seconds(30)) } }
        // Let the second call reach the executor and queue behind the held worker.
        try await eventually("the second call to reach the executor") {
            (await nodes[1].1.counters()?.executor.executed ?? 0) >= 2
        }
        second.cancel()
        #expect(await second.value == .failure(.cancelled(function: "job")))
        try await Task.sleep(for: .milliseconds(200))  // the cancel reaches the executor
        release.store(true, ordering: .relaxed)
        #expect(await first.value == .success(0))
        #expect(try await job(2, timeout: .seconds(10)) == 2)
        #expect(ranCancelled.load(ordering: .relaxed) == 0, "a call cancelled before it started ran")
        await stop(nodes)
    }

    @Test("Stopping the node while a sync run executes: stop returns, its calls fail with nodeStopped, the rest of the run never starts")
    func syncNodeStop() async throws {
        let release = Atomic(false)
        let held = Counter()
        let ranAfter = Atomic(0)
        let node = try Node(configuration: testConfiguration(key: key))
        _ = try await node.start()
        let rpc = try await RemoteCall(node: node, maxConcurrentCalls: 8, configuration: RemoteCallConfiguration(syncThreads: 1))
        rpc.registerSync("job") { (n: Int) throws -> Int in
            if n == 0 {
                held.enter()
                hold { release.load(ordering: .relaxed) }
            } else {
                ranAfter.add(1, ordering: .relaxed)
            }
            return n
        }
        try await rpc.process()
        let job = rpc.function("job", arguments: Int.self, result: Int.self)
        // One batch: one run on the only worker thread, the first call holds it.
        let calls = Task { await job.call(batch: [0, 1, 2, 3]) }
        try await eventually("the run to start") { held.started == 1 }
        await node.stop()
        #expect(await calls.value == Array(repeating: .failure(.nodeStopped), count: 4))
        release.store(true, ordering: .relaxed)
        try await Task.sleep(for: .milliseconds(200))
        #expect(ranAfter.load(ordering: .relaxed) == 0, "calls of the run started after the node stopped")
    }

    // MARK: Pipelined calls

    @Test("Pipelined calls: every index once, tagged with its own result and error, from an array and an async sequence")
    func pipelineTagging() async throws {
        let nodes = try await pair { rpc in
            rpc.register("square") { (n: Int) async throws -> Int in
                if n % 97 == 13 { throw Boom(code: n) }
                if n % 7 == 0 { try await Task.sleep(for: .milliseconds(1)) }  // completes out of order
                return n * n
            }
            rpc.registerSync("square-sync") { (n: Int) throws -> Int in n * n }
            rpc.registerRaw("raw-echo") { $0 }
        }
        let square = nodes[0].1.function("square", arguments: Int.self, result: Int.self)
        var seen = [Bool](repeating: false, count: 1000)
        for await (index, answer) in square.results(for: Array(0..<1000), window: 32) {
            #expect(!seen[index], "index \(index) twice")
            seen[index] = true
            if index % 97 == 13 {
                #expect(answer == .failure(.remote(typeName: String(reflecting: Boom.self), description: "boom \(index)")))
            } else {
                #expect(answer == .success(index * index))
            }
        }
        #expect(seen.allSatisfy { $0 })

        // Raw arguments in an array: handed over in slices, every index once with its own echo.
        let raw = nodes[0].1.rawFunction("raw-echo")
        var rawSeen = Set<Int>()
        for await (index, answer) in raw.results(for: (0..<500).map { [UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8)] }, window: 24) {
            #expect(answer == .success([UInt8(truncatingIfNeeded: index), UInt8(index >> 8)]))
            #expect(rawSeen.insert(index).inserted, "index \(index) twice")
        }
        #expect(rawSeen == Set(0..<500))

        let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
        let feeder = Task {
            for n in 0..<300 {
                continuation.yield(n)
                if n % 50 == 0 { try? await Task.sleep(for: .milliseconds(5)) }  // a source that is sometimes slow
            }
            continuation.finish()
        }
        let sync = nodes[0].1.function("square-sync", arguments: Int.self, result: Int.self)
        var total = 0
        for await (index, answer) in sync.results(for: stream, window: 16) {
            #expect(answer == .success(index * index))
            total += 1
        }
        #expect(total == 300)
        await feeder.value
        // An empty sequence ends at once.
        var none = 0
        for await _ in square.results(for: [Int]()) { none += 1 }
        #expect(none == 0)
        await stop(nodes)
        // A stopped node fails each call at once.
        var stopped: [Int: Result<Int, RemoteCallError>] = [:]
        for await (index, answer) in square.results(for: [1, 2, 3], window: 2) { stopped[index] = answer }
        #expect(stopped == [0: .failure(.nodeStopped), 1: .failure(.nodeStopped), 2: .failure(.nodeStopped)])
    }

    @Test("Pipelined calls are bounded by the window: a window in flight and a window of results waiting, no more; a waiting result frees its call's slot at once")
    func pipelineBackpressure() async throws {
        let started = Counter()
        let nodes = try await pair(maxConcurrentCalls: 64) { rpc in
            rpc.registerSync("count") { (n: Int) throws -> Int in
                started.enter()
                started.leave()
                return n
            }
        }
        let count = nodes[0].1.function("count", arguments: Int.self, result: Int.self)
        let window = 8
        var taken = 0
        for await (index, answer) in count.results(for: Array(0..<200), window: window) {
            #expect(answer == .success(index))
            taken += 1
            #expect(started.started <= taken + 2 * window, "\(started.started) started with \(taken) taken")
            if taken == 1 {
                // A consumer that stops taking: results delivered while at most a window wait
                // free their slots (the calls go on without the consumer, past the old bound of
                // taken + window), then the calls stop at two windows (all answered here), less
                // the credits below a chunk (a quarter of the window) that stay unused.
                try await eventually("a window in flight and a window waiting") { started.started >= 2 * window - window / 4 }
                let paused = started.started
                try await Task.sleep(for: .milliseconds(300))
                #expect(started.started == paused && paused <= 2 * window, "\(started.started) started while the consumer paused")
            }
        }
        #expect(taken == 200 && started.started == 200)
        await stop(nodes)
    }

    @Test("Raw pipelined calls over an array, which the pipeline submits itself as results arrive: bounded like any stream, every index once, cancelled when left, failed once each on a stopped node")
    func rawArrayPipeline() async throws {
        let started = Counter()
        let waiting = Counter()
        let cancelled = Atomic(0)
        let nodes = try await pair(maxConcurrentCalls: 64) { rpc in
            rpc.registerRawSync("count-raw") { bytes in
                started.enter()
                started.leave()
                return bytes
            }
            rpc.registerRaw("wait-raw") { bytes in
                guard bytes != [0] else { return bytes }
                waiting.enter()
                do { try await Task.sleep(for: .seconds(20)) } catch {
                    cancelled.add(1, ordering: .relaxed)
                    throw error
                }
                return bytes
            }
        }
        let count = nodes[0].1.rawFunction("count-raw")
        let arguments = (0..<300).map { [UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8)] }
        let window = 8
        var seen = Set<Int>()
        for await (index, answer) in count.results(for: arguments, window: window) {
            #expect(answer == .success(arguments[index]))
            #expect(seen.insert(index).inserted, "index \(index) twice")
            #expect(started.started <= seen.count + 2 * window, "\(started.started) started with \(seen.count) taken")
            if seen.count == 1 {
                // The consumer pauses: the calls go on until a window waits beyond the window.
                // (Up to a chunk of credits, a quarter of the window, may stay unused.)
                try await eventually("a window in flight and a window waiting") { started.started >= 2 * window - window / 4 }
                let paused = started.started
                try await Task.sleep(for: .milliseconds(300))
                #expect(started.started == paused && paused <= 2 * window, "\(started.started) started while the consumer paused")
            }
        }
        #expect(seen == Set(0..<300) && started.started == 300)

        // Leaving the loop after the first result: the calls in flight (the rest of the window,
        // and the one the first result's slot let out) are cancelled, no more are taken.
        let wait = nodes[0].1.rawFunction("wait-raw")
        var first: [UInt8]?
        for await (_, answer) in wait.results(for: [[0]] + Array(repeating: [1], count: 40), window: 5) {
            first = try answer.get()
            break
        }
        #expect(first == [0])
        try await eventually("the calls left behind to be cancelled") {
            waiting.started >= 4 && cancelled.load(ordering: .relaxed) == waiting.started
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(waiting.started <= 5 && cancelled.load(ordering: .relaxed) == waiting.started, "\(waiting.started) started")

        var none = 0
        for await _ in count.results(for: [[UInt8]]()) { none += 1 }
        #expect(none == 0)

        // A stopped node fails every call once, however many the array holds beyond the window.
        await stop(nodes)
        var failed = [Int](repeating: 0, count: 1000)
        for await (index, answer) in count.results(for: Array(repeating: [7], count: 1000), window: 8) {
            #expect(answer == .failure(.nodeStopped))
            failed[index] += 1
        }
        #expect(failed.allSatisfy { $0 == 1 })
    }

    @Test("A large run of inline calls answers its first calls before the rest run: the caller has results while the executor is still busy with the run")
    func inlineRunAnswersEarly() async throws {
        // Set by the caller's consumer on its first result; read by the executor's inline body.
        let answered = Atomic(false)
        let sawEarly = Atomic(0)  // 1: the caller had a result while call 250 ran; 2: it had none after 5 s
        let nodes = try await pair(maxConcurrentCalls: 512) { rpc in
            rpc.registerRawInline("early") { bytes in
                let index = Int(bytes[0]) | Int(bytes[1]) << 8
                if index == 250 {
                    // Blocks this node's reactor (test only): the results of the calls before it
                    // can reach the caller only if they were sent before this call ran.
                    hold { answered.load(ordering: .acquiring) }
                    // The first run of the call counts (a stalled executor's calls are retried).
                    _ = sawEarly.compareExchange(expected: 0, desired: answered.load(ordering: .acquiring) ? 1 : 2,
                                                 ordering: .acquiringAndReleasing)
                }
                return bytes
            }
        }
        let function = nodes[0].1.rawFunction("early")
        // One call first, so the caller holds the executor's credit and sends the 300 calls
        // below straight to it, in one run.
        #expect(try await function([7, 7]) == [7, 7])
        let arguments = (0..<300).map { [UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8)] }
        var seen = Set<Int>()
        for await (index, answer) in function.results(for: arguments, window: 300) {
            answered.store(true, ordering: .releasing)
            #expect(answer == .success(arguments[index]))
            seen.insert(index)
        }
        #expect(seen == Set(0..<300))
        #expect(sawEarly.load(ordering: .acquiring) == 1, "the caller had no result while the run's later calls ran")
        await stop(nodes)
    }

    @Test("Cancelling the consuming task, or leaving the loop early, cancels the calls outstanding")
    func pipelineCancellation() async throws {
        let started = Counter()
        let cancelled = Atomic(0)
        let nodes = try await pair(maxConcurrentCalls: 16) { rpc in
            rpc.register("wait") { (n: Int) async throws -> Int in
                if n == 0 { return 0 }
                started.enter()
                do { try await Task.sleep(for: .seconds(20)) } catch {
                    cancelled.add(1, ordering: .relaxed)
                    throw error
                }
                return n
            }
        }
        let wait = nodes[0].1.function("wait", arguments: Int.self, result: Int.self)
        let consumer = Task { () async -> Int in
            var received = 0
            for await _ in wait.results(for: Array(1...100), window: 8) { received += 1 }
            return received
        }
        try await eventually("the window's calls to start") { started.started == 8 }
        consumer.cancel()
        #expect(await consumer.value == 0)
        try await eventually("every started call to see its cancel") { cancelled.load(ordering: .relaxed) == 8 }
        #expect(started.started == 8)

        // Leaving the loop after the first result: the other calls are cancelled.
        var first: Int?
        for await (_, answer) in wait.results(for: [0] + Array(1...4), window: 5) {
            first = try answer.get()
            break
        }
        #expect(first == 0)
        try await eventually("the calls left behind to be cancelled") { cancelled.load(ordering: .relaxed) == 12 }
        await stop(nodes)
    }

    @Test("Pipelined calls whose executor (a child process) is SIGKILLed mid-stream are retried: no call lost or doubled")
    func pipelineExecutorKilled() async throws {
        let helper = RemoteCallNodeTests()
        let (node, rpc, child) = try await helper.nodeWithChildExecutor()
        let call = rpc.function("sleep-then-answer", arguments: Int.self, result: Int.self)
        let before = try #require(await rpc.counters()).caller
        let consumer = Task { () async -> [Int: Result<Int, RemoteCallError>] in
            var answers: [Int: Result<Int, RemoteCallError>] = [:]
            for await (index, answer) in call.results(for: Array(repeating: 400, count: 24), window: 8, timeout: .seconds(60)) {
                #expect(answers[index] == nil)
                answers[index] = answer
            }
            return answers
        }
        try await Task.sleep(for: .milliseconds(600))
        try await rpc.process()  // the survivor takes the retries
        kill(child.process.processIdentifier, SIGKILL)
        let answers = await consumer.value
        #expect(answers.count == 24)
        #expect(answers.values.allSatisfy { $0 == .success(401) })
        let counters = try #require(await rpc.counters()).caller
        let requeued = await node.queue(named: RemoteCall.defaultQueueName).counters()?.requeuedAfterDeath ?? 0
        #expect(counters.retries - before.retries + requeued >= 1)
        await node.stop()
    }
}
