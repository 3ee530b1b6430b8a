import P2PQWire

/// One transfer this node sent, awaiting its acknowledgement.
struct OutgoingTransfer: Sendable {
    var peer: PeerID
    /// The items as sent (hop count already raised); their arrays are held in the queue's store.
    var runs: [QueueRun]
    var count: Int
    var bytes: Int
    var kind: TransferKind
    /// The steal request it answers (0: none).
    var requestID: UInt64 = 0
    var deadline: UInt64
    /// The lowest own sequence it carries that has no replica: its ack is that item's
    /// second copy (a push waits for it as for a replica's).
    var unreplicatedFrom: UInt64? = nil
}

/// A queue's transfers: those it sent that await their acknowledgement (their items count
/// against the limits until acknowledged or returned), the transfer IDs (replica transfers
/// take theirs here too), and the copies received recently, so a retransmission is dropped.
struct TransferLedger: Sendable {
    private var outgoing: [UInt64: OutgoingTransfer] = [:]
    private var nextID: UInt64 = 1
    /// Items on the outgoing transfers.
    private(set) var items = 0
    /// Their payload bytes.
    private(set) var bytes = 0
    /// Received copies seen recently.
    var seen: DedupSet

    init(dedupCapacity: Int) {
        seen = DedupSet(capacity: dedupCapacity)
    }

    /// Outgoing transfers awaiting their acknowledgement.
    var count: Int { outgoing.count }

    /// The outgoing transfers, in no particular order: for order-free questions (any, minimum,
    /// integer sums).
    var all: Dictionary<UInt64, OutgoingTransfer>.Values { outgoing.values }

    subscript(id: UInt64) -> OutgoingTransfer? { outgoing[id] }

    /// A new transfer ID.
    mutating func takeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// `transfer` went out with ID `id` (from ``takeID()``).
    mutating func record(_ transfer: OutgoingTransfer, id: UInt64) {
        outgoing[id] = transfer
        items += transfer.count
        bytes += transfer.bytes
    }

    /// Transfer `id` went out again: its ack is awaited until `deadline`. The transfer, if known.
    mutating func renew(_ id: UInt64, deadline: UInt64) -> OutgoingTransfer? {
        outgoing[id]?.deadline = deadline
        return outgoing[id]
    }

    /// Transfer `id` is settled (acknowledged, or its items taken back): it is forgotten.
    mutating func remove(_ id: UInt64) -> OutgoingTransfer? {
        guard let transfer = outgoing.removeValue(forKey: id) else { return nil }
        items -= transfer.count
        bytes -= transfer.bytes
        return transfer
    }

    /// Outgoing transfers to `peer`.
    func count(to peer: PeerID) -> Int {
        outgoing.values.reduce(0) { $0 + ($1.peer == peer ? 1 : 0) }
    }

    /// The IDs of the outgoing transfers that `match`, ascending.
    func ids(where match: (OutgoingTransfer) -> Bool) -> [UInt64] {
        outgoing.filter { match($0.value) }.keys.sorted()
    }
}
