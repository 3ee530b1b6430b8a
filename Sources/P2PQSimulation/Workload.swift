import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQWire

/// Pushes numbered items into a queue through the node machine's API.
public struct Producer: Sendable, Hashable {
    /// Where the items are pushed.
    public enum Target: Sendable, Hashable {
        /// Always at this node (nothing while it is crashed or stopped).
        case node(Int)
        /// At each running node in turn.
        case spread
    }

    public var target: Target
    public var queue: String
    /// Items in all.
    public var items: Int
    /// Items per push.
    public var batch: Int
    /// Simulated time between pushes (0: as fast as they are accepted).
    public var interval: UInt64
    /// When the first push happens.
    public var start: UInt64

    public init(_ target: Target, queue: String = "work", items: Int, batch: Int = 1,
                interval: UInt64 = 10 * simulatedMillisecond, start: UInt64 = 0) {
        self.target = target
        self.queue = queue
        self.items = items
        self.batch = max(1, batch)
        self.interval = interval
        self.start = start
    }
}

/// Pops one item at a time from a queue at one node, works on it for a task duration, pops
/// again (waiting when nothing is there). Its process dies with its node and starts again with
/// it.
public struct Consumer: Sendable, Hashable {
    public var node: Int
    public var queue: String
    public var taskDuration: DelayDistribution
    public var start: UInt64

    public init(node: Int, queue: String = "work", taskDuration: DelayDistribution = .fixed(simulatedMillisecond),
                start: UInt64 = 0) {
        self.node = node
        self.queue = queue
        self.taskDuration = taskDuration
        self.start = start
    }
}

/// What the producers and consumers did, item by item (an item is producer << 32 | number).
public struct WorkloadLedger: Sendable {
    /// Acknowledged items (their push accepted and, with replicas, the replica acknowledged):
    /// when, and by which node.
    public internal(set) var acknowledged: [UInt64: (time: UInt64, node: Int)] = [:]
    /// Items accepted but never acknowledged (their node crashed before the replica's ack).
    public internal(set) var unacknowledged = 0
    /// Items whose push completed unreplicated under ``Replication/replicated``: their owner's
    /// queue says, at the acknowledgement, that it has the only copy (no peer kept a replica:
    /// none was linked and alive, or the replica peers all died or left meanwhile; docs/api.md,
    /// Replication).
    public internal(set) var acknowledgedAlone: Set<UInt64> = []
    /// Of those, the items still with their only copy at their owner when it crashed.
    public internal(set) var diedUnreplicated: Set<UInt64> = []
    /// Where each pushed item went: its queue, its sequence number there, and the incarnation
    /// of the node that numbered it (sequences restart with a new process).
    var placed: [UInt64: (queue: String, sequence: UInt64, incarnation: UInt64)] = [:]
    /// Deliveries per item.
    public internal(set) var pops: [UInt64: Int] = [:]
    /// Popped payloads no producer made.
    public internal(set) var unexpected = 0
    /// Crashes, in order.
    public internal(set) var crashes: [(node: Int, time: UInt64)] = []
    /// When each node's consumers first took an item, and when the last task ends.
    public internal(set) var firstTaskAt: [Int: UInt64] = [:]
    public internal(set) var lastTaskEnd: UInt64 = 0
    /// Work handed to consumers (sum of task durations).
    public internal(set) var totalWork: UInt64 = 0

    static func id(producer: Int, number: Int) -> UInt64 { UInt64(producer) << 32 | UInt64(UInt32(truncatingIfNeeded: number)) }

    static func payload(_ id: UInt64) -> [UInt8] { withUnsafeBytes(of: id.littleEndian) { Array($0) } }

    static func id(of payload: some Collection<UInt8>) -> UInt64? {
        guard payload.count == 8 else { return nil }
        return payload.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func name(_ id: UInt64) -> String { "\(id >> 32):\(id & 0xFFFF_FFFF)" }
}

/// The delivery invariants of a run (``ClusterSimulation/checkDeliveries(faultFree:)``).
public struct DeliveryReport: Sendable, Hashable {
    public var acknowledged = 0
    public var unacknowledged = 0
    /// Distinct items popped, and pops counting repeats.
    public var popped = 0
    public var deliveries = 0
    /// Extra deliveries (`deliveries - popped`) and the items delivered more than once.
    public var duplicates = 0
    public var duplicatedItems = 0
    /// Acknowledged items never popped: must be 0.
    public var lost = 0
    /// Acknowledged items never popped whose owner (the node that pushed them) crashed after
    /// their push, and another node too: both copies may have died, which replication does not
    /// cover (the reliability checker's exception, `FaultCheck`). Not in ``lost``.
    public var lostBothHoldersDied = 0
    /// Acknowledged items never popped whose push completed unreplicated
    /// (``WorkloadLedger/acknowledgedAlone``) and whose owner still had the only copy when it
    /// crashed (``WorkloadLedger/diedUnreplicated``, by the owner's own records): the
    /// documented loss of a push that completes unreplicated. Not in ``lost``; an item
    /// replicated after all, or passed on, before the crash is not in it.
    public var lostUnreplicated = 0
    public var unexpected = 0
    public var lostSample: [String] = []
}

/// How long the membership invariants allow (``ClusterSimulation/Configuration/invariants``).
public struct InvariantBounds: Sendable, Hashable {
    /// A running member that a running node can reach both ways may be held dead by it this long.
    public var deadBound: UInt64 = 10 * simulatedSecond
    /// How often that is checked.
    public var checkInterval: UInt64 = 250 * simulatedMillisecond

    public init(deadBound: UInt64 = 10 * simulatedSecond, checkInterval: UInt64 = 250 * simulatedMillisecond) {
        self.deadBound = deadBound
        self.checkInterval = checkInterval
    }
}

/// The producers' and consumers' progress inside a simulation.
struct WorkloadState {
    var producers: [Producer] = []
    var produced: [Int] = []
    var turn: [Int] = []
    var consumers: [Consumer] = []
    /// Consumers waiting for an item, by node and waiter.
    var waiting: [Int: [WaiterID: Int]] = [:]
    var nextWaiter: UInt64 = 1 << 32
    /// Accepted pushes awaiting their replica's ack, by node, in order.
    var pending: [Int: [(queue: String, mark: UInt64, ids: [UInt64])]] = [:]
    var queues: Set<String> = []
    var ledger = WorkloadLedger()
    /// Since when a running node holds a running, reachable member dead (key: observer, subject).
    var deadSince: [[Int]: UInt64] = [:]
    var reported: Set<[Int]> = []
}

extension ClusterSimulation {
    /// Adds a producer; it starts at ``Producer/start`` (or now, if that is past).
    public mutating func add(_ producer: Producer) {
        let index = workload.producers.count
        workload.producers.append(producer)
        workload.produced.append(0)
        workload.turn.append(0)
        workload.queues.insert(producer.queue)
        events.schedule(.produce(producer: index), at: max(now, producer.start))
    }

    /// Adds a consumer; it starts at ``Consumer/start`` (or now, if that is past).
    public mutating func add(_ consumer: Consumer) {
        let index = workload.consumers.count
        workload.consumers.append(consumer)
        workload.queues.insert(consumer.queue)
        events.schedule(.consume(node: consumer.node, consumer: index), at: max(now, consumer.start))
    }

    /// What the producers and consumers did so far.
    public var ledger: WorkloadLedger { workload.ledger }

    /// Whether every producer has pushed all its items.
    public var producersDone: Bool {
        workload.producers.indices.allSatisfy { workload.produced[$0] >= workload.producers[$0].items }
    }

    func isRunning(_ n: Int) -> Bool { !crashed.contains(n) && !paused.contains(n) && !stopped.contains(n) }

    mutating func produce(_ index: Int) {
        let producer = workload.producers[index]
        let left = producer.items - workload.produced[index]
        guard left > 0 else { return }
        let retry = max(producer.interval, 10 * simulatedMillisecond)
        let node: Int
        switch producer.target {
        case .node(let n):
            guard isRunning(n) else {
                events.schedule(.produce(producer: index), at: now + retry)
                return
            }
            node = n
        case .spread:
            let count = machines.count, turn = workload.turn[index]
            guard let next = (0..<count).map({ (turn + $0) % count }).first(where: { isRunning($0) }) else {
                events.schedule(.produce(producer: index), at: now + retry)
                return
            }
            workload.turn[index] = next + 1
            node = next
        }
        let first = workload.produced[index]
        let ids = (first..<first + min(left, producer.batch)).map { WorkloadLedger.id(producer: index, number: $0) }
        let outcome = push(ids.map(WorkloadLedger.payload), at: node, into: producer.queue)
        if outcome == .accepted {
            // The push numbered its items consecutively, up to the queue's next sequence (the
            // queue may have been made by this push).
            if let next = machines[node].queues[producer.queue]?.nextItemSequence {
                let firstSequence = next &- UInt64(ids.count)
                for (offset, id) in ids.enumerated() {
                    workload.ledger.placed[id] = (producer.queue, firstSequence &+ UInt64(offset), incarnations[node])
                }
            }
            workload.produced[index] += ids.count
            if let mark = machines[node].replicaMark(in: producer.queue) {
                workload.pending[node, default: []].append((producer.queue, mark, ids))
            } else {
                acknowledge(ids, at: node)
            }
        }
        // Refused (full): the same items again later.
        if workload.produced[index] < producer.items {
            events.schedule(.produce(producer: index), at: now + (outcome == .accepted ? producer.interval : retry))
        }
    }

    /// Acknowledges the pushes at `node` whose replicas are now acknowledged.
    mutating func completePushes(at node: Int) {
        guard var pending = workload.pending[node], !pending.isEmpty else { return }
        while let first = pending.first,
              machines[node].queues[first.queue].map({ !$0.awaitsReplica(before: first.mark) }) ?? true {
            acknowledge(first.ids, at: node)
            pending.removeFirst()
        }
        workload.pending[node] = pending
    }

    /// Pushes of `ids` at `node` complete (answered, as a client would be).
    mutating func acknowledge(_ ids: [UInt64], at node: Int) {
        for id in ids {
            workload.ledger.acknowledged[id] = (now, node)
            // Under `.local` every push completes unreplicated: a loss there is a loss.
            if let placed = workload.ledger.placed[id], machines[node].queues[placed.queue]?.configuration.replication == .replicated,
               hasOnlyCopy(of: id, at: node) {
                workload.ledger.acknowledgedAlone.insert(id)
            }
        }
    }

    /// Whether `node`'s queue holds the only copy of item `id`, by its own ownership records.
    func hasOnlyCopy(of id: UInt64, at node: Int) -> Bool {
        guard let placed = workload.ledger.placed[id], placed.incarnation == incarnations[node],
              let queue = machines[node].queues[placed.queue] else { return false }
        return queue.hasOnlyCopyHere(placed.sequence)
    }

    mutating func consume(_ index: Int) {
        let consumer = workload.consumers[index]
        guard !stopped.contains(consumer.node) else { return }
        workload.nextWaiter += 1
        let waiter = WaiterID(workload.nextWaiter)
        let items = pop(consumer.queue, at: consumer.node, max: 1, waiter: workload.nextWaiter)
        if items.isEmpty {
            workload.waiting[consumer.node, default: [:]][waiter] = index
        } else {
            work(on: items, by: index)
        }
    }

    /// `consumer` takes `items`: each is counted as popped, and it pops again once its tasks end.
    mutating func work(on items: some Collection<[UInt8]>, by consumer: Int) {
        let node = workload.consumers[consumer].node
        var duration: UInt64 = 0
        for _ in items { duration += workload.consumers[consumer].taskDuration.sample(&workloadRandom) }
        if workload.ledger.firstTaskAt[node] == nil { workload.ledger.firstTaskAt[node] = now }
        workload.ledger.lastTaskEnd = max(workload.ledger.lastTaskEnd, now + duration)
        workload.ledger.totalWork += duration
        events.schedule(.consume(node: node, consumer: consumer), at: now + duration)
    }

    /// Items `node` handed to a waiting pop of `queue`.
    mutating func delivered(_ items: [[UInt8]], of queue: String, to waiter: WaiterID, at node: Int) {
        guard workload.queues.contains(queue) else { return }
        countPops(items)
        if let consumer = workload.waiting[node]?.removeValue(forKey: waiter) { work(on: items, by: consumer) }
    }

    /// A waiting pop failed: its consumer tries again a little later.
    mutating func popFailed(_ waiter: WaiterID, at node: Int) {
        guard let consumer = workload.waiting[node]?.removeValue(forKey: waiter) else { return }
        events.schedule(.consume(node: node, consumer: consumer), at: now + 100 * simulatedMillisecond)
    }

    mutating func countPops(_ items: some Collection<[UInt8]>) {
        for item in items {
            guard let id = WorkloadLedger.id(of: item) else {
                workload.ledger.unexpected += 1
                continue
            }
            workload.ledger.pops[id, default: 0] += 1
        }
    }

    /// The crash of `node` ends its consumers' waits and its pushes not yet acknowledged.
    mutating func workloadCrashed(_ node: Int) {
        workload.ledger.crashes.append((node, now))
        for id in workload.ledger.acknowledgedAlone where workload.ledger.pops[id] == nil && hasOnlyCopy(of: id, at: node) {
            workload.ledger.diedUnreplicated.insert(id)
        }
        workload.waiting[node] = nil
        workload.ledger.unacknowledged += workload.pending.removeValue(forKey: node)?.reduce(0) { $0 + $1.ids.count } ?? 0
    }

    /// A restarted `node` starts its consumers again.
    mutating func workloadRestarted(_ node: Int) {
        for (index, consumer) in workload.consumers.enumerated() where consumer.node == node {
            events.schedule(.consume(node: node, consumer: index), at: max(now, consumer.start))
        }
    }

    // MARK: Invariants

    /// Checks what the consumers popped against what was acknowledged: no acknowledged item
    /// lost (outside the exceptions of ``DeliveryReport/lostBothHoldersDied`` and
    /// ``DeliveryReport/lostUnreplicated``), no payload
    /// nobody pushed, and, when `faultFree`, no duplicate. Each broken one is a failure.
    @discardableResult
    public mutating func checkDeliveries(faultFree: Bool) -> DeliveryReport {
        let ledger = workload.ledger
        var report = DeliveryReport()
        report.acknowledged = ledger.acknowledged.count
        report.unacknowledged = ledger.unacknowledged + workload.pending.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.ids.count } }
        report.popped = ledger.pops.count
        report.deliveries = ledger.pops.values.reduce(0, +)
        report.duplicates = report.deliveries - report.popped
        report.duplicatedItems = ledger.pops.values.filter { $0 > 1 }.count
        report.unexpected = ledger.unexpected
        var lost: [UInt64] = []
        for (id, pushed) in ledger.acknowledged where ledger.pops[id] == nil {
            let ownerDied = ledger.crashes.contains { $0.node == pushed.node && $0.time >= pushed.time }
            let otherDied = ledger.crashes.contains { $0.node != pushed.node && $0.time >= pushed.time }
            if ownerDied && otherDied {
                report.lostBothHoldersDied += 1
            } else if ownerDied && ledger.diedUnreplicated.contains(id) {
                report.lostUnreplicated += 1
            } else {
                lost.append(id)
            }
        }
        lost.sort()
        report.lost = lost.count
        report.lostSample = lost.prefix(10).map(WorkloadLedger.name)
        if report.lost > 0 {
            fail("lost", "\(report.lost) acknowledged items never popped, e.g. \(report.lostSample.joined(separator: ", "))")
        }
        if report.unexpected > 0 { fail("unexpected", "\(report.unexpected) popped payloads nobody pushed") }
        if faultFree && report.duplicates > 0 {
            let sample = ledger.pops.filter { $0.value > 1 }.keys.sorted().prefix(10).map(WorkloadLedger.name)
            fail("duplicate", "\(report.duplicates) duplicate pops in a fault-free run, e.g. \(sample.joined(separator: ", "))")
        }
        return report
    }

    /// Ends every fault: heals the cuts, resumes the paused nodes and turns the network's
    /// faults off (latency jitter stays). Crashed nodes stay crashed.
    public mutating func endFaults() {
        heal()
        for n in paused.sorted() { resume(n) }
        network.resetProbability = 0
        network.resetAfterDeliveryProbability = 0
        network.stallProbability = 0
    }

    /// Checks that every running node's membership holds exactly the other running nodes
    /// alive (a failure for each that does not); call it a bound after ``endFaults()``.
    @discardableResult
    public mutating func checkMembershipConverged() -> Bool {
        var converged = true
        for observer in machines.indices where isRunning(observer) {
            var wrong: [String] = []
            for subject in machines.indices where subject != observer {
                let state = machines[observer].membership.state(of: Self.peer(subject))
                let live = isRunning(subject)
                if live && state != .alive || !live && (state == .alive || state == .suspect) {
                    wrong.append("\(subject): \(state.map(\.rawValue) ?? "unknown")")
                }
            }
            if !wrong.isEmpty {
                converged = false
                fail("membership", "node \(observer) does not hold the live set: \(wrong.joined(separator: ", "))")
            }
        }
        return converged
    }

    /// The periodic check that no running member stays dead, for a node that can reach it both
    /// ways, longer than ``InvariantBounds/deadBound``.
    mutating func checkDeadMembers(_ bounds: InvariantBounds) {
        for observer in machines.indices where isRunning(observer) {
            for subject in machines.indices where subject != observer {
                let key = [observer, subject]
                guard isRunning(subject), !isCut(observer, subject), !isCut(subject, observer),
                      machines[observer].membership.state(of: Self.peer(subject)) == .dead else {
                    workload.deadSince[key] = nil
                    workload.reported.remove(key)
                    continue
                }
                let since = workload.deadSince[key] ?? now
                workload.deadSince[key] = since
                if now - since > bounds.deadBound, workload.reported.insert(key).inserted {
                    fail("dead", "node \(observer) holds running node \(subject) dead since \(Double(since) / 1e9) s")
                }
            }
        }
        events.schedule(.check, at: now + bounds.checkInterval)
    }
}
