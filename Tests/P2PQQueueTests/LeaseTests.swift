import P2PQQueue
import P2PQWire
import Testing

private let A = peer(1)
private let B = peer(2)

private func numbers(_ items: [LeasedPayload]) -> [Int] { items.map { number($0.payload) } }

private func poppedRuns(_ actions: [QueueAction], to owner: PeerID) -> [SequenceRun] {
    actions.flatMap { action -> [SequenceRun] in
        if case .send(.ownerUpdate(_, _, let popped, _), let target) = action, target == owner { return popped }
        return []
    }
}

/// Owner A pushes `n` items; B steals them all and A records B as their holder.
private func heldByB(_ n: Int, configuration: QueueConfiguration = QueueConfiguration()) -> (QueueMachine, QueueMachine) {
    var a = QueueMachine(name: "q", localPeer: A, configuration: configuration)
    var b = QueueMachine(name: "q", localPeer: B, configuration: configuration)
    _ = a.peerConnected(B, now: 0)
    _ = b.peerConnected(A, now: 0)
    _ = a.push((0..<n).map { payload($0) }, now: 0)
    let transfer = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: UInt32(n), thiefRate: 1000), from: B, now: 1).transfers[0]
    _ = b.received(.transfer(queue: "q", transferID: transfer.id, kind: .steal, requestID: 1, items: transfer.items), from: A, now: 2)
    _ = a.received(.transferAck(queue: "q", transferID: transfer.id, status: .accepted), from: B, now: 3)
    return (a, b)
}

/// docs/reliability.md, "Consumer leases".
@Suite struct LeaseTests {
    @Test("A lease that ends without an ack puts its items back at the front, in order, with their delivery count raised")
    func expiryReturnsToFront() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.push((0..<5).map { payload($0) }, now: 0)
        let (first, _) = q.popLeased(max: 2, lease: 10 * second, waiter: nil, now: 1)
        #expect(numbers(first) == [0, 1])
        #expect(first.map(\.deliveryCount) == [1, 1])
        #expect(q.count == 3 && q.leasedCount == 2 && q.heldItems == 5)
        // The timer is armed for the lease's end once nothing comes earlier.
        #expect(q.tick(now: 10 * second - 1).contains(.armTimer(at: 1 + 10 * second)))
        // Before the end nothing moves; a plain pop meanwhile takes the next items.
        _ = q.tick(now: 10 * second)
        #expect(q.leasedCount == 2)
        #expect(q.pop(max: 1, waiter: nil, now: 10 * second).0.map(number) == [2])
        _ = q.tick(now: 1 + 10 * second)
        #expect(q.leasedCount == 0 && q.counters.leasesExpired == 2)
        let (again, _) = q.popLeased(max: 10, lease: second, waiter: nil, now: 11 * second)
        #expect(numbers(again) == [0, 1, 3, 4])
        #expect(again.map(\.deliveryCount) == [2, 2, 1, 1])
        // The old tokens name nothing now; the new ones are acknowledged.
        let late = q.ack(first.map(\.token), now: 11 * second)
        #expect(late.acknowledged == 0 && late.unknown == first.map(\.token))
        #expect(q.ack(again.map(\.token), now: 11 * second).acknowledged == 4)
        #expect(q.heldItems == 0 && q.ownedItems == 0)
    }

    @Test("Past maxItems remembered deliveries, the oldest is forgotten (not the first in dictionary order)")
    func deliveryCountsForgetTheOldest() {
        var q = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration(maxItems: 3))
        _ = q.push((0..<3).map { payload($0) }, now: 0)
        let (one, _) = q.popLeased(max: 3, lease: 60 * second, waiter: nil, now: 1)
        _ = q.nack(one.map(\.token), now: 2)
        // Item 0 leaves by a plain pop: its delivery stays remembered, the oldest of three.
        #expect(q.pop(max: 1, waiter: nil, now: 3).0.map(number) == [0])
        _ = q.push([payload(3)], now: 4)
        // Item 3's first delivery needs room: item 0's entry goes, not item 1's or 2's.
        let (two, _) = q.popLeased(max: 3, lease: 60 * second, waiter: nil, now: 5)
        #expect(numbers(two) == [1, 2, 3] && two.map(\.deliveryCount) == [2, 2, 1])
        _ = q.nack(two.map(\.token), now: 6)
        let (three, _) = q.popLeased(max: 3, lease: 60 * second, waiter: nil, now: 7)
        #expect(numbers(three) == [1, 2, 3] && three.map(\.deliveryCount) == [3, 3, 2])
    }

    @Test("A leased item's pop is confirmed to its owner only on ack")
    func ackConfirmsToOwner() {
        var (a, b) = heldByB(4)
        #expect(a.ownedItems == 4)
        let (items, _) = b.popLeased(max: 4, lease: 30 * second, waiter: nil, now: 4)
        #expect(numbers(items) == [0, 1, 2, 3])
        // Well past the confirmation delay: no confirmation for leased items.
        #expect(poppedRuns(b.tick(now: second), to: A).isEmpty)
        let acked = b.ack(Array(items.map(\.token).prefix(3)), now: second)
        #expect(acked.acknowledged == 3 && acked.unknown.isEmpty)
        let flushed = b.tick(now: 2 * second)
        #expect(poppedRuns(flushed, to: A).reduce(0) { $0 + Int($1.count) } == 3)
        for case .send(let message, let target) in flushed where target == A { _ = a.received(message, from: B, now: 2 * second) }
        #expect(a.ownedItems == 1)
        #expect(b.counters.acknowledged == 3 && b.counters.popped == 3)
    }

    @Test("An item owned here is forgotten on ack, not on the leased pop")
    func ackReleasesOwnRecord() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.push([payload(7)], now: 0)
        let (items, _) = q.popLeased(lease: second, waiter: nil, now: 0)
        #expect(q.ownedItems == 1)
        #expect(q.ack(items.map(\.token), now: 1).acknowledged == 1)
        #expect(q.ownedItems == 0 && q.heldBufferCount == 0)
    }

    @Test("nack puts items back at the front at once; unknown tokens are reported")
    func nackReturnsToFront() {
        var q = QueueMachine(name: "q", localPeer: A)
        _ = q.push((0..<3).map { payload($0) }, now: 0)
        let (items, _) = q.popLeased(max: 2, lease: 60 * second, waiter: nil, now: 0)
        let result = q.nack([items[1].token, LeaseToken(999_999)], now: 1)
        #expect(result.returned == 1 && result.unknown == [LeaseToken(999_999)])
        #expect(q.count == 2 && q.leasedCount == 1 && q.counters.nacked == 1)
        let (next, _) = q.popLeased(max: 1, lease: second, waiter: nil, now: 2)
        #expect(numbers(next) == [1] && next[0].deliveryCount == 2)
        // A nacked token cannot be acked.
        #expect(q.ack([items[1].token], now: 3).unknown == [items[1].token])
    }

    @Test("A waiting leased pop is served with leased items")
    func waiterGetsLeasedItems() {
        var q = QueueMachine(name: "q", localPeer: A)
        #expect(q.popLeased(max: 2, lease: second, waiter: WaiterID(1), now: 0).0.isEmpty)
        let actions = q.push((0..<3).map { payload($0) }, now: 1).1
        let delivered = actions.compactMap { if case .deliverLeased(let waiter, let items) = $0 { (waiter, numbers(items)) } else { nil } }
        #expect(delivered.count == 1 && delivered[0].0 == WaiterID(1) && delivered[0].1 == [0, 1])
        #expect(q.leasedCount == 2 && q.count == 1)
    }

    @Test("After the maximum of deliveries an item goes to the dead-letter queue, held until the shell pushed it there")
    func deadLetter() {
        var configuration = QueueConfiguration()
        configuration.deadLetter = DeadLetterPolicy(maxDeliveries: 2, queue: "dlq")
        var q = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        _ = q.push([payload(5)], now: 0)
        var (items, _) = q.popLeased(lease: second, waiter: nil, now: 0)
        #expect(q.nack(items.map(\.token), now: 1).actions.allSatisfy { if case .deadLetter = $0 { false } else { true } })
        (items, _) = q.popLeased(lease: second, waiter: nil, now: 2)
        #expect(items[0].deliveryCount == 2)
        let token = items[0].token
        let actions = q.nack([token], now: 3).actions
        let letters = actions.compactMap { if case .deadLetter(let t, let p, let queue) = $0 { (t, number(p), queue) } else { nil } }
        #expect(letters.count == 1 && letters[0].0 == token && letters[0].1 == 5 && letters[0].2 == "dlq")
        // Not queued again, still held and owned until the dead-letter push is reported.
        #expect(q.count == 0 && q.leasedCount == 1 && q.ownedItems == 1)
        // The shell could not push it (a full dead-letter queue): asked again after the retry delay.
        let retry = q.tick(now: 3 + configuration.deadLetterRetry)
        #expect(retry.contains { if case .deadLetter(token, _, "dlq") = $0 { true } else { false } })
        _ = q.deadLettered(token, now: 4 + configuration.deadLetterRetry)
        #expect(q.leasedCount == 0 && q.ownedItems == 0 && q.counters.deadLettered == 1)
    }

    @Test("An expired lease past the maximum is dead-lettered too; the dead-letter queue's own items never are")
    func deadLetterOnExpiryNotFromItself() {
        var configuration = QueueConfiguration()
        configuration.deadLetter = DeadLetterPolicy(maxDeliveries: 1, queue: "dlq")
        var q = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        _ = q.push([payload(1)], now: 0)
        _ = q.popLeased(lease: second, waiter: nil, now: 0)
        #expect(q.tick(now: second).contains { if case .deadLetter(_, _, "dlq") = $0 { true } else { false } })

        var dlq = QueueMachine(name: "dlq", localPeer: A, configuration: configuration)
        _ = dlq.push([payload(1)], now: 0)
        _ = dlq.popLeased(lease: second, waiter: nil, now: 0)
        #expect(!dlq.tick(now: second).contains { if case .deadLetter = $0 { true } else { false } })
        #expect(dlq.count == 1)
    }

    @Test("Leased items count against the limits: a push waits until they are acked")
    func leasesCountAgainstLimits() {
        var q = QueueMachine(name: "q", localPeer: A, configuration: QueueConfiguration(maxItems: 4))
        _ = q.push((0..<4).map { payload($0) }, now: 0)
        let (items, _) = q.popLeased(max: 4, lease: second, waiter: nil, now: 0)
        #expect(q.push([payload(9)], now: 1).0 == .full)
        let (_, _, actions) = q.ack([items[0].token], now: 2)
        #expect(actions.contains(.spaceAvailable))
        #expect(q.push([payload(9)], now: 3).0 == .accepted)
    }

    @Test("A stopping node hands its un-acked leased items on with the drain, unconfirmed")
    func drainHandsLeasesOn() throws {
        var (a, b) = heldByB(3)
        let (items, _) = b.popLeased(max: 3, lease: 60 * second, waiter: nil, now: 4)
        let drained = b.drain(now: 5)
        let sent = drained.transfers.filter { $0.to == A }.reduce(0) { $0 + $1.items.count }
        #expect(sent == 3)
        #expect(poppedRuns(drained, to: A).isEmpty)
        #expect(b.leasedCount == 0)
        #expect(b.ack(items.map(\.token), now: 6).acknowledged == 0)
        _ = a
    }

    @Test("The owner re-queues items leased on a node that dies; the next delivery counts the lost one")
    func consumerDeathRequeues() {
        var (a, b) = heldByB(3)
        _ = b.popLeased(max: 3, lease: 60 * second, waiter: nil, now: 4)
        _ = b.tick(now: second)  // no confirmation leaves B
        _ = a.peerDied(B, now: 2 * second)
        let (again, _) = a.popLeased(max: 3, lease: second, waiter: nil, now: 2 * second)
        #expect(numbers(again) == [0, 1, 2])
        #expect(again.map(\.deliveryCount) == [2, 2, 2])
    }
}

/// A small seeded generator, so a failing run can be replayed.
private struct Seeded {
    var state: UInt64
    mutating func next(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }
}

extension LeaseTests {
    @Test("Random pushes, plain and leased pops, acks, nacks, dead letters and lease ends: every item is consumed exactly once", arguments: [1, 2, 3, 4])
    func randomOperations(seed: Int) {
        var random = Seeded(state: UInt64(seed))
        var configuration = QueueConfiguration(maxItems: 64)
        configuration.deadLetter = DeadLetterPolicy(maxDeliveries: 3, queue: "dlq")
        var q = QueueMachine(name: "q", localPeer: A, configuration: configuration)
        var now: UInt64 = 0
        var next = 0
        var consumed: [Int] = []
        var deadLettered: [Int] = []
        var held: [LeasedPayload] = []
        func apply(_ actions: [QueueAction]) {
            for case .deadLetter(let token, let payload, "dlq") in actions where random.next(3) > 0 {
                deadLettered.append(number(payload))  // else the dead-letter queue was full: retried later
                _ = q.deadLettered(token, now: now)
            }
        }
        for _ in 0..<3000 {
            now += UInt64(random.next(200)) * ms
            switch random.next(7) {
            case 0:
                let n = 1 + random.next(8)
                let (outcome, actions) = q.push((next..<next + n).map { payload($0) }, now: now)
                if outcome == .accepted { next += n }
                apply(actions)
            case 1:
                let (items, actions) = q.pop(max: 1 + random.next(4), waiter: nil, now: now)
                consumed += items.map(number)
                apply(actions)
            case 2:
                let (items, actions) = q.popLeased(max: 1 + random.next(4), lease: UInt64(1 + random.next(3)) * second, waiter: nil, now: now)
                held += items
                apply(actions)
            case 3, 4:
                guard !held.isEmpty else { continue }
                let item = held.remove(at: random.next(held.count))
                let (acked, _, actions) = q.ack([item.token], now: now)
                if acked == 1 { consumed.append(number(item.payload)) }
                apply(actions)
            case 5:
                guard !held.isEmpty else { continue }
                let item = held.remove(at: random.next(held.count))
                apply(q.nack([item.token], now: now).actions)
            default:
                apply(q.tick(now: now))
            }
            #expect(q.heldItems == q.count + q.leasedCount)
            #expect(q.heldItems <= 64)
        }
        // Drain: leases end, everything is popped plainly.
        for _ in 0..<20 {
            now += 4 * second
            apply(q.tick(now: now))
            consumed += q.pop(max: .max, waiter: nil, now: now).0.map(number)
            if q.heldItems == 0 { break }
        }
        #expect(q.heldItems == 0)
        #expect((consumed + deadLettered).sorted() == Array(0..<next), "seed \(seed)")
        #expect(q.ownedItems == 0)
        #expect(q.counters.deadLettered == deadLettered.count)
    }
}
