import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// An in-memory cluster: each node has a caller, an executor and a local FIFO call queue;
/// idle nodes steal from other queues (the queue's balancing), links deliver in order per
/// pair, and a random scheduler interleaves deliveries, pops, task steps and flushes.
///
/// User functions are modelled as resumable tasks: `fib(n)` calls `fib(n-1)` and `fib(n-2)`
/// through its node's caller, suspends (giving its slot up), asks to resume when both are
/// done, and finishes after the executor resumes it. The simulation counts the tasks holding a
/// slot on each node itself, from the actions, and checks the limit after every action.
struct SimCluster {
    enum Phase { case ready, waiting, resumed }

    struct SimTask {
        var function: String
        var n: Int
        var phase: Phase = .ready
        var children: [CallID] = []
        var childResults: [CallID: Result<[UInt8], RemoteCallError>] = [:]
        var cancelled = false
    }

    struct Node {
        var id: PeerID
        var caller: CallerMachine
        var executor: ExecutorMachine
        var queue: [[UInt8]] = []
        var demand = 0
        var alive = true
        var holding: Set<TaskID> = []
        var needsStep: [TaskID] = []
        var tasks: [TaskID: SimTask] = [:]
        var parentOf: [CallID: TaskID] = [:]
        var maxHolding = 0
    }

    var nodes: [Node]
    let slots: Int
    let memoize: Bool
    var links: [Int: [RemoteCallMessage]] = [:]  // key from * 64 + to
    /// Items popped whose started notice (or result) has not reached the caller: what the
    /// queue would re-queue if the popping node died (its pop confirmation follows the notice).
    var custody: [CallID: (node: Int, bytes: [UInt8])] = [:]
    var topResults: [CallID: Result<[UInt8], RemoteCallError>] = [:]
    var rng: SplitMix64
    var violations: [String] = []
    var executionsByNode: [Int] = []
    /// Items the simulated queue re-queued after a death.
    var requeued = 0
    /// Call items that went straight to an executor on its credit.
    var directItems = 0

    init(nodeCount: Int, slots: Int, memoize: Bool, seed: UInt64, maxRetries: Int = 3, directCalls: Bool = true) {
        self.slots = slots
        self.memoize = memoize
        rng = SplitMix64(seed: seed)
        nodes = (0..<nodeCount).map { index in
            let id = peer(UInt8(index + 1))
            var executor = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: slots, grantsCredit: directCalls), localPeer: id)
            executor.register("fib")
            executor.register("boom")
            return Node(id: id, caller: CallerMachine(localPeer: id, configuration: CallerConfiguration(maxRetries: maxRetries)), executor: executor)
        }
        executionsByNode = Array(repeating: 0, count: nodeCount)
        for index in nodes.indices {
            let actions = nodes[index].executor.start()
            apply(actions, at: index)
        }
    }

    static func encode(_ n: Int) -> [UInt8] { be64(UInt64(n)) }
    static func decode(_ bytes: [UInt8]) -> Int? {
        guard bytes.count == 8 else { return nil }
        return Int(bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    func index(of peer: PeerID) -> Int { nodes.firstIndex { $0.id == peer }! }

    // MARK: Applying actions

    mutating func apply(_ actions: [ExecutorAction], at node: Int) {
        for action in actions {
            switch action {
            case .setDemand(let n): nodes[node].demand = n
            case .run(let tasks):
                for task in tasks {
                    let n = Self.decode(task.arguments) ?? -1
                    nodes[node].tasks[task.id] = SimTask(function: task.function, n: n)
                    hold(task.id, at: node)
                    executionsByNode[node] += 1
                }
            case .resume(let ids):
                for id in ids {
                    nodes[node].tasks[id]?.phase = .resumed
                    hold(id, at: node)
                }
            case .cancelTask(let id):
                guard var task = nodes[node].tasks[id] else { break }
                task.cancelled = true
                nodes[node].tasks[id] = task
                if task.phase == .waiting {
                    // Cancellation propagates to the awaited calls.
                    for child in task.children where task.childResults[child] == nil {
                        let more = nodes[node].caller.cancel(child, now: 0)
                        apply(more, at: node)
                    }
                }
            case .send(let message, let to):
                send(message, from: node, to: index(of: to))
            case .discard(let error):
                violations.append("discarded \(error)")
            }
        }
    }

    mutating func apply(_ actions: [CallerAction], at node: Int) {
        for action in actions {
            switch action {
            case .push(_, let item): nodes[node].queue.append(item)
            case .removeFromQueue(let id): nodes[node].queue.removeAll { CallItem.header(of: $0) == id }
            case .send(let message, let to): send(message, from: node, to: index(of: to))
            case .complete(let id, let result):
                if let parent = nodes[node].parentOf.removeValue(forKey: id) {
                    childDone(id, result, parent: parent, at: node)
                } else {
                    topResults[id] = result
                }
            case .armTimer, .capacityAvailable: break
            }
        }
    }

    mutating func hold(_ task: TaskID, at node: Int) {
        nodes[node].holding.insert(task)
        nodes[node].needsStep.append(task)
        nodes[node].maxHolding = max(nodes[node].maxHolding, nodes[node].holding.count)
        if nodes[node].holding.count > slots {
            violations.append("node \(node) runs \(nodes[node].holding.count) tasks with \(slots) slots")
        }
    }

    mutating func send(_ message: RemoteCallMessage, from: Int, to: Int) {
        guard nodes[from].alive, nodes[to].alive else { return }
        links[from * 64 + to, default: []].append(message)
    }

    mutating func childDone(_ id: CallID, _ result: Result<[UInt8], RemoteCallError>, parent: TaskID, at node: Int) {
        guard var task = nodes[node].tasks[parent] else { return }
        task.childResults[id] = result
        nodes[node].tasks[parent] = task
        if task.phase == .waiting && task.childResults.count == task.children.count {
            let actions = nodes[node].executor.requestResume(parent)
            apply(actions, at: node)
        }
    }

    // MARK: Events

    /// Runs one step of a task holding a slot.
    mutating func step(_ id: TaskID, at node: Int) {
        guard let task = nodes[node].tasks[id] else { return }
        var outcome: CallOutcome?
        if task.cancelled {
            outcome = .thrown(typeName: "CancellationError", description: "cancelled")
        } else if task.function == "boom" {
            outcome = .thrownTruncating(typeName: "SimError", description: "boom \(task.n)")
        } else if task.n < 0 {
            outcome = .badArguments("expected 8 bytes")
        } else if task.phase == .resumed {
            var sum = 0
            for child in task.children {
                switch task.childResults[child] {
                case .success(let bytes)?: sum += Self.decode(bytes) ?? 0
                case .failure(let error)?: outcome = .thrownTruncating(typeName: "RemoteCallError", description: error.description)
                case nil: outcome = .thrown(typeName: "SimError", description: "resumed early")
                }
                if outcome != nil { break }
            }
            if outcome == nil { outcome = .success(Self.encode(sum)) }
        } else if task.n < 2 {
            outcome = .success(Self.encode(task.n))
        }
        if let outcome {
            nodes[node].holding.remove(id)
            nodes[node].tasks[id] = nil
            let actions = nodes[node].executor.finished(id, outcome: outcome)
            apply(actions, at: node)
            return
        }
        // Nested calls: make both, give the slot up, then let their answers in.
        var pending: [CallerAction] = []
        var children: [CallID] = []
        for k in [task.n - 1, task.n - 2] {
            let (child, actions) = nodes[node].caller.call(function: "fib", arguments: Self.encode(k), memoize: memoize, now: 0)
            children.append(child)
            nodes[node].parentOf[child] = id
            pending += actions
        }
        nodes[node].tasks[id]!.children = children
        nodes[node].tasks[id]!.phase = .waiting
        nodes[node].holding.remove(id)
        apply(nodes[node].executor.suspend(id), at: node)
        apply(pending, at: node)
    }

    mutating func deliver(link key: Int) {
        let from = key / 64, to = key % 64
        let message = links[key]!.removeFirst()
        if links[key]!.isEmpty { links[key] = nil }
        let sender = nodes[from].id
        switch message {
        case .results(let entries):
            for entry in entries { clearCustody(CallID(caller: nodes[to].id, sequence: entry.sequence), node: from) }
            apply(nodes[to].caller.received(message, from: sender, now: 0), at: to)
        case .started(let entries):
            for entry in entries { clearCustody(CallID(caller: nodes[to].id, sequence: entry.sequence), node: from) }
            apply(nodes[to].caller.received(message, from: sender, now: 0), at: to)
        case .cancel:
            apply(nodes[to].executor.received(message, from: sender), at: to)
        case .direct(let items):
            directItems += items.count
            apply(nodes[to].executor.direct(items, from: sender, wallClock: 0), at: to)
        case .directRun(let run):
            directItems += run.count
            apply(nodes[to].executor.directRun(run, from: sender, wallClock: 0), at: to)
        case .resultRun(let run):
            for entry in run.entries { clearCustody(CallID(caller: nodes[to].id, sequence: entry.sequence), node: from) }
            apply(nodes[to].caller.received(message, from: sender, now: 0), at: to)
        case .credit:
            apply(nodes[to].caller.received(message, from: sender, now: 0), at: to)
        }
    }

    mutating func clearCustody(_ id: CallID, node: Int) {
        if custody[id]?.node == node { custody[id] = nil }
    }

    mutating func pop(at node: Int) {
        var items: [[UInt8]] = []
        while items.count < nodes[node].demand, !nodes[node].queue.isEmpty { items.append(nodes[node].queue.removeFirst()) }
        if items.isEmpty {
            let victims = nodes.indices.filter { $0 != node && nodes[$0].alive && !nodes[$0].queue.isEmpty }
            guard !victims.isEmpty else { return }
            let victim = victims[Int(rng.next() % UInt64(victims.count))]
            items.append(nodes[victim].queue.removeFirst())
        }
        for item in items { if let id = CallItem.header(of: item) { custody[id] = (node, item) } }
        apply(nodes[node].executor.popped(items, wallClock: 0), at: node)
    }

    mutating func flush(_ node: Int) {
        apply(nodes[node].executor.flush(), at: node)
    }

    /// Kills a node: its links go silent, the queue re-queues what it held and what it popped
    /// without confirming, and membership tells everybody.
    mutating func kill(_ node: Int) {
        nodes[node].alive = false
        links = links.filter { $0.key / 64 != node && $0.key % 64 != node }
        let survivors = nodes.indices.filter { nodes[$0].alive }
        var requeue = nodes[node].queue
        nodes[node].queue = []
        for (id, entry) in custody where entry.node == node {
            requeue.append(entry.bytes)
            custody[id] = nil
        }
        requeued += requeue.count
        for item in requeue { nodes[survivors[Int(rng.next() % UInt64(survivors.count))]].queue.append(item) }
        let dead = nodes[node].id
        for other in survivors {
            apply(nodes[other].caller.peerDied(dead, now: 0), at: other)
            apply(nodes[other].executor.peerDied(dead), at: other)
        }
    }

    /// Runs until `done` or nothing can happen; returns the number of events.
    @discardableResult
    mutating func run(maxEvents: Int = 2_000_000, killAt: (event: Int, node: Int)? = nil, until done: (SimCluster) -> Bool) -> Int {
        var events = 0
        while events < maxEvents && !done(self) {
            // Kill the node at the first moment after `event` when it is executing something.
            if let killAt, events >= killAt.event, nodes[killAt.node].alive, !nodes[killAt.node].tasks.isEmpty {
                kill(killAt.node)
            }
            events += 1
            var choices: [(kind: Int, arg: Int)] = []
            for key in links.keys.sorted() { choices.append((0, key)) }
            for node in nodes.indices where nodes[node].alive {
                if nodes[node].demand > 0 && nodes.contains(where: { $0.alive && !$0.queue.isEmpty }) { choices.append((1, node)) }
                if !nodes[node].needsStep.isEmpty { choices.append((2, node)) }
            }
            if choices.isEmpty {
                // Nothing but batched notices left: flush every node.
                let before = links.count
                for node in nodes.indices where nodes[node].alive { flush(node) }
                if links.count == before && links.isEmpty { break }
                continue
            }
            if rng.next() % 4 == 0 {
                let alive = nodes.indices.filter { nodes[$0].alive }
                flush(alive[Int(rng.next() % UInt64(alive.count))])
            }
            let choice = choices[Int(rng.next() % UInt64(choices.count))]
            switch choice.kind {
            case 0: deliver(link: choice.arg)
            case 1: pop(at: choice.arg)
            default:
                let list = nodes[choice.arg].needsStep
                let pick = Int(rng.next() % UInt64(list.count))
                let task = nodes[choice.arg].needsStep.remove(at: pick)
                step(task, at: choice.arg)
            }
        }
        return events
    }

    mutating func call(_ function: String, _ n: Int, at node: Int, memoize: Bool? = nil) -> CallID {
        let (id, actions) = nodes[node].caller.call(function: function, arguments: Self.encode(n), memoize: memoize ?? self.memoize, now: 0)
        apply(actions, at: node)
        return id
    }
}

func fibonacci(_ n: Int) -> Int { n < 2 ? n : (1..<n).reduce((0, 1)) { pair, _ in (pair.1, pair.0 + pair.1) }.1 }

@Suite struct SimulationTests {
    @Test("Recursive fib with maxConcurrentCalls = 1 on 3 nodes finishes with the right result", arguments: 1...6 as ClosedRange<UInt64>)
    func recursiveFibOneSlot(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: false, seed: seed)
        let id = sim.call("fib", 11, at: 0)
        sim.run { $0.topResults[id] != nil }
        #expect(sim.violations.isEmpty, "\(sim.violations.prefix(3))")
        let result = try #require(sim.topResults[id])
        #expect(try SimCluster.decode(result.get()) == fibonacci(11))
        #expect(sim.nodes.allSatisfy { $0.maxHolding <= 1 })
        // Idle nodes helped.
        #expect(sim.executionsByNode.filter { $0 > 0 }.count >= 2, "\(sim.executionsByNode)")
        // After the first calls went through the queue, executors credited their callers.
        #expect(sim.directItems > 0)
    }

    @Test("Memoized fib(40) on 3 nodes, one slot each", arguments: 1...3 as ClosedRange<UInt64>)
    func memoizedFib(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: true, seed: seed)
        let id = sim.call("fib", 40, at: 1)
        sim.run { $0.topResults[id] != nil }
        #expect(sim.violations.isEmpty)
        #expect(try SimCluster.decode(#require(sim.topResults[id]).get()) == fibonacci(40))
        // Memoization and coalescing keep the executions near linear in n.
        #expect(sim.executionsByNode.reduce(0, +) < 40 * 3 * 3)
    }

    @Test("maxConcurrentCalls is never exceeded under random interleavings", arguments: 1...8 as ClosedRange<UInt64>)
    func slotLimitUnderRandomInterleavings(seed: UInt64) throws {
        let slots = Int(seed % 3) + 1
        // Half the seeds without direct calls: every call through the queue.
        var sim = SimCluster(nodeCount: 4, slots: slots, memoize: seed % 2 == 0, seed: seed &* 7919, directCalls: seed % 4 < 2)
        let calls = (0..<6).map { sim.call("fib", 6 + $0, at: $0 % 4) }
        sim.run { sim in calls.allSatisfy { sim.topResults[$0] != nil } }
        #expect(sim.violations.isEmpty, "\(sim.violations.prefix(3))")
        for (k, id) in calls.enumerated() {
            #expect(try SimCluster.decode(#require(sim.topResults[id]).get()) == fibonacci(6 + k))
        }
        #expect(sim.nodes.allSatisfy { $0.maxHolding <= slots })
        #expect(sim.nodes.allSatisfy { $0.executor.slotsInUse == 0 && $0.executor.taskCount == 0 })
    }

    @Test("Errors, unknown functions and bad arguments come back; workers go on")
    func errorsInTheCluster() throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: false, seed: 5)
        let boom = sim.call("boom", 3, at: 0)
        let (unknown, a1) = sim.nodes[0].caller.call(function: "missing", arguments: [], now: 0)
        sim.apply(a1, at: 0)
        let (bad, a2) = sim.nodes[0].caller.call(function: "fib", arguments: [1, 2, 3], now: 0)
        sim.apply(a2, at: 0)
        let good = sim.call("fib", 7, at: 0)
        sim.run { sim in [boom, unknown, bad, good].allSatisfy { sim.topResults[$0] != nil } }
        #expect(sim.topResults[boom] == .failure(.remote(typeName: "SimError", description: "boom 3")))
        #expect(sim.topResults[unknown] == .failure(.unknownFunction("missing")))
        #expect(sim.topResults[bad] == .failure(.badArguments(function: "fib", description: "expected 8 bytes")))
        #expect(try SimCluster.decode(#require(sim.topResults[good]).get()) == 13)
    }

    @Test("A node dies while executing: its calls run again elsewhere and the result is right", arguments: 1...6 as ClosedRange<UInt64>)
    func executorDeath(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: false, seed: seed)
        let id = sim.call("fib", 10, at: 0)
        sim.run(killAt: (event: 150 + Int(seed) * 40, node: 2)) { $0.topResults[id] != nil }
        #expect(!sim.nodes[2].alive)
        #expect(sim.violations.isEmpty)
        #expect(try SimCluster.decode(#require(sim.topResults[id]).get()) == fibonacci(10))
        #expect(sim.nodes[0].caller.outstandingCalls == 0)
        // Calls node 2 was running were retried by their callers.
        let retries = sim.nodes[0].caller.counters.retries + sim.nodes[1].caller.counters.retries
        // (Seeds are fixed: in each, node 2 dies while running a call that another node made.)
        #expect(retries >= 1)
    }

    @Test("Calls whose caller died are dropped, not run")
    func deadCallerDropped() {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: false, seed: 9)
        // Node 2's executor stops, so its calls wait in queues; then node 2 dies.
        let stopped = sim.nodes[2].executor.stop()
        sim.apply(stopped, at: 2)
        for n in 0..<5 { _ = sim.call("fib", 1 + n % 2, at: 2) }
        // Move them to node 0's queue (as balancing would) before the death.
        sim.nodes[0].queue += sim.nodes[2].queue
        sim.nodes[2].queue = []
        sim.kill(2)
        sim.run { _ in false }
        #expect(sim.executionsByNode[0] + sim.executionsByNode[1] == 0)
        #expect(sim.nodes[0].executor.counters.droppedDeadCaller + sim.nodes[1].executor.counters.droppedDeadCaller == 5)
    }

    @Test("100 concurrent identical memoized calls from each of 3 nodes: one execution per node at most", arguments: 1...3 as ClosedRange<UInt64>)
    func memoCoalescingInTheCluster(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: true, seed: seed)
        var ids: [CallID] = []
        for node in 0..<3 { for _ in 0..<100 { ids.append(sim.call("boom", 1, at: node)) } }
        for node in 0..<3 { for _ in 0..<100 { ids.append(sim.call("fib", 1, at: node)) } }
        sim.run { sim in ids.allSatisfy { sim.topResults[$0] != nil } }
        // Each caller pushed one item per distinct call; executors may merge those further.
        #expect(sim.executionsByNode.reduce(0, +) <= 6)
        #expect(ids.prefix(300).allSatisfy { sim.topResults[$0] == .failure(.remote(typeName: "SimError", description: "boom 1")) })
        #expect(ids.suffix(300).allSatisfy { (try? sim.topResults[$0]?.get()).flatMap(SimCluster.decode) == 1 })
        // The failure was not cached anywhere; the success was.
        #expect(sim.nodes.allSatisfy { !$0.caller.isCached(function: "boom", arguments: SimCluster.encode(1)) })
        #expect(sim.nodes.allSatisfy { $0.caller.isCached(function: "fib", arguments: SimCluster.encode(1)) })
    }

    @Test("Cancelling a running recursive call frees everything in the cluster", arguments: 1...6 as ClosedRange<UInt64>)
    func cancelRunningTree(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 3, slots: 1, memoize: false, seed: seed)
        let id = sim.call("fib", 14, at: 0)
        sim.run(maxEvents: 300 + Int(seed) * 50) { $0.topResults[id] != nil }
        #expect(sim.topResults[id] == nil)
        sim.apply(sim.nodes[0].caller.cancel(id, now: 0), at: 0)
        #expect(sim.topResults[id] == .failure(.cancelled(function: "fib")))
        // Run to quiescence: nothing may be left running, waiting or queued.
        sim.run { _ in false }
        #expect(sim.violations.isEmpty)
        for node in sim.nodes {
            #expect(node.caller.outstandingCalls == 0)
            #expect(node.executor.taskCount == 0 && node.executor.slotsInUse == 0 && node.executor.backlogCount == 0)
            #expect(node.queue.isEmpty && node.tasks.isEmpty)
        }
        #expect(sim.executionsByNode.reduce(0, +) < 2 * fibonacci(15) - 1)  // stopped early
    }

    @Test("Cancelling a queued call removes its item")
    func cancelQueued() {
        var sim = SimCluster(nodeCount: 2, slots: 1, memoize: false, seed: 3)
        for node in 0..<2 { sim.apply(sim.nodes[node].executor.stop(), at: node) }
        let id = sim.call("fib", 5, at: 0)
        #expect(sim.nodes[0].queue.count == 1)
        sim.apply(sim.nodes[0].caller.cancel(id, now: 0), at: 0)
        #expect(sim.nodes[0].queue.isEmpty)
        #expect(sim.topResults[id] == .failure(.cancelled(function: "fib")))
    }

    @Test("Two of four nodes die at random moments: every call still ends, with the right result", arguments: 1...8 as ClosedRange<UInt64>)
    func twoDeaths(seed: UInt64) throws {
        var sim = SimCluster(nodeCount: 4, slots: 1, memoize: false, seed: seed &* 31)
        let calls = [sim.call("fib", 9, at: 0), sim.call("fib", 8, at: 1)]
        var rng = SplitMix64(seed: seed)
        let first = 20 + Int(rng.next() % 100)
        sim.run(killAt: (event: first, node: 2)) { sim in calls.allSatisfy { sim.topResults[$0] != nil } || !sim.nodes[2].alive }
        sim.run(killAt: (event: Int(rng.next() % 200), node: 3)) { sim in calls.allSatisfy { sim.topResults[$0] != nil } }
        #expect(sim.violations.isEmpty)
        #expect(try SimCluster.decode(#require(sim.topResults[calls[0]]).get()) == fibonacci(9))
        #expect(try SimCluster.decode(#require(sim.topResults[calls[1]]).get()) == fibonacci(8))
        #expect(sim.nodes[0].caller.outstandingCalls == 0 && sim.nodes[1].caller.outstandingCalls == 0)
        #expect(!sim.nodes[2].alive && !sim.nodes[3].alive)
    }
}
