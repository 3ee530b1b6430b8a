import P2PQWire

/// Timings and limits of the membership protocol. All durations are nanoseconds.
///
/// The defaults are for a LAN (and loopback): see the membership section of docs/protocol.md
/// for how they add up to the detection times.
public struct MembershipConfiguration: Sendable, Equatable {
    /// One protocol period: a member is probed every `probeInterval` × local health.
    public var probeInterval: UInt64 = 500_000_000
    /// How long a direct probe waits for its ack (× local health) before asking helpers.
    public var probeTimeout: UInt64 = 250_000_000
    /// Helpers asked to probe a member that did not answer directly.
    public var indirectProbes = 3
    /// The suspicion timeout with every expected confirmation in.
    public var suspicionMinTimeout: UInt64 = 500_000_000
    /// The suspicion timeout with no confirmation.
    public var suspicionMaxTimeout: UInt64 = 3_000_000_000
    /// Independent suspicions that bring the timeout down to the minimum (Lifeguard's K);
    /// fewer when the cluster has fewer other members.
    public var expectedConfirmations = 3
    /// Highest local health score; timeouts and the interval are multiplied by score + 1.
    public var maxLocalHealth = 8
    /// λ: each update is sent λ·⌈log10(n + 1)⌉ times (n members).
    public var retransmitMultiplier = 4
    /// Room for piggybacked updates in one probe, ack, nack or ping-req.
    public var maxPiggybackBytes = 1024
    /// Pending updates are also pushed on their own to `gossipFanout` members this often.
    public var gossipInterval: UInt64 = 200_000_000
    /// Members each gossip round goes to (0: piggyback only).
    public var gossipFanout = 3
    /// How long a member declared dead or left is kept as a tombstone before it is forgotten
    /// (on a later tick). It must outlast the dissemination of the verdict (about
    /// `retransmitLimit` gossip rounds, well under a second on a LAN): while the tombstone is
    /// kept, a stale `alive` at the old incarnation cannot resurrect the member; after it is
    /// gone, such news would make it join again. A member with a higher incarnation (a
    /// restart, or a refutation) may rejoin at any time, tombstone or not.
    public var tombstoneRetention: UInt64 = 60_000_000_000
    /// Most members remembered (this node excluded, tombstones included), so a cluster with
    /// churn or a flood of made-up members cannot grow the table without bound. When full,
    /// the tombstone closest to its expiry makes room; with no tombstone to drop, news of a
    /// stranger is ignored (it is not tracked and no event is reported) until room frees up.
    /// Live members are never evicted.
    public var maxMembers = 4096

    public init() {}

    /// A configuration problem, or nil when the settings are usable.
    public var problem: String? {
        if probeInterval == 0 || probeTimeout == 0 { return "probe interval and timeout must be positive" }
        if probeTimeout >= probeInterval { return "the probe timeout must be shorter than the probe interval" }
        if indirectProbes < 0 { return "indirect probes must not be negative" }
        if suspicionMinTimeout == 0 || suspicionMinTimeout > suspicionMaxTimeout {
            return "the suspicion timeouts must satisfy 0 < min ≤ max"
        }
        if expectedConfirmations < 0 { return "expected confirmations must not be negative" }
        if maxLocalHealth < 0 { return "max local health must not be negative" }
        if retransmitMultiplier < 1 { return "the retransmit multiplier must be at least 1" }
        if maxPiggybackBytes < MemberUpdate.encodedSize { return "the piggyback room must hold one update" }
        if gossipInterval == 0 || gossipFanout < 0 { return "gossip interval must be positive and fanout not negative" }
        if tombstoneRetention == 0 { return "the tombstone retention must be positive" }
        if maxMembers < 1 { return "max members must be at least 1" }
        return nil
    }
}

/// A member's state as this node sees it.
public enum MemberState: String, Sendable, Hashable {
    case alive, suspect, dead, left
}

/// What the layers above learn about a member.
public enum MembershipEvent: Sendable, Hashable {
    /// A member appeared: first heard of, or back with a new incarnation after dead or left.
    case joined(PeerID)
    /// A new process of a member held alive or suspect: its link's hello announced a later
    /// start than the incarnation known or than its previous link's hello. The process known
    /// before is gone, with no verdict: what it held or kept is lost as after a death.
    case restarted(PeerID)
    /// A member is suspected to have failed.
    case suspect(PeerID)
    /// A suspected member refuted the suspicion.
    case alive(PeerID)
    /// A member was declared dead.
    case dead(PeerID)
    /// A member left gracefully.
    case left(PeerID)
    /// This node heard itself declared dead (or left) and refuted it: members that believed
    /// the verdict may have taken back what this node holds for them.
    case refutedDeath
}

/// What the shell must do after an input to ``MembershipMachine``, in order.
public enum MembershipAction: Sendable, Hashable {
    /// Send the message to the member over its link. If it cannot be sent (no ready link),
    /// tell the membership with ``MembershipMachine/undeliverable(_:to:now:)``.
    case send(MembershipMessage, to: PeerID)
    /// Report the event to the layers above.
    case event(MembershipEvent)
    /// Arm the single membership timer for this monotonic time, replacing any earlier one;
    /// call ``MembershipMachine/tick(now:)`` when it fires.
    case armTimer(at: UInt64)
}

/// One member as ``MembershipMachine/members`` reports it.
public struct MemberStatus: Sendable, Hashable {
    public var peer: PeerID
    public var state: MemberState
    public var incarnation: UInt64
}

