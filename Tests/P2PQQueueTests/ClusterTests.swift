import P2PQQueue
import P2PQWire
import Testing

private func allPopped(_ count: Int) -> (Simulation) -> Bool {
    { $0.totalPopped >= count }
}

/// Multiset check: every number in 0..<count popped exactly once.
private func expectExactlyOnce(_ sim: Simulation, _ count: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    var seen = [UInt8](repeating: 0, count: count)
    var duplicates = 0
    var strays = 0
    for numbers in sim.popped.values {
        for n in numbers {
            guard n >= 0 && n < count else { strays += 1; continue }
            if seen[n] > 0 { duplicates += 1 }
            seen[n] &+= 1
        }
    }
    #expect(duplicates == 0, "duplicates", sourceLocation: sourceLocation)
    #expect(strays == 0, "strays", sourceLocation: sourceLocation)
    #expect(seen.allSatisfy { $0 == 1 }, "\(seen.filter { $0 == 0 }.count) missing", sourceLocation: sourceLocation)
}

/// Every number in 0..<count popped at least once; returns the duplicate count.
private func expectNothingLost(_ sim: Simulation, _ count: Int, sourceLocation: SourceLocation = #_sourceLocation) -> Int {
    var seen = [Int](repeating: 0, count: count)
    for numbers in sim.popped.values { for n in numbers where n >= 0 && n < count { seen[n] += 1 } }
    let missing = seen.filter { $0 == 0 }.count
    #expect(missing == 0, "\(missing) items lost", sourceLocation: sourceLocation)
    return seen.reduce(0) { $0 + max(0, $1 - 1) }
}

/// Ping-pong: items sent back to a node they already left. A few come back when a node runs
/// dry at the very end and steals; more than 1% would mean the balancer oscillates.
private func expectFewRevisits(_ sim: Simulation, of count: Int, origin: PeerID? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
    var revisits = 0
    for path in sim.paths.values {
        var visited = Set<PeerID>()
        if let origin { visited.insert(origin) }
        for node in path where !visited.insert(node).inserted { revisits += 1 }
    }
    #expect(revisits <= count / 100, "\(revisits) items came back", sourceLocation: sourceLocation)
}

/// No item visited a node twice (no ping-pong), and none went back to where it was pushed.
private func expectNoPingPong(_ sim: Simulation, origin: PeerID, sourceLocation: SourceLocation = #_sourceLocation) {
    var revisits = 0
    for path in sim.paths.values where Set(path).count != path.count || path.contains(origin) { revisits += 1 }
    #expect(revisits == 0, "\(revisits) items moved back and forth", sourceLocation: sourceLocation)
}

@Suite struct ClusterTests {
    @Test("Exactly once without faults: 4 nodes, 100,000 items pushed at one node, popped on all four")
    func exactlyOnce100k() {
        var sim = Simulation(nodes: 4)
        sim.connectAll()
        for index in 0..<4 { sim.addConsumers(2, at: sim.node(index), taskTime: 40_000) }
        let source = sim.node(0)
        var pushed = 0
        // The producer pushes in batches of 1,000 every millisecond.
        while pushed < 100_000 {
            #expect(sim.push(pushed..<pushed + 1000, at: source) == .accepted)
            pushed += 1000
            sim.run(until: sim.now + 1 * ms)
        }
        let settled = sim.run(for: 60 * second, until: allPopped(100_000))
        #expect(settled)
        expectExactlyOnce(sim, 100_000)
        for index in 0..<4 { #expect(sim.popped[sim.node(index)]!.count > 1000, "node \(index) popped \(sim.popped[sim.node(index)]!.count)") }
        // Confirmations drain the owner's records; nothing stays in flight.
        sim.run(until: sim.now + 1 * second)
        #expect(sim.machines[source]!.ownedItems == 0)
        #expect(sim.machines[source]!.heldBufferCount == 0)
        // 100,000 single-array pushes took as many slots; all confirmed, the table shrank.
        #expect(sim.machines[source]!.heldBufferSlots <= 64)
        #expect(sim.machines[source]!.ownedByteCount == 0)
        for machine in sim.machines.values {
            #expect(machine.transfersInFlight == 0 && machine.heldItems == 0)
            // Every array an item pointed into (pushed batches, received transfers) let go.
            #expect(machine.heldBufferCount == 0 && machine.heldBufferSlots <= 64)
            #expect(machine.counters.duplicatesDropped == 0 && machine.counters.duplicatePops == 0)
            #expect(machine.counters.requeuedAfterDeath == 0 && machine.counters.returnedFromTransfers == 0)
            #expect(machine.pendingNoticeRuns == 0)
        }
        #expect(sim.decodeErrors.isEmpty)
        // Three quarters of the items must move; stealing at the tail moves a few twice.
        let moved = sim.machines.values.reduce(0) { $0 + $1.counters.transferredOut }
        #expect(Double(moved) / 100_000 <= 0.95, "moved \(moved)")
        #expect(sim.paths.values.allSatisfy { $0.count <= 3 }, "max path \(sim.paths.values.map(\.count).max() ?? 0)")
        expectFewRevisits(sim, of: 100_000, origin: source)
    }

    @Test("A producer-only node's items are all consumed by the others; it never attracts work")
    func producerOnly() {
        var sim = Simulation(nodes: 3)
        sim.connectAll()
        let producer = sim.node(0)
        sim.addConsumers(1, at: sim.node(1), taskTime: 1 * ms)
        sim.addConsumers(1, at: sim.node(2), taskTime: 2 * ms)
        for batch in 0..<20 {
            sim.push(batch * 100..<(batch + 1) * 100, at: producer)
            sim.run(until: sim.now + 50 * ms)
        }
        let settled = sim.run(for: 30 * second, until: allPopped(2000))
        #expect(settled)
        expectExactlyOnce(sim, 2000)
        #expect(sim.popped[producer]!.isEmpty)
        #expect(sim.machines[producer]!.counters.transferredIn == 0)
        #expect(sim.paths.values.allSatisfy { !$0.contains(producer) })
        // The faster consumer did more.
        #expect(sim.popped[sim.node(1)]!.count > sim.popped[sim.node(2)]!.count)
        #expect(sim.popped[sim.node(2)]!.count > 300)
    }

    @Test("Dask placement: one loaded node and two idle ones end with the work spread")
    func loadedAndIdle() throws {
        var sim = Simulation(nodes: 3)
        sim.connectAll()
        for index in 0..<3 { sim.addConsumers(1, at: sim.node(index), taskTime: 10 * ms) }
        sim.run(until: 300 * ms)  // a stats round or so: everyone knows the others are idle
        let start = sim.now
        sim.push(0..<300, at: sim.node(0))
        let settled = sim.run(for: 10 * second, until: allPopped(300))
        #expect(settled)
        expectExactlyOnce(sim, 300)
        let makespan = Double(sim.lastPopTime + 10 * ms - start) / 1e9
        let lowerBound = 300 * 0.010 / 3
        #expect(makespan / lowerBound <= 1.10, "makespan \(makespan) s, bound \(lowerBound) s")
        for index in 0..<3 { #expect(sim.popped[sim.node(index)]!.count >= 80) }
        // The first remote pop came within one round trip, not a gossip round.
        let firstRemote = try #require([1, 2].compactMap { sim.firstPop[sim.node($0)] }.min())
        #expect(firstRemote - start <= 5 * ms)
        expectNoPingPong(sim, origin: sim.node(0))
        // Items moved per item: about the two thirds that had to move, not more.
        let moved = sim.machines.values.reduce(0) { $0 + $1.counters.transferredOut }
        #expect(Double(moved) / 300 <= 0.8, "moved \(moved)")
    }

    @Test("Dask placement: loaded before the idle nodes are heard of, rates unequal")
    func loadedThenGossip() {
        var sim = Simulation(nodes: 4)
        sim.connectAll()
        sim.push(0..<400, at: sim.node(0))
        sim.addConsumers(1, at: sim.node(0), taskTime: 10 * ms)
        sim.addConsumers(2, at: sim.node(1), taskTime: 10 * ms)
        sim.addConsumers(1, at: sim.node(2), taskTime: 20 * ms)
        sim.addConsumers(1, at: sim.node(3), taskTime: 10 * ms)
        let settled = sim.run(for: 20 * second, until: allPopped(400))
        #expect(settled)
        expectExactlyOnce(sim, 400)
        // Total capacity 450 items/s: 400 items need at least ~0.89 s.
        let makespan = Double(sim.lastPopTime) / 1e9
        #expect(makespan <= 1.15 * 400 / 450 + 0.05, "makespan \(makespan)")
        #expect(sim.popped[sim.node(1)]!.count > sim.popped[sim.node(2)]!.count)
        // The first guesses (made before any rate was measured) get corrected, but no item
        // wanders: at most three moves.
        #expect(sim.paths.values.allSatisfy { $0.count <= 3 }, "max path \(sim.paths.values.map(\.count).max() ?? 0)")
    }

    @Test("No over-balancing when balanced: equal queues at equal rates move nothing")
    func balancedStaysPut() {
        var sim = Simulation(nodes: 3)
        sim.connectAll()
        for index in 0..<3 {
            sim.push(index * 200..<(index + 1) * 200, at: sim.node(index))
            sim.addConsumers(1, at: sim.node(index), taskTime: 10 * ms)
        }
        sim.run(until: 1500 * ms)  // three quarters of the 2 s of work
        #expect(sim.messagesSent[.queueTransfer, default: 0] == 0)
        #expect(sim.messagesSent[.queueStats, default: 0] > 0)
        let settled = sim.run(for: 10 * second, until: allPopped(600))
        #expect(settled)
        expectExactlyOnce(sim, 600)
    }

    @Test("No ping-pong: a brief imbalance is corrected once, items do not travel back")
    func noPingPong() {
        var sim = Simulation(nodes: 4)
        sim.connectAll()
        for index in 0..<4 { sim.addConsumers(1, at: sim.node(index), taskTime: 5 * ms) }
        sim.push(0..<100, at: sim.node(0))
        sim.push(100..<400, at: sim.node(1))
        sim.push(400..<450, at: sim.node(2))
        let settled = sim.run(for: 20 * second, until: allPopped(450))
        #expect(settled)
        expectExactlyOnce(sim, 450)
        expectFewRevisits(sim, of: 450)
        let maxHops = sim.paths.values.map(\.count).max() ?? 0
        #expect(maxHops <= 3)
        let moved = sim.machines.values.reduce(0) { $0 + $1.counters.transferredOut }
        // At least 188 must move (node 1's 300 down to the mean of 112.5); allow half again for
        // decisions made on gossip that is a round old.
        #expect(moved <= 282, "moved \(moved)")
    }

    @Test("A node dies holding items: its owners re-queue them, nothing is lost, duplicates are counted")
    func deathRequeues() {
        var sim = Simulation(nodes: 3)
        sim.connectAll()
        for index in 0..<3 { sim.addConsumers(1, at: sim.node(index), taskTime: 5 * ms) }
        let victim = sim.node(2)
        sim.push(0..<1500, at: sim.node(0))
        sim.push(1500..<3000, at: sim.node(1))
        sim.run(until: 1 * second)
        let held = sim.machines[victim]!.count
        #expect(held > 0)
        sim.kill(victim)
        let settled = sim.run(for: 30 * second) { sim in
            sim.machines.filter { !sim.killed.contains($0.key) }.values.allSatisfy { $0.count == 0 && $0.heldItems == 0 }
                && sim.totalPopped >= 3000
        }
        #expect(settled)
        sim.run(until: sim.now + 1 * second)
        let duplicates = expectNothingLost(sim, 3000)
        let requeued = sim.machines[sim.node(0)]!.counters.requeuedAfterDeath + sim.machines[sim.node(1)]!.counters.requeuedAfterDeath
        #expect(requeued >= held)
        // Duplicates only from the dead node's unconfirmed pops.
        #expect(duplicates <= requeued - held + 20)
        for index in 0..<2 { #expect(sim.machines[sim.node(index)]!.ownedItems == 0 && sim.machines[sim.node(index)]!.heldBufferCount == 0) }
    }

    @Test("Lost acknowledgements and a cut link: every item still popped, retransmissions dropped")
    func lostAcksAndCutLink() {
        var sim = Simulation(nodes: 2, configuration: QueueConfiguration(transferTimeout: 200 * ms))
        sim.connectAll()
        let (a, b) = (sim.node(0), sim.node(1))
        sim.addConsumers(2, at: b, taskTime: 1 * ms)
        sim.run(until: 300 * ms)
        sim.dropTypes = [.queueTransferAck]
        sim.push(0..<500, at: a)
        sim.run(until: 600 * ms)
        sim.dropTypes = []
        sim.cut(a, b)
        sim.run(until: 700 * ms)
        sim.connect(a, b)
        let settled = sim.run(for: 20 * second) { $0.machines[a]!.heldItems == 0 && $0.totalPopped >= 500 }
        #expect(settled)
        sim.run(until: sim.now + 1 * second)
        _ = expectNothingLost(sim, 500)
        #expect(sim.machines[b]!.counters.duplicatesDropped > 0)
        #expect(sim.machines[a]!.counters.returnedFromTransfers > 0)
    }

    @Test("close() on a node that still holds items: everything is consumed elsewhere")
    func closeHandsOff() {
        var sim = Simulation(nodes: 3)
        sim.connectAll()
        let closing = sim.node(0)
        sim.addConsumers(1, at: closing, taskTime: 50 * ms)
        sim.addConsumers(1, at: sim.node(1), taskTime: 1 * ms)
        sim.addConsumers(1, at: sim.node(2), taskTime: 1 * ms)
        sim.push(0..<1000, at: closing)
        sim.run(until: 20 * ms)
        sim.perform(closing, sim.machines[closing]!.close(now: sim.now))
        #expect(sim.machines[closing]!.count == 0)
        let settled = sim.run(for: 10 * second, until: allPopped(1000))
        #expect(settled)
        expectExactlyOnce(sim, 1000)
        #expect(sim.machines[closing]!.heldItems == 0)
        // Its consumer's next pop failed with `.closed`.
        #expect(sim.failures.contains { $0.0 == closing && $0.2 == .closed })
    }

    @Test("W3 in simulation: 4 nodes, 4,000 tasks of 10 ms pushed at one node: makespan within 10% of the bound")
    func w3() throws {
        var sim = Simulation(nodes: 4)
        sim.connectAll()
        for index in 0..<4 { sim.addConsumers(1, at: sim.node(index), taskTime: 10 * ms) }
        sim.run(until: 300 * ms)
        let start = sim.now
        sim.push(0..<4000, at: sim.node(0))
        let settled = sim.run(for: 60 * second, until: allPopped(4000))
        #expect(settled)
        expectExactlyOnce(sim, 4000)
        let makespan = Double(sim.lastPopTime + 10 * ms - start) / 1e9
        #expect(makespan / 10.0 <= 1.10, "makespan \(makespan) s for a 10 s bound")
        let firstRemote = try #require((1..<4).compactMap { sim.firstPop[sim.node($0)] }.min())
        #expect(firstRemote - start <= 50 * ms)
        let moved = sim.machines.values.reduce(0) { $0 + $1.counters.transferredOut }
        #expect(Double(moved) / 4000 <= 0.9, "moved \(moved)")
    }

    @Test("The legacy strategy (p2pqueue's push every 2 s) also spreads the work, more slowly")
    func legacyComparison() {
        func makespan(_ configuration: QueueConfiguration) -> (Double, Simulation) {
            var sim = Simulation(nodes: 4, configuration: configuration)
            sim.connectAll()
            for index in 0..<4 { sim.addConsumers(1, at: sim.node(index), taskTime: 10 * ms) }
            sim.push(0..<800, at: sim.node(0))
            _ = sim.run(for: 60 * second, until: allPopped(800))
            return (Double(sim.lastPopTime) / 1e9, sim)
        }
        let (adaptive, _) = makespan(QueueConfiguration())
        let (legacy, legacySim) = makespan(.legacy)
        expectExactlyOnce(legacySim, 800)
        #expect(legacySim.machines.values.contains { $0.counters.transfersByKind[.legacy, default: 0] > 0 })
        #expect(legacySim.machines.values.allSatisfy { $0.counters.transfersByKind[.steal, default: 0] == 0 })
        #expect(adaptive < legacy, "adaptive \(adaptive) s, legacy \(legacy) s")
        #expect(adaptive <= 2.0 * 1.10 + 0.05)
    }
}

@Suite struct BoundsTests {
    @Test("Memory is bounded: dedup memory, ownership records, pending confirmations, waiters, peers")
    func bounded() {
        let a = peer(1), b = peer(2)
        // Dedup memory stays at its capacity.
        var q = QueueMachine(name: "q", localPeer: a, configuration: QueueConfiguration(maxItems: 1 << 20, dedupCapacity: 100))
        for transfer in 0..<50 {
            let items = (0..<20).map { QueueItem(id: ItemID(origin: b, sequence: UInt64(transfer * 20 + $0)), hops: 1, payload: payload($0)) }
            _ = q.received(.transfer(queue: "q", transferID: UInt64(transfer + 1), kind: .balance, requestID: 0, items: TransferItems(items)), from: b, now: 0)
        }
        #expect(q.dedupCount <= 200)  // two generations of at most 100
        #expect(q.count == 1000)

        // Ownership records: pushes stop when the records are full, even with an empty queue.
        var owner = QueueMachine(name: "q", localPeer: a, configuration: QueueConfiguration(maxOwnedItems: 50))
        _ = owner.peerConnected(b, now: 0)
        #expect(owner.push((0..<50).map { payload($0) }, now: 0).0 == .accepted)
        let steal = owner.received(.stealRequest(queue: "q", requestID: 1, maxItems: 50, thiefRate: 1), from: b, now: 1).transfers[0]
        _ = owner.received(.transferAck(queue: "q", transferID: steal.id, status: .accepted), from: b, now: 2)
        #expect(owner.count == 0 && owner.ownedItems == 50)
        #expect(owner.push([payload(99)], now: 3).0 == .full)
        // The confirmations free them.
        let actions = owner.received(.ownerUpdate(queue: "q", updateID: 1, popped: [SequenceRun(first: 1, count: 10)], custody: []), from: b, now: 4)
        #expect(actions.contains(.spaceAvailable))
        #expect(owner.push([payload(99)], now: 5).0 == .accepted)

        // Pending confirmations for an unreachable owner stay within their bound.
        var holder = QueueMachine(name: "q", localPeer: a, configuration: QueueConfiguration(maxPendingRunsPerOwner: 10))
        let scattered = (0..<100).map { QueueItem(id: ItemID(origin: b, sequence: UInt64($0 * 2)), hops: 1, payload: payload($0)) }
        _ = holder.received(.transfer(queue: "q", transferID: 1, kind: .balance, requestID: 0, items: TransferItems(scattered)), from: b, now: 0)
        _ = holder.pop(max: 100, waiter: nil, now: 1)
        #expect(holder.pendingNoticeRuns == 10)
        #expect(holder.counters.noticesDropped == 90)

        // Waiters and tracked peers are bounded.
        var small = QueueMachine(name: "q", localPeer: a, configuration: QueueConfiguration(maxWaiters: 2, maxTrackedPeers: 2))
        _ = small.pop(waiter: WaiterID(1), now: 0)
        _ = small.pop(waiter: WaiterID(2), now: 0)
        #expect(small.pop(waiter: WaiterID(3), now: 0).1.contains(.fail(WaiterID(3), .tooManyWaiters)))
        for n in 2..<10 { _ = small.peerConnected(peer(n), now: 0) }
        #expect(small.trackedPeers == 2)
        #expect(small.acceptStats(LoadStats(sequence: 1, length: 0, waiting: 0, serviceRate: 0, finishTime: 0, hasConsumers: true),
                                  from: peer(20), now: 0) == .rejected(.tooManyPeers))

        // In-flight transfers per peer are bounded: a fifth steal gets nothing while four are out.
        var sender = QueueMachine(name: "q", localPeer: a)
        _ = sender.peerConnected(b, now: 0)
        _ = sender.push((0..<100).map { payload($0) }, now: 0)
        for request in 1...4 {
            #expect(sender.received(.stealRequest(queue: "q", requestID: UInt64(request), maxItems: 5, thiefRate: 1), from: b, now: 1).transfers.count == 1)
        }
        let fifth = sender.received(.stealRequest(queue: "q", requestID: 5, maxItems: 5, thiefRate: 1), from: b, now: 1)
        #expect(fifth.transfers.isEmpty)
        #expect(fifth.sent.contains { if case .stealEmpty(_, 5) = $0.0 { true } else { false } })
        #expect(sender.transfersInFlight == 4)
    }
}

@Suite struct ChaosTests {
    /// A tiny deterministic generator for fault schedules.
    struct Rng {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    @Test("Random link cuts, lost acks and a death: nothing is lost", arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
    func chaos(seed: UInt64) {
        var rng = Rng(state: seed)
        var sim = Simulation(nodes: 4, configuration: QueueConfiguration(transferTimeout: 300 * ms))
        sim.connectAll()
        for index in 0..<4 { sim.addConsumers(1, at: sim.node(index), taskTime: 2 * ms) }
        sim.push(0..<2000, at: sim.node(0))
        sim.push(2000..<4000, at: sim.node(1))
        let victim = sim.node(3)
        for step in 0..<40 {
            let x = sim.node(rng.next(4)), y = sim.node(rng.next(4))
            if x != y && !sim.killed.contains(x) && !sim.killed.contains(y) {
                sim.cut(x, y)
                sim.run(until: sim.now + UInt64(rng.next(30)) * ms)
                sim.connect(x, y)
            }
            sim.dropTypes = rng.next(4) == 0 ? [.queueTransferAck] : []
            sim.run(until: sim.now + UInt64(5 + rng.next(20)) * ms)
            if step == 20 { sim.kill(victim) }
        }
        sim.dropTypes = []
        let settled = sim.run(for: 60 * second) { sim in
            sim.totalPopped >= 4000 && sim.order.filter { !sim.killed.contains($0) }
                .allSatisfy { sim.machines[$0]!.heldItems == 0 && sim.machines[$0]!.count == 0 }
        }
        #expect(settled)
        sim.run(until: sim.now + 2 * second)
        let duplicates = expectNothingLost(sim, 4000)
        // Duplicates come only from the faults, and the survivors' owners drained their records.
        #expect(duplicates < 400, "\(duplicates) duplicates")
        for index in 0..<3 {
            #expect(sim.machines[sim.node(index)]!.ownedItems == 0, "node \(index)")
            #expect(sim.machines[sim.node(index)]!.heldBufferCount == 0, "node \(index)")
        }
    }
}
