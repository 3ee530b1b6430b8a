import P2PQWire

/// Something that happened to a peer (or to this node, for ``refuted``), as the node's layers
/// hear it. Link events come from the connection manager, the others from membership; every
/// one goes through ``PeerEventRouting/route(_:)``, the one place that decides which layer
/// hears what.
public enum PeerEvent: Sendable, Hashable {
    /// The connection manager kept a new link to `peer`; `incarnation` is from its hello.
    case linkUp(PeerID, incarnation: UInt64)
    /// `peer` moved to another link (a duplicate lost the tie-break): what was sent on the old
    /// one may be lost.
    case linkReplaced(PeerID)
    /// The link to `peer` closed and no other is kept. `nodeStopping`: this node's own stop
    /// closed it; `peerClosed`: the peer closed it with a goodbye (alive, but refusing it or
    /// keeping another link).
    case linkDown(PeerID, nodeStopping: Bool, peerClosed: Bool = false, asDuplicate: Bool = false)
    /// Membership took `peer` in: new, back with a new incarnation, or refuting a verdict.
    /// `linked`: a link to it is kept right now.
    case joined(PeerID, linked: Bool)
    /// Membership met a new process of `peer`, held alive or suspect: the old one is gone
    /// without a verdict. `linked`: a link to it is kept right now.
    case restarted(PeerID, linked: Bool)
    /// Membership declared `peer` dead.
    case dead(PeerID)
    /// This node was declared dead and refuted it.
    case refuted
    /// `peer` announced it is leaving.
    case left(PeerID)
}

/// What membership hears of a peer event.
public enum MembershipPeerInput: Sendable, Hashable {
    /// A link to the peer is up; `incarnation` is from its hello.
    case linkUp(PeerID, incarnation: UInt64)
    /// The link to the peer is down: probe it, unless it closed the link itself (`probe`
    /// false: it was alive, and in a partial mesh unlinked members are others' to judge).
    case linkDown(PeerID, probe: Bool)
}

/// What every queue machine hears of a peer event.
public enum QueuesPeerInput: Sendable, Hashable {
    /// The peer can be sent to.
    case connected(PeerID)
    /// Disconnected, then connected again, queue by queue, but transfers in flight are sent
    /// again on the new link rather than taken back.
    case linkReplaced(PeerID)
    /// The peer cannot be sent to: take back what is in flight to it, unless the peer closed
    /// the link as a duplicate of one it keeps (`keepingTransfers`): that one comes up here
    /// and they are sent again on it.
    case disconnected(PeerID, keepingTransfers: Bool = false)
    /// Owners re-queue what the peer held.
    case died(PeerID)
    /// Membership took the peer back; `linked`: a link to it is kept.
    case rejoined(PeerID, linked: Bool)
    /// The peer's process was replaced by a new one: owners re-queue what the old one held and
    /// holders re-queue the replicas it kept with them, at once; then as `rejoined`.
    case restarted(PeerID, linked: Bool)
    /// This node was declared dead (and refuted).
    case declaredDead
}

/// What remote calls (caller and executor) hear of a peer event. `disconnected` and
/// `linkReplaced` also void the direct-call credit the peer granted on the old link.
public enum CallsPeerInput: Sendable, Hashable {
    /// The peer is linked: offer it credit for direct calls.
    case connected(PeerID)
    /// Disconnected, then connected again.
    case linkReplaced(PeerID)
    /// Direct calls sent on the lost link are pushed again.
    case disconnected(PeerID)
    /// The peer's started notices count again.
    case joined(PeerID)
    /// Calls the peer was running are pushed again (or fail when out of retries).
    case died(PeerID)
    /// As `died`, for a peer that left.
    case left(PeerID)
}

/// What the connection manager hears of a membership verdict.
public enum ManagerPeerInput: Sendable, Hashable {
    /// Back after a verdict: redial it again if its link drops.
    case joined(PeerID)
    /// Left: stop redialing it.
    case gone(PeerID)
}

/// One layer's input from a peer event.
public enum PeerEventDelivery: Sendable, Hashable {
    /// To membership.
    case membership(MembershipPeerInput)
    /// To every queue machine.
    case queues(QueuesPeerInput)
    /// To the caller and executor machines of remote calls.
    case calls(CallsPeerInput)
    /// To the connection manager.
    case manager(ManagerPeerInput)
}

/// The routing of peer events to the node's layers: a pure function, so the rules can be read
/// (and tested) in one place.
public enum PeerEventRouting {
    /// The inputs `event` makes, in the order the layers hear them.
    public static func route(_ event: PeerEvent) -> [PeerEventDelivery] {
        switch event {
        case .linkUp(let peer, let incarnation):
            // Membership learns the peer's incarnation from the hello; queues and calls may
            // send to it from now on (calls offer it direct-call credit).
            return [.membership(.linkUp(peer, incarnation: incarnation)), .queues(.connected(peer)), .calls(.connected(peer))]
        case .linkReplaced(let peer):
            // Membership sees no change (the peer stays linked). Queues take back transfers and
            // steal requests in flight on the old link; calls re-push direct calls sent on it
            // and void its credit.
            return [.queues(.linkReplaced(peer)), .calls(.linkReplaced(peer))]
        case .linkDown(let peer, let nodeStopping, let peerClosed, let asDuplicate):
            // A link lost is not a verdict: membership probes the peer (unless this node is
            // stopping, when its verdicts no longer matter, or the peer closed the link itself,
            // alive); queues and calls only stop sending and take back what was in flight.
            // Only `dead` or `left` re-queues held items. A link the peer closed as a duplicate
            // of one it keeps (its announcement here came first; the kept one is still in its
            // handshake here) is a replacement seen in two steps: queues keep their transfers
            // in flight for the new link, which the peer may have read on the old one.
            let local: [PeerEventDelivery] = [.queues(.disconnected(peer, keepingTransfers: asDuplicate)), .calls(.disconnected(peer))]
            return nodeStopping ? local : [.membership(.linkDown(peer, probe: !peerClosed))] + local
        case .joined(let peer, let linked):
            // Calls count the peer's started notices again; queues that buried it after a
            // verdict link it again; the manager redials it again if its link (possibly kept
            // through the verdict) drops. A first join changes nothing for the last two.
            return [.calls(.joined(peer)), .queues(.rejoined(peer, linked: linked)), .manager(.joined(peer))]
        case .restarted(let peer, let linked):
            // The old process is dead for certain (no grace for replicas: nothing of it can
            // still be on the way), and a new one is here: a death, then a join, for queues
            // and calls alike.
            return [.queues(.restarted(peer, linked: linked)), .calls(.died(peer)), .calls(.joined(peer)), .manager(.joined(peer))]
        case .dead(let peer):
            // Only a verdict (never a mere disconnect) lets owners re-queue what the peer held
            // and callers retry its calls elsewhere. The manager keeps redialing its addresses
            // with backoff (protocol §5 rule 7): a verdict may be one side of a partition.
            return [.queues(.died(peer)), .calls(.died(peer))]
        case .refuted:
            // Owners that believed this node dead re-queued what it holds: its queues hold
            // those items back until each owner says which copies are stale (protocol §9).
            return [.queues(.declaredDead)]
        case .left(let peer):
            // A leaving node hands its items on first; whatever it could not, its owners take
            // back as after a death (at-least-once). Callers treat it like a death too; the
            // manager forgets it rather than redialing.
            return [.queues(.died(peer)), .calls(.left(peer)), .manager(.gone(peer))]
        }
    }
}
