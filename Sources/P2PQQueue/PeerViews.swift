import P2PQWire

/// What a queue knows of one peer: its link, the features its hello announced, and its last
/// load report adjusted for what this node sent it since.
struct PeerView: Sendable {
    var connected = false
    var hasReport = false
    var lastSequence: UInt64 = 0
    var receivedAt: UInt64 = 0
    /// The last report's length, plus what this node's acknowledged transfers added since.
    var reportedLength: Double = 0
    var reportedWaiting = 0
    /// Items on this node's unacknowledged transfers to the peer. Links are FIFO, so a
    /// report sent before the peer got them arrives before their ack: report plus in-flight
    /// never counts an item twice.
    var inFlight = 0
    /// The peer's load as far as this node knows.
    var length: Double { reportedLength + Double(inFlight) }
    /// Idle consumers not yet covered by what this node sent.
    var waiting: Int { Swift.max(0, reportedWaiting - inFlight) }
    var rate: Double = 0
    var finishTime: Double = 0
    var hasConsumers = false
    var accepting = true
    /// Its hello announced ``QueueWire/featureOwnershipHandover``.
    var adoptsOwnership = false
    /// Its hello announced ``QueueWire/featureReplicas``.
    var keepsReplicas = false
    /// It refused a replica (full or closed): not asked again before this time.
    var replicaRefusedUntil: UInt64 = 0
    /// Its queue is closed (its report or a `closed` refusal said so): unlike a full one,
    /// it will not take items again.
    var closed = false
}

/// The peers a queue tracks, kept sorted by ID: a walk over them (a sum of rates, the choice of
/// a peer) visits them in the same order in every process, which a dictionary's order does not
/// (Swift seeds hashing per process). Looked up by binary search: a handful of peers, and
/// lookups per transfer or message, not per item.
struct PeerViews: Sendable, RandomAccessCollection {
    typealias Element = (key: PeerID, value: PeerView)
    private var entries: [Element] = []

    var startIndex: Int { 0 }
    var endIndex: Int { entries.count }
    subscript(position: Int) -> Element { entries[position] }

    /// The tracked peers, ascending.
    var keys: LazyMapCollection<[Element], PeerID> { entries.lazy.map(\.key) }
    /// The views in ascending peer order.
    var values: LazyMapCollection<[Element], PeerView> { entries.lazy.map(\.value) }

    /// The peers whose view passes `isIncluded`, still sorted.
    func filter(_ isIncluded: (Element) throws -> Bool) rethrows -> PeerViews {
        var kept = PeerViews()
        kept.entries = try entries.filter(isIncluded)
        return kept
    }

    /// Changes `peer`'s view in place; nothing if it is not tracked.
    mutating func update(_ peer: PeerID, _ body: (inout PeerView) -> Void) {
        let index = self.index(of: peer)
        guard index < entries.count && entries[index].key == peer else { return }
        body(&entries[index].value)
    }

    /// `peer`'s view, if tracked. Setting a view tracks the peer; setting nil forgets it.
    subscript(peer: PeerID) -> PeerView? {
        get {
            let index = self.index(of: peer)
            return index < entries.count && entries[index].key == peer ? entries[index].value : nil
        }
        set {
            let index = self.index(of: peer)
            let present = index < entries.count && entries[index].key == peer
            switch (newValue, present) {
            case (let view?, true): entries[index].value = view
            case (let view?, false): entries.insert((peer, view), at: index)
            case (nil, true): entries.remove(at: index)
            case (nil, false): break
            }
        }
    }

    /// The position of `peer`, or where it would go (binary search).
    private func index(of peer: PeerID) -> Int {
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].key < peer { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

extension PeerView {
    /// Linked, and its last report is at most `maxAge` old.
    func isFresh(now: UInt64, maxAge: UInt64) -> Bool {
        connected && hasReport && now &- receivedAt <= maxAge
    }

    /// The rate decisions count for it: the one it reported or, a consumer node not measured
    /// yet, `prior`; 0 without consumers.
    func effectiveRate(prior: Double) -> Double {
        hasConsumers ? (rate > 0 ? rate : prior) : 0
    }
}
