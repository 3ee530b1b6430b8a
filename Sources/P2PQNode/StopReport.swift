/// What a graceful ``Node/stop()`` achieved. Items count over every queue of the node.
public struct StopReport: Sendable, Equatable, CustomStringConvertible {
    /// Items peers acknowledged during the stop (queued and in-flight items handed over; with
    /// them, ownership of those this node owned).
    public var handedOver = 0
    /// Items still here when the node left: no live peer took them, or the drain timed out.
    /// Lost unless another node owns them (it re-queues them when it learns this node left).
    public var notHandedOver = 0
    /// Items of pop confirmations and custody notices their owners acknowledged during the stop.
    public var noticesFlushed = 0
    /// Items of pop confirmations and custody notices never acknowledged (owner unreachable or
    /// timeout): their owners may deliver those items again.
    public var noticesNotFlushed = 0
    /// Records of items this node owned that peers still held, unconfirmed, when it left (not
    /// taken over by their holder): those items have no owner any more, so the death of the
    /// node holding them would lose them (see docs/api.md).
    public var ownedHeldElsewhere = 0
    /// A peer that takes transfers was connected when the drain ended.
    public var hadLivePeer = false
    /// The drain ended at ``NodeConfiguration/drainTimeout`` with work left.
    public var timedOut = false
    /// How long the stop took.
    public var duration: Duration = .zero

    public init() {}

    public var description: String {
        "handed over \(handedOver), not handed over \(notHandedOver), notices flushed \(noticesFlushed), "
            + "not flushed \(noticesNotFlushed), owned items held elsewhere \(ownedHeldElsewhere)"
            + "\(hadLivePeer ? "" : ", no live peer")\(timedOut ? ", timed out" : ""), took \(duration)"
    }
}
