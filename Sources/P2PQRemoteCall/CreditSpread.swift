import P2PQWire

/// The executors that granted a caller credit for direct calls, and which of them gets the
/// next call: a plain value inside ``CallerMachine``.
///
/// Calls go to the executor with credit left that has had the fewest so far (its *pass*, one
/// per call; the most credit, then the lowest ID among equals). So while every executor has
/// credit, calls spread evenly over them however fast each returns its credit: an executor
/// whose credit comes back without a round trip (this node's own) gets no more for it. One
/// with few free slots runs out of credit and is skipped until it returns some, so under load
/// each gets calls in proportion to its slots and as fast as it returns credit (its service
/// rate).
///
/// Shares are equal rather than weighted by the credit granted: a caller may be granted the
/// same slots twice (credit crossing a link that is replaced), and a count would double
/// that executor's share for as long as it runs.
///
/// An executor that falls behind (no credit for a while) catches up by one call at most: its
/// pass is lifted to the current virtual time when it is chosen. Kept ordered by peer, so
/// nothing depends on hashing order; one scan per call, no allocation.
///
/// Many calls made at once (``beginInput(calls:)``) go in blocks: the executor chosen keeps
/// the next calls, up to the input's calls over the executors with credit, so that they have
/// consecutive sequence numbers and travel as one run (``CallRun``). The input still spreads
/// evenly; a single call is chosen as above.
struct CreditSpread: Sendable {
    struct Source: Sendable {
        let peer: PeerID
        /// Direct calls it still grants.
        var credit: Int
        /// Its virtual time: where its share of the calls stands (one per call).
        var pass: UInt64
    }

    /// By peer, ascending.
    private(set) var sources: [Source] = []
    /// Credit of all sources together.
    private(set) var totalCredit = 0
    /// The pass of the last choice (never decreases).
    private var virtualTime: UInt64 = 0
    /// The current input's block: calls in a row to one executor (1 outside a many-call input).
    private var block = 1
    /// The executor chosen last in this input, and how many calls in a row it has had.
    private var streakPeer: PeerID?
    private var streak = 0

    /// No executor grants credit (or is waited for as a source of more).
    var isEmpty: Bool { sources.isEmpty }

    /// Credit `peer` still grants.
    func credit(of peer: PeerID) -> Int {
        guard case .found(let index) = position(of: peer) else { return 0 }
        return sources[index].credit
    }

    /// `peer` granted `slots` more, up to `limit` in all. A new executor joins at the current
    /// virtual time, so it neither owes nor is owed calls.
    mutating func grant(_ slots: Int, from peer: PeerID, limit: Int) {
        switch position(of: peer) {
        case .found(let index):
            let credit = Swift.min(limit, sources[index].credit + slots)
            totalCredit += credit - sources[index].credit
            sources[index].credit = credit
        case .insert(let index):
            let credit = Swift.min(limit, slots)
            totalCredit += credit
            sources.insert(Source(peer: peer, credit: credit, pass: virtualTime), at: index)
        }
    }

    /// Forgets `peer`'s credit; whether it had granted any.
    @discardableResult
    mutating func remove(_ peer: PeerID) -> Bool {
        guard case .found(let index) = position(of: peer) else { return false }
        totalCredit -= sources.remove(at: index).credit
        return true
    }

    mutating func removeAll() {
        sources.removeAll(keepingCapacity: true)
        totalCredit = 0
    }

    /// An input of `calls` calls begins: they go in blocks of `calls` over the executors with
    /// credit (at least 1).
    mutating func beginInput(calls: Int) {
        var withCredit = 0
        for source in sources where source.credit > 0 { withCredit += 1 }
        block = Swift.max(1, calls / Swift.max(1, withCredit))
        streakPeer = nil
        streak = 0
    }

    /// The input ends: calls are chosen one at a time again.
    mutating func endInput() {
        block = 1
        streakPeer = nil
        streak = 0
    }

    /// The executor that should get the next call, if any has credit: its position, for
    /// ``take(_:)``.
    func next() -> Int? {
        if streak > 0, streak < block, let peer = streakPeer, case .found(let index) = position(of: peer), sources[index].credit > 0 {
            return index  // the block goes on: the call continues the executor's run
        }
        var best: Int?
        var bestPass: UInt64 = 0
        for index in sources.indices where sources[index].credit > 0 {
            // A source behind the virtual time counts as at it: falling behind buys one call.
            let pass = Swift.max(sources[index].pass, virtualTime)
            guard let current = best else {
                best = index
                bestPass = pass
                continue
            }
            // Ties: the most credit (the most free slots), then the lowest ID (the order here).
            if pass < bestPass || (pass == bestPass && sources[index].credit > sources[current].credit) {
                best = index
                bestPass = pass
            }
        }
        return best
    }

    /// Takes one credit of the source at `index` (from ``next()``) for a call sent to it.
    mutating func take(_ index: Int) -> PeerID { take(index, count: 1) }

    /// How many calls in a row the source at `index` (from ``next()``) gets before the spread
    /// chooses again: the rest of its block, within its credit.
    func room(at index: Int) -> Int {
        let inBlock = sources[index].peer == streakPeer && streak > 0 && streak < block ? block - streak : block
        return Swift.min(inBlock, sources[index].credit)
    }

    /// Takes `count` credits (at most ``room(at:)``) of the source at `index` for as many calls
    /// sent to it in a row: as `count` single takes.
    mutating func take(_ index: Int, count: Int) -> PeerID {
        let start = Swift.max(sources[index].pass, virtualTime)
        virtualTime = start + UInt64(count - 1)
        sources[index].credit -= count
        totalCredit -= count
        sources[index].pass = start + UInt64(count)  // 2^64 calls are out of reach
        if sources[index].peer == streakPeer {
            streak += count
        } else {
            streakPeer = sources[index].peer
            streak = count
        }
        return sources[index].peer
    }

    private enum Position {
        case found(Int)
        case insert(Int)
    }

    /// Binary search by peer.
    private func position(of peer: PeerID) -> Position {
        var low = 0
        var high = sources.count
        while low < high {
            let middle = (low + high) / 2
            if sources[middle].peer < peer {
                low = middle + 1
            } else {
                high = middle
            }
        }
        if low < sources.count && sources[low].peer == peer { return .found(low) }
        return .insert(low)
    }
}
