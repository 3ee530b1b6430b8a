import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// A caller whose node executes too (its own executor: messages between them take no time)
/// and remote executors behind links with a one-way delay, in simulated time (integer
/// microseconds, events in time order, no randomness). Every call runs `service` µs; each
/// executor flushes after every input (one reactor turn). The caller keeps `inFlight` calls
/// outstanding until `total` were made: a new one as each completes, like `p2pq pi`.
struct RoundTripSim {
    var caller: CallerMachine
    var executors: [ExecutorMachine]
    /// Index 0 is the caller's own node.
    var ids: [PeerID]
    var delays: [UInt64]
    let service: UInt64
    var now: UInt64 = 0
    var executed: [Int]
    var completed = 0
    var failures = 0
    var made = 0
    var pushes = 0
    private var events: [(time: UInt64, order: Int, event: Event)] = []
    private var order = 0

    enum Event {
        case toCaller(RemoteCallMessage, from: Int)
        case toExecutor(RemoteCallMessage, Int)
        case finish(TaskID, at: Int)
    }

    /// `slots` per executor, the first one this node's own; `delay` one way to each remote one.
    init(slots: [Int], delay: UInt64, service: UInt64) {
        // This node has the highest ID, so ties between executors with equal credit never
        // favour it: only the speed of its credit could.
        ids = slots.indices.map { $0 == 0 ? peer(250) : peer(UInt8(10 + $0)) }
        caller = CallerMachine(localPeer: ids[0])
        delays = slots.indices.map { $0 == 0 ? 0 : delay }
        self.service = service
        executors = []
        executed = Array(repeating: 0, count: slots.count)
        for (index, count) in slots.enumerated() {
            var executor = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: count), localPeer: ids[index])
            executor.register("work")
            if index != 0 { executor.peerConnected(ids[0]) }  // the caller's link came up
            executors.append(executor)
            apply(executors[index].start(), at: index)
            apply(executors[index].flush(), at: index)
        }
        // The links came up well before the calls: every executor's credit has arrived.
        runEvents(until: nil)
    }

    mutating func schedule(_ event: Event, after delay: UInt64) {
        order += 1
        events.append((now + delay, order, event))
    }

    mutating func apply(_ actions: [ExecutorAction], at index: Int) {
        for action in actions {
            switch action {
            case .run(let tasks):
                executed[index] += tasks.count
                for task in tasks { schedule(.finish(task.id, at: index), after: service) }
            case .send(let message, let to):
                guard to == ids[0] else { continue }
                schedule(.toCaller(message, from: index), after: delays[index])
            case .setDemand, .resume, .cancelTask, .discard: break
            }
        }
    }

    mutating func apply(_ actions: [CallerAction], total: Int) {
        var newCalls = 0
        for action in actions {
            switch action {
            case .push: pushes += 1
            case .send(let message, let to):
                guard let index = ids.firstIndex(of: to) else { continue }
                schedule(.toExecutor(message, index), after: delays[index])
            case .complete(_, let result):
                completed += 1
                if case .failure = result { failures += 1 }
                if made < total { newCalls += 1 }
            case .removeFromQueue, .armTimer, .capacityAvailable: break
            }
        }
        for _ in 0..<newCalls where made < total { call(total: total) }
    }

    mutating func call(total: Int) {
        made += 1
        let (_, actions) = caller.call(function: "work", arguments: [UInt8(made & 0xFF)], now: now)
        apply(actions, total: total)
    }

    /// Runs events in time order (insertion order among equal times) until none is left.
    mutating func runEvents(until total: Int?) {
        while !events.isEmpty {
            var first = 0
            for index in events.indices.dropFirst()
            where (events[index].time, events[index].order) < (events[first].time, events[first].order) {
                first = index
            }
            let (time, _, event) = events.remove(at: first)
            now = time
            switch event {
            case .toCaller(let message, let from):
                apply(caller.received(message, from: ids[from], now: now), total: total ?? 0)
            case .toExecutor(let message, let index):
                if case .direct(let items) = message {
                    apply(executors[index].direct(items, from: ids[0], wallClock: 0), at: index)
                } else if case .directRun(let run) = message {
                    apply(executors[index].directRun(run, from: ids[0], wallClock: 0), at: index)
                } else {
                    apply(executors[index].received(message, from: ids[0]), at: index)
                }
                apply(executors[index].flush(), at: index)
            case .finish(let task, let index):
                apply(executors[index].finished(task, outcome: .success([1])), at: index)
                apply(executors[index].flush(), at: index)
            }
        }
    }

    mutating func run(calls total: Int, inFlight: Int) {
        for _ in 0..<min(inFlight, total) { call(total: total) }
        runEvents(until: total)
    }
}

@Suite struct RoundTripSpreadTests {
    @Test(
        "Short calls spread evenly although this node's executor returns its credit without a round trip",
        arguments: [1, 4, 16]
    )
    func localCreditDoesNotWin(inFlight: Int) {
        // Calls of 100 µs, 100 µs each way to the remote executors: a remote call takes three
        // times as long from the caller's view. 16 slots each, and at most 16 calls at once, so
        // every executor keeps credit: the choice among them decides the spread.
        var sim = RoundTripSim(slots: [16, 16, 16, 16], delay: 100, service: 100)
        sim.run(calls: 200, inFlight: inFlight)
        #expect(sim.completed == 200 && sim.failures == 0 && sim.pushes == 0)
        #expect(sim.executed.reduce(0, +) == 200)
        for count in sim.executed { #expect(count >= 37 && count <= 63, "calls per executor (own first): \(sim.executed)") }
    }

    @Test("Calls made one at a time go to every executor in turn, whatever its slots")
    func oneAtATimeGoesRound() {
        // The old rule (the most credit) sent every one to the executor with 16 slots.
        var sim = RoundTripSim(slots: [8, 16, 8, 8], delay: 50, service: 20)
        sim.run(calls: 500, inFlight: 1)
        #expect(sim.completed == 500 && sim.pushes == 0)
        #expect(sim.executed == [125, 125, 125, 125], "calls per executor (own first): \(sim.executed)")
    }

    @Test("100 executors, 2,000 short calls 50 at a time: every executor within ±25 % of the mean")
    func hundredExecutors() {
        var sim = RoundTripSim(slots: Array(repeating: 4, count: 100), delay: 100, service: 100)
        sim.run(calls: 2_000, inFlight: 50)
        #expect(sim.completed == 2_000 && sim.failures == 0 && sim.pushes == 0)
        #expect(sim.executed.allSatisfy { $0 >= 15 && $0 <= 25 }, "calls per executor (own first): \(sim.executed)")
    }

    @Test("An executor that had no credit for a while catches up by one call, not by a burst")
    func laggingExecutorCatchesUpByOne() {
        var spread = CreditSpread()
        let a = peer(1), b = peer(2)
        spread.grant(4, from: a, limit: 100)
        spread.grant(1, from: b, limit: 100)
        // Equal shares so far: the most credit first, then b.
        #expect(spread.take(spread.next()!) == a)
        #expect(spread.take(spread.next()!) == b)
        // b has no credit for 50 calls; a gets each back at once.
        for _ in 0..<50 {
            #expect(spread.take(spread.next()!) == a)
            spread.grant(1, from: a, limit: 100)
        }
        spread.grant(1, from: b, limit: 100)
        var order: [PeerID] = []
        for _ in 0..<6 {
            let chosen = spread.take(spread.next()!)
            order.append(chosen)
            spread.grant(1, from: chosen, limit: 100)
        }
        // One call for b at once, then its share again, not the 50 it missed.
        #expect(order == [b, a, b, a, b, a])
        #expect(spread.totalCredit == 3 + 1)
    }
}
