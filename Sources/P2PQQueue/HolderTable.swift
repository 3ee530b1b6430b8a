import P2PQWire

/// The peers holding owned items, each named in the ownership records by a 4-byte handle.
/// A peer gets a handle when it first takes custody of an item and gives it back when it is
/// declared dead (its items are then re-queued, so no record names it): the table holds at most
/// the peers alive or not yet declared dead.
struct HolderTable: Sendable {
    /// The handle of "no peer: the item is here".
    static let here: UInt32 = 0
    /// An ownership record's replica field while the item, with no replica, is on a transfer
    /// not acknowledged yet (the transfer's ack makes the second copy).
    static let inTransit: UInt32 = .max
    /// A draining owner offered the record to the holder with handle `handle` (owner change
    /// not acknowledged yet). Per holder: custody news may move a record offered to one holder
    /// on to the next, and the first holder's ack must not drop the second offer.
    static func granted(to handle: UInt32) -> UInt32 { handle | grantedBit }
    private static let grantedBit: UInt32 = 1 << 31
    private var handles: [PeerID: UInt32] = [:]
    private var peersByHandle: [UInt32: PeerID] = [:]
    private var freeHandles: [UInt32] = []
    private var nextHandle: UInt32 = 1
    /// The peer whose handle was asked for last: a transfer's ack asks once, many acks in a row
    /// name the same peer.
    private var last: (peer: PeerID, handle: UInt32)?

    /// Peers with a handle (for tests of the bound).
    var count: Int { handles.count }

    /// `peer`'s handle, given now if it has none.
    mutating func handle(for peer: PeerID) -> UInt32 {
        if let last, last.peer == peer { return last.handle }
        let handle: UInt32
        if let existing = handles[peer] {
            handle = existing
        } else {
            handle = freeHandles.popLast() ?? nextHandle
            if handle == nextHandle {
                precondition(nextHandle < Self.grantedBit, "holder handles exhausted")  // peers alive, far fewer
                nextHandle += 1
            }
            handles[peer] = handle
            peersByHandle[handle] = peer
        }
        last = (peer, handle)
        return handle
    }

    /// `peer`'s handle if it has one.
    func handle(of peer: PeerID) -> UInt32? { handles[peer] }

    /// The peer with handle `handle` (granted bit cleared), if any.
    func peer(of handle: UInt32) -> PeerID? { peersByHandle[handle & ~Self.grantedBit] }

    /// Frees `peer`'s handle: no record may name it any more.
    mutating func forget(_ peer: PeerID) {
        guard let handle = handles.removeValue(forKey: peer) else { return }
        peersByHandle[handle] = nil
        freeHandles.append(handle)
        if last?.peer == peer { last = nil }
    }
}
