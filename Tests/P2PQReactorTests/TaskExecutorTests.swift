import Synchronization
import Testing
@testable import P2PQReactor

/// A reactor as a task executor: preferring tasks run on its loop thread, between I/O turns.
@Suite("Reactor as a task executor")
struct TaskExecutorTests {
    @Test("A preferring task runs on the loop thread, before and after it suspends")
    func runsOnTheLoop() async throws {
        let reactor = try Reactor()
        defer { reactor.stop() }
        let threads = await Task(executorPreference: reactor) { () async -> [Bool] in
            var seen = [reactor.inReactorThread]
            // Resumed from the loop (a submitted closure) and from another thread (a sleep).
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                reactor.execute { continuation.resume() }
            }
            seen.append(reactor.inReactorThread)
            try? await Task.sleep(for: .milliseconds(5))
            seen.append(reactor.inReactorThread)
            return seen
        }.value
        #expect(threads == [true, true, true])
        // Without a preference a task runs on the global pool.
        #expect(await Task { reactor.inReactorThread }.value == false)
    }

    @Test("A loop-thread hop of a preferring task writes no wake-up")
    func noWakeupFromTheLoop() async throws {
        let reactor = try Reactor()
        defer { reactor.stop() }
        let (hops, wakeups) = await Task(executorPreference: reactor) { () async -> (Int, UInt64) in
            // Let the task's own start-up wake-up (it was enqueued from this test's thread) pass.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                reactor.execute { continuation.resume() }
            }
            let before = reactor.wakeupCount
            var hops = 0
            for _ in 0..<100 {
                hops += await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
                    reactor.execute { continuation.resume(returning: 1) }
                }
            }
            return (hops, reactor.wakeupCount - before)
        }.value
        #expect(hops == 100)
        #expect(wakeups == 0)
    }

    @Test("Many preferring tasks interleave and all finish")
    func manyTasks() async throws {
        let reactor = try Reactor()
        defer { reactor.stop() }
        let total = await withTaskGroup(of: Int.self) { group in
            for index in 0..<64 {
                group.addTask(executorPreference: reactor) {
                    var sum = 0
                    for step in 0..<50 {
                        await Task.yield()
                        sum += reactor.inReactorThread ? step : -1_000_000
                    }
                    return sum + index
                }
            }
            return await group.reduce(0, +)
        }
        #expect(total == 64 * (49 * 50 / 2) + (63 * 64 / 2))
    }

    @Test("At most maxJobsPerTurn jobs run in one turn; the rest run in the next turns, in order")
    func jobsPerTurn() async throws {
        var configuration = ReactorConfiguration()
        configuration.maxJobsPerTurn = 3
        let reactor = try Reactor(configuration: configuration)
        defer { reactor.stop() }
        // Ten tasks resumed in one go by the loop, each noting the turn it continues in.
        let state = JobsPerTurnState()
        let group = Task {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<10 {
                    group.addTask(executorPreference: reactor) {
                        await withCheckedContinuation { continuation in state.parked.withLock { $0.append((index, continuation)) } }
                        let turn = reactor.turns
                        state.turns.withLock { $0.append((index, turn)) }
                    }
                }
            }
        }
        for _ in 0..<10_000 where state.parked.withLock({ $0.count }) < 10 { try await Task.sleep(for: .milliseconds(1)) }
        let continuations = state.parked.withLock { $0 }
        try #require(continuations.count == 10)
        reactor.execute { for (_, continuation) in continuations { continuation.resume() } }
        await group.value
        let seen = state.turns.withLock { $0 }
        #expect(seen.count == 10)
        let perTurn = Dictionary(grouping: seen, by: \.turn)
        #expect(perTurn.values.allSatisfy { $0.count <= 3 })
        #expect(perTurn.count >= 4)
        // Resumed in one order, they continue in that order, across turns.
        #expect(seen.map(\.task) == continuations.map(\.0))
    }

    @Test("After the reactor stops, preferring tasks go on on the global executor")
    func afterStop() async throws {
        let reactor = try Reactor()
        reactor.stop()
        let result = await Task(executorPreference: reactor) { () async -> (Bool, Int) in
            try? await Task.sleep(for: .milliseconds(1))
            return (reactor.inReactorThread, 42)
        }.value
        #expect(result.0 == false)
        #expect(result.1 == 42)
    }

    @Test("A task waiting on the loop when it stops is not lost")
    func waitingAcrossStop() async throws {
        let reactor = try Reactor()
        let parked = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let task = Task(executorPreference: reactor) { () async -> Bool in
            // Resumed by this test only after the stop: the job cannot run on the loop any more.
            await withCheckedContinuation { continuation in parked.withLock { $0 = continuation } }
            return reactor.inReactorThread
        }
        var continuation: CheckedContinuation<Void, Never>?
        for _ in 0..<10_000 where continuation == nil {
            continuation = parked.withLock { $0 }
            if continuation == nil { try await Task.sleep(for: .milliseconds(1)) }
        }
        reactor.stop()
        let parkedContinuation = try #require(continuation, "the task parked itself")
        parkedContinuation.resume()
        #expect(await task.value == false)
    }
}

private final class JobsPerTurnState: Sendable {
    let parked = Mutex<[(Int, CheckedContinuation<Void, Never>)]>([])
    let turns = Mutex<[(task: Int, turn: UInt64)]>([])
}
