import DequeModule
import P2PQWire

// MARK: - Leases

extension QueueMachine {
    /// One leased item: its run of one (its array's hold passes from the queue to the lease
    /// and back).
    struct Lease: Sendable {
        var run: QueueRun
        var deliveries: Int
        var state: LeaseState
    }

    enum LeaseState: Sendable {
        /// With the consumer until `until`.
        case held(until: UInt64)
        /// Delivered too often: waiting for the shell to push it into the dead-letter queue;
        /// asked again at `retryAt`.
        case deadLettering(retryAt: UInt64)

        var deadline: UInt64 {
            switch self {
            case .held(let until): until
            case .deadLettering(let retryAt): retryAt
            }
        }
    }

    struct LeaseKey: Hashable, Sendable {
        var origin: PeerID
        var sequence: UInt64
    }

    /// A consumer asks for up to `max` items under a lease of `duration` nanoseconds (more than
    /// 0). As ``pop(max:waiter:now:)``, but each item stays held here (counted against the
    /// limits) with a ``LeaseToken``: ``ack(_:now:)`` confirms it to its owner, ``nack(_:now:)``
    /// or the lease's end puts it back at the front of the local queue, to be delivered again
    /// with a higher delivery count (or dead-lettered, see ``QueueConfiguration/deadLetter``).
    /// A waiter is served with a `.deliverLeased` action.
    public mutating func popLeased(max: Int = 1, lease duration: UInt64, waiter: WaiterID?, now: UInt64) -> ([LeasedPayload], [Action]) {
        precondition(duration > 0, "a lease lasts more than 0 ns")
        var actions: [Action] = []
        detectStall(&actions, now: now)
        lastConsumerActivity = now
        if waiters.isEmpty && !local.isEmpty {
            let items = takeLeased(Swift.max(1, max), for: duration, now: now)
            finish(&actions, now: now)
            return (items, actions)
        }
        if let waiter { wait(Waiter(id: waiter, max: Swift.max(1, max), lease: duration), &actions, now: now) }
        finish(&actions, now: now)
        return ([], actions)
    }

    /// The consumer is done with these leased items: each is consumed (its owner hears it was
    /// popped, as after a plain pop). Tokens not leased here (acked already, lease ended, or
    /// never issued) are returned as `unknown`; the others are acknowledged all the same.
    public mutating func ack(_ tokens: [LeaseToken], now: UInt64) -> (acknowledged: Int, unknown: [LeaseToken], actions: [Action]) {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        var unknown: [LeaseToken] = []
        var count = 0
        for token in tokens {
            guard let lease = leases.removeValue(forKey: token) else {
                unknown.append(token)
                continue
            }
            consumeLeased(lease, now: now)
            count += 1
        }
        counters.acknowledged += count
        counters.popped += count
        finish(&actions, now: now)
        return (count, unknown, actions)
    }

    /// The consumer gives these leased items back undone: each goes to the front of the local
    /// queue (in the order they were leased), or to the dead-letter queue after too many
    /// deliveries. Unknown tokens are returned as in ``ack(_:now:)``.
    public mutating func nack(_ tokens: [LeaseToken], now: UInt64) -> (returned: Int, unknown: [LeaseToken], actions: [Action]) {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        var unknown: [LeaseToken] = []
        var back: [(LeaseToken, Lease)] = []
        for token in tokens {
            guard let lease = leases[token], case .held = lease.state else {
                unknown.append(token)
                continue
            }
            back.append((token, lease))
        }
        counters.nacked += back.count
        returnLeases(back, &actions, now: now)
        finish(&actions, now: now)
        return (back.count, unknown, actions)
    }

    /// The shell pushed the item of a `.deadLetter` action into the dead-letter queue: it is
    /// consumed here (confirmed to its owner). Unknown tokens are ignored.
    public mutating func deadLettered(_ token: LeaseToken, now: UInt64) -> [Action] {
        var actions: [Action] = []
        detectStall(&actions, now: now)
        if let lease = leases.removeValue(forKey: token) {
            consumeLeased(lease, now: now)
            counters.deadLettered += 1
        }
        finish(&actions, now: now)
        return actions
    }

    /// Takes up to `max` items from the front under a lease: each becomes a run of one whose
    /// array hold passes from the queue to the lease.
    mutating func takeLeased(_ max: Int, for duration: UInt64, now: UInt64) -> [LeasedPayload] {
        let n = Swift.min(max, local.items)
        var out: [LeasedPayload] = []
        out.reserveCapacity(n)
        let until = now &+ duration
        var left = n
        while left > 0 {
            let (run, ends) = local.takeFront(upTo: left, in: store)
            left -= Int(run.count)
            leasedBytes += Int(run.bytes)
            let array = store.array(run.slot)
            ends.withUnsafeBufferPointer { ends in
                for i in 0..<Int(run.count) {
                    let item = run.items(i..<(i + 1), ends)
                    let key = LeaseKey(origin: item.origin, sequence: item.first)
                    let here = (localDeliveries[key] ?? 0) &+ 1
                    if here == 1 { rememberDelivery(key) }
                    localDeliveries[key] = here
                    let token = LeaseToken(nextLeaseToken)
                    nextLeaseToken &+= 1
                    let deliveries = Int(item.attempt) + Int(here)
                    leases[token] = Lease(run: item, deliveries: deliveries, state: .held(until: until))
                    out.append(LeasedPayload(token: token, payload: ItemPayload(base: array, start: Int(item.start), count: Int(item.bytes)),
                                             deliveryCount: deliveries))
                }
            }
        }
        leasedItems += n
        popsSinceSample += n
        counters.leased += n
        if n > 0 { nextLeaseDeadline = Swift.min(nextLeaseDeadline ?? until, until) }
        return out
    }

    /// Makes room for `key`'s first delivery here: past `maxItems` keys, the oldest still
    /// remembered is forgotten (that only lowers its item's delivery count).
    private mutating func rememberDelivery(_ key: LeaseKey) {
        if localDeliveries.count >= configuration.maxItems {
            while let oldest = deliveryOrder.popFirst(), localDeliveries.removeValue(forKey: oldest) == nil {}
        }
        deliveryOrder.append(key)
        // Keys forgotten by acks pile up in the order: dropped once they outnumber the others.
        if deliveryOrder.count > 2 * localDeliveries.count + 64 {
            var seen = Set<LeaseKey>()
            deliveryOrder = Deque(deliveryOrder.filter { localDeliveries[$0] != nil && seen.insert($0).inserted } + [key])
        }
    }

    /// A leased item is done with (acked, or dead-lettered): as a pop of it.
    private mutating func consumeLeased(_ lease: Lease, now: UInt64) {
        let run = lease.run
        leasedItems -= 1
        leasedBytes -= Int(run.bytes)
        store.release(run.slot)
        localDeliveries[LeaseKey(origin: run.origin, sequence: run.first)] = nil
        guard configuration.delivery == .atLeastOnce else { return }
        if run.origin == localPeer {
            if let record = owned.remove(run.first) { drop(record, run.first, now: now) } else { counters.duplicatePops += 1 }
        } else {
            confirm(SequenceRun(first: run.first, count: 1), to: run.origin, now: now)
        }
    }

    /// Puts leased items back at the front of the local queue, in lease order, except those
    /// delivered too often: those go to the dead-letter queue (see `.deadLetter`).
    private mutating func returnLeases(_ back: [(LeaseToken, Lease)], _ actions: inout [Action], now: UInt64) {
        var items: [QueueRun] = []
        for (token, lease) in back.sorted(by: { $0.0 < $1.0 }) {
            if let policy = configuration.deadLetter, policy.queue != name, lease.deliveries >= policy.maxDeliveries {
                let retryAt = now &+ configuration.deadLetterRetry
                leases[token]!.state = .deadLettering(retryAt: retryAt)
                nextLeaseDeadline = Swift.min(nextLeaseDeadline ?? retryAt, retryAt)
                actions.append(.deadLetter(token, payload(of: lease.run), queue: policy.queue))
                continue
            }
            leases[token] = nil
            items.append(lease.run)
        }
        requeueLeased(items)
        serveWaiters(&actions, now: now)
    }

    /// Lease runs back to the front of the queue, their holds with them.
    private mutating func requeueLeased(_ items: [QueueRun]) {
        guard !items.isEmpty else { return }
        let bytes = items.reduce(0) { $0 + Int($1.bytes) }
        leasedItems -= items.count
        leasedBytes -= bytes
        local.putBack(items)
    }

    func payload(of run: QueueRun) -> ItemPayload {
        ItemPayload(base: store.array(run.slot), start: Int(run.start), count: Int(run.bytes))
    }

    /// The timer reached a lease deadline: ended leases go back (or to the dead-letter queue),
    /// due dead-letter retries are asked again.
    mutating func expireLeases(_ actions: inout [Action], now: UInt64) {
        nextLeaseDeadline = nil
        var ended: [(LeaseToken, Lease)] = []
        for token in leases.keys.sorted() {
            let lease = leases[token]!
            switch lease.state {
            case .held(let until) where until <= now:
                ended.append((token, lease))
            case .deadLettering(let retryAt) where retryAt <= now:
                let next = now &+ configuration.deadLetterRetry
                leases[token]!.state = .deadLettering(retryAt: next)
                actions.append(.deadLetter(token, payload(of: lease.run), queue: configuration.deadLetter?.queue ?? name))
            case .held, .deadLettering:
                break
            }
        }
        counters.leasesExpired += ended.count
        returnLeases(ended, &actions, now: now)
        for lease in leases.values {
            nextLeaseDeadline = Swift.min(nextLeaseDeadline ?? lease.state.deadline, lease.state.deadline)
        }
    }

    /// Every lease back to the front of the queue, unconfirmed and without serving waiters
    /// (a stopping node hands them on with the queued items).
    mutating func returnAllLeases(now: UInt64) {
        let items = leases.sorted { $0.key < $1.key }.map(\.value.run)
        leases = [:]
        nextLeaseDeadline = nil
        requeueLeased(items)
    }
}
