import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// One caller node that does not execute and a few executors, wired by in-order links, with a
/// random scheduler over message deliveries, task completions (every running task equally
/// likely to end next, so an executor's service rate is proportional to its slots), pops and
/// flushes. The call queue is modelled as the pure-source queue feeds it: everything pushed
/// goes in one transfer to the first consumer (executor 0), which pops it as slots free.
struct SpreadSim {
    let callerID = peer(1)
    var caller: CallerMachine
    var executors: [ExecutorMachine]
    var ids: [PeerID]
    /// Messages in flight, by (from, to) as indices: -1 is the caller.
    var links: [Int: [RemoteCallMessage]] = [:]
    var running: [(executor: Int, task: TaskID)] = []
    var queueAtFirst: [[UInt8]] = []
    var demand: [Int]
    var executed: [Int]
    /// Credit each executor granted the caller, and the direct items it received from it.
    var granted: [Int]
    var directReceived: [Int]
    var results: [CallID: Result<[UInt8], RemoteCallError>] = [:]
    var rng: SplitMix64

    init(slots: [Int], seed: UInt64) {
        rng = SplitMix64(seed: seed)
        caller = CallerMachine(localPeer: callerID)
        ids = slots.indices.map { peer(UInt8(10 + $0)) }
        executors = []
        demand = Array(repeating: 0, count: slots.count)
        executed = demand
        granted = demand
        directReceived = demand
        for (index, count) in slots.enumerated() {
            var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: count), localPeer: ids[index])
            e.register("work")
            executors.append(e)
            apply(executors[index].start(), at: index)
            executors[index].peerConnected(callerID)  // the caller's link came up
            apply(executors[index].flush(), at: index)
        }
    }

    static func key(_ from: Int, _ to: Int) -> Int { (from + 1) * 64 + (to + 1) }

    mutating func apply(_ actions: [ExecutorAction], at index: Int) {
        for action in actions {
            switch action {
            case .setDemand(let n): demand[index] = n
            case .run(let tasks):
                executed[index] += tasks.count
                running += tasks.map { (index, $0.id) }
            case .send(let message, let to):
                guard to == callerID else { continue }  // an executor's credit to its own node: unused here
                if case .credit(let n) = message { granted[index] += Int(n) }
                links[Self.key(index, -1), default: []].append(message)
            case .resume, .cancelTask, .discard: break
            }
        }
    }

    mutating func apply(_ actions: [CallerAction]) {
        for action in actions {
            switch action {
            case .push(_, let item): queueAtFirst.append(item)
            case .send(let message, let to): links[Self.key(-1, ids.firstIndex(of: to)!), default: []].append(message)
            case .complete(let id, let result): results[id] = result
            case .removeFromQueue, .armTimer, .capacityAvailable: break
            }
        }
    }

    /// Delivers what is on the links now (the executors' first credit) to the caller.
    mutating func settle() {
        for key in links.keys.sorted() where key % 64 == 0 {
            for message in links.removeValue(forKey: key)! { apply(caller.received(message, from: ids[key / 64 - 1], now: 0)) }
        }
    }

    mutating func run(calls: Int) {
        let (_, actions) = caller.call(batch: (0..<calls).map { .init(function: "work", arguments: [UInt8($0 & 0xFF)]) }, now: 0)
        apply(actions)
        var events = 0
        while results.count < calls && events < 1_000_000 {
            events += 1
            var choices: [(kind: Int, arg: Int)] = links.keys.sorted().map { (0, $0) }
            if !running.isEmpty { choices.append((1, 0)) }
            if demand[0] > 0 && !queueAtFirst.isEmpty { choices.append((2, 0)) }
            choices.append((3, Int(rng.next() % UInt64(executors.count))))
            let choice = choices[Int(rng.next() % UInt64(choices.count))]
            switch choice.kind {
            case 0:
                let message = links[choice.arg]!.removeFirst()
                if links[choice.arg]!.isEmpty { links[choice.arg] = nil }
                let from = choice.arg / 64 - 1, to = choice.arg % 64 - 1
                if to == -1 {
                    apply(caller.received(message, from: ids[from], now: 0))
                } else if case .direct(let items) = message {
                    directReceived[to] += items.count
                    apply(executors[to].direct(items, from: callerID, wallClock: 0), at: to)
                } else if case .directRun(let run) = message {
                    directReceived[to] += run.count
                    apply(executors[to].directRun(run, from: callerID, wallClock: 0), at: to)
                } else {
                    apply(executors[to].received(message, from: callerID), at: to)
                }
            case 1:
                let (index, task) = running.remove(at: Int(rng.next() % UInt64(running.count)))
                apply(executors[index].finished(task, outcome: .success([1])), at: index)
            case 2:
                let items = Array(queueAtFirst.prefix(demand[0]))
                queueAtFirst.removeFirst(items.count)
                apply(executors[0].popped(items, wallClock: 0), at: 0)
            default:
                apply(executors[choice.arg].flush(), at: choice.arg)
            }
        }
    }
}

@Suite struct SpreadTests {
    @Test("A burst of 200 calls spreads over 4 executors with 4 slots each, every one within ±25 % of the mean", arguments: 1...5 as ClosedRange<UInt64>)
    func burstSpreadsEvenly(seed: UInt64) {
        var sim = SpreadSim(slots: [4, 4, 4, 4], seed: seed)
        sim.settle()  // the links came up a while before the calls
        sim.run(calls: 200)
        #expect(sim.results.count == 200)
        #expect(sim.results.values.allSatisfy { (try? $0.get()) == [1] })
        #expect(sim.executed.reduce(0, +) == 200)
        for count in sim.executed { #expect(count >= 37 && count <= 63, "calls per executor: \(sim.executed)") }
        // Bounded credit: nobody received more direct calls than it granted.
        for index in sim.executors.indices { #expect(sim.directReceived[index] <= sim.granted[index]) }
        #expect(sim.caller.callsWaitingForCredit == 0)
    }

    @Test("Calls go to executors in proportion to their free slots and service rate", arguments: 1...3 as ClosedRange<UInt64>)
    func spreadFollowsSlotsAndRate(seed: UInt64) {
        // The first executor has twice the slots, so (every running task being equally likely
        // to end next) twice the service rate: it gets 2/5 of the calls, the others 1/5 each.
        var sim = SpreadSim(slots: [8, 4, 4, 4], seed: seed)
        sim.settle()
        sim.run(calls: 400)
        #expect(sim.results.count == 400)
        #expect(sim.executed[0] >= 120 && sim.executed[0] <= 200, "calls per executor: \(sim.executed)")
        for count in sim.executed.dropFirst() { #expect(count >= 60 && count <= 100, "calls per executor: \(sim.executed)") }
    }
}
