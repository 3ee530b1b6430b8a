/// The executor's waiting pops on the call queue, as a plain value: how many there are and
/// how many items each asks for. The shell opens and withdraws the pops it plans.
///
/// The executor's demand (its free slots) is kept as two waiting pops when there are two
/// slots or more: the queue serves waiters in order, so while the first takes a call the
/// second still shows peers a waiting consumer (peers dispatch new calls straight to nodes
/// whose stats report one). Pops asking for fewer items than the free slots are kept and
/// topped up rather than replaced, for the same reason.
public struct CallQueueWaiters: Sendable {
    /// What to do to the waiting pops. No array: this is planned after every executor step.
    public struct Plan: Sendable, Equatable {
        /// Pops to withdraw first, in order (all of them when the demand fell below what
        /// they ask for).
        public var withdraw: [UInt64] = []
        /// The first new pop to open (its waiter id and how many items it asks for), if any.
        public var first: (id: UInt64, size: Int)?
        /// The second new pop, opened after the first, if any.
        public var second: (id: UInt64, size: Int)?

        public init(withdraw: [UInt64] = [], first: (id: UInt64, size: Int)? = nil, second: (id: UInt64, size: Int)? = nil) {
            self.withdraw = withdraw
            self.first = first
            self.second = second
        }

        public static func == (a: Plan, b: Plan) -> Bool {
            a.withdraw == b.withdraw && a.first?.id == b.first?.id && a.first?.size == b.first?.size
                && a.second?.id == b.second?.id && a.second?.size == b.second?.size
        }
    }

    /// The waiting pops (by the shell's waiter id) and the items each asks for.
    public private(set) var sizes: [UInt64: Int] = [:]

    public init() {}

    /// Plans the pops for `demand` free slots; `makeID` names each new pop.
    public mutating func adjust(to demand: Int, makeID: () -> UInt64) -> Plan {
        var plan = Plan()
        var total = sizes.values.reduce(0, +)
        if total > demand {
            plan.withdraw = sizes.keys.sorted()
            sizes.removeAll()
            total = 0
        }
        while total < demand && sizes.count < 2 {
            let missing = demand - total
            let size = sizes.isEmpty && missing >= 2 ? missing - 1 : missing
            total += size
            let id = makeID()
            sizes[id] = size
            if plan.first == nil { plan.first = (id, size) } else { plan.second = (id, size) }
        }
        return plan
    }

    /// The pop `id` was answered (items or failure): it waits no more.
    public mutating func answered(_ id: UInt64) {
        sizes[id] = nil
    }
}
