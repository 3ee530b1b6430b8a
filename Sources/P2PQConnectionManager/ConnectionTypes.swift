/// One established, authenticated link, named by the node shell.
///
/// The shell allocates these (a counter is enough) and must never reuse one: the manager
/// forgets a link as soon as it emits `closeLink` for it, so a late `linkDown` or message for a
/// reused ID would otherwise land on the wrong link.
public struct LinkID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The shell's number for the link.
    public var rawValue: UInt64

    /// Wraps the shell's number for a link.
    public init(_ rawValue: UInt64) {
        self.rawValue = rawValue
    }

    /// Numeric order; used only to make action order deterministic.
    public static func < (lhs: LinkID, rhs: LinkID) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "link \(rawValue)" }
}

/// Which side opened the TCP connection of a link.
public enum LinkDirection: Hashable, Sendable {
    /// This node dialed (it is the link's initiator).
    case outbound
    /// The peer dialed this node.
    case inbound
}

/// Why the manager asks the shell to close a link.
public enum LinkCloseReason: Hashable, Sendable {
    /// A second link to an already-linked peer; the other link is kept (see ``ConnectionMachine``).
    case duplicate
    /// The link leads back to this node.
    case selfConnection
    /// The node already has `maxPeers` links.
    case tooManyPeers
    /// Nothing was heard on the link for `keepaliveTimeout`.
    case keepaliveTimeout
    /// This node is stopping; the shell should say goodbye on the link before closing it, so the
    /// peer reports `peerLeft: true` and does not redial.
    case leaving
}

/// Why a connected peer is no longer connected (``ConnectionAction/peerDisconnected(_:reason:)``).
public enum PeerDisconnectReason: Hashable, Sendable {
    /// The link closed without a goodbye (error, reset, remote close); a redial is scheduled
    /// unless membership declared the peer gone (``ConnectionMachine/peerGone(_:now:)``).
    case linkLost
    /// The peer said goodbye; it is not redialed (unless it is a bootstrap address).
    case peerLeft
    /// The peer refused the link with a goodbye (one too many for it, or an error it found), or
    /// closed it as a duplicate of a link it keeps: it was alive then. Redialed only after
    /// `maxBackoff`.
    case peerClosed
    /// This node closed the link (with a goodbye) to make room for a newcomer short of links;
    /// the peer was alive. Not redialed.
    case evicted
    /// This node closed the link because the peer went silent; a redial is scheduled unless
    /// membership declared the peer gone.
    case keepaliveTimeout
    /// This node stopped.
    case stopped
}

/// One entry of a peer list: a peer and the address it advertises for dialing.
public struct PeerListEntry<PeerID: Hashable & Sendable, Address: Hashable & Sendable>: Hashable, Sendable {
    public var peer: PeerID
    public var address: Address

    public init(peer: PeerID, address: Address) {
        self.peer = peer
        self.address = address
    }
}

/// What the node shell must do after an input to ``ConnectionMachine``, in order.
public enum ConnectionAction<PeerID: Hashable & Comparable & Sendable, Address: Hashable & Sendable>: Hashable, Sendable {
    /// Open a TCP connection to the address and run the handshake. Answer with exactly one of
    /// `linkUp(direction: .outbound, dialedAddress: address)` or `dialFailed(address:)`.
    case dial(Address)
    /// Close the link (for `.leaving`, after a goodbye). The manager has already forgotten it;
    /// the `linkDown` that follows is ignored.
    case closeLink(LinkID, reason: LinkCloseReason)
    /// Send a keepalive ping; the peer's answer (like any message) is reported with `heard`.
    case sendPing(LinkID)
    /// Send these peers (never the recipient itself) over the link.
    case sendPeerList(LinkID, [PeerListEntry<PeerID, Address>])
    /// Arm the node's single timer for this monotonic time, replacing any earlier setting;
    /// call `tick` when it fires.
    case armTimer(at: UInt64)
    /// Nothing is pending any more: disarm the timer.
    case cancelTimer
    /// For upper layers: the peer is reachable over this link.
    case peerConnected(PeerID, LinkID)
    /// For upper layers: the peer stays connected but now over `to`; `from` (a duplicate that
    /// was announced before the winning link came up) is being closed. Messages sent on `from`
    /// may be lost.
    case peerLinkChanged(PeerID, from: LinkID, to: LinkID)
    /// For upper layers: the peer's link is gone. Paired with exactly one earlier `peerConnected`.
    case peerDisconnected(PeerID, reason: PeerDisconnectReason)
}

/// One row of the manager's peer table, for status output.
///
/// Connected peers get one row each. Addresses being dialed, waiting to be redialed, or given
/// up on get one row each, with `peer` set when the manager knows who is (or was) there:
/// a bootstrap address dialed for the first time has `peer == nil`.
public struct PeerRecord<PeerID: Hashable & Sendable, Address: Hashable & Sendable>: Hashable, Sendable {
    /// Where the peer stands.
    public enum State: Hashable, Sendable {
        case connected
        case connecting
        case backoff(until: UInt64)
        case failed
    }

    public var peer: PeerID?
    /// The address the peer advertises, or the one the manager dials.
    public var address: Address?
    public var state: State
    /// When the peer was last heard from (monotonic nanoseconds); 0 if never.
    public var lastSeen: UInt64
    /// The link, when connected.
    public var link: LinkID?
    /// The link's direction, when connected.
    public var direction: LinkDirection?

    public init(
        peer: PeerID?, address: Address?, state: State, lastSeen: UInt64,
        link: LinkID? = nil, direction: LinkDirection? = nil
    ) {
        self.peer = peer
        self.address = address
        self.state = state
        self.lastSeen = lastSeen
        self.link = link
        self.direction = direction
    }
}

/// The knobs of a ``ConnectionMachine``. Durations are in nanoseconds.
public struct ConnectionConfiguration: Hashable, Sendable {
    /// Delay before the first redial after a link is lost; doubles with each failed dial.
    public var baseBackoff: UInt64
    /// Cap of the redial delay (before jitter).
    public var maxBackoff: UInt64
    /// Consecutive failed dials after which a non-bootstrap address is given up.
    public var maxDialAttempts: Int
    /// A link silent this long is pinged (at most once per interval).
    public var keepaliveInterval: UInt64
    /// A link silent this long is closed.
    public var keepaliveTimeout: UInt64
    /// Most links at once; in-flight dials count against it too.
    public var maxPeers: Int
    /// Fewer links than this and the node's dials ask to be let in (``ConnectionMachine/needsLinks``):
    /// a full peer then makes room instead of refusing. Capped at half of `maxPeers`.
    public var minPeers: Int
    /// Most addresses remembered; when full, the oldest failed (then idle) one is forgotten.
    public var maxKnownAddresses: Int
    /// Most entries in one peer list sent (the wire's limit is 1024); the lowest peer IDs are
    /// kept.
    public var maxPeerListEntries: Int

    public init(
        baseBackoff: UInt64 = 100_000_000,
        maxBackoff: UInt64 = 10_000_000_000,
        maxDialAttempts: Int = 10,
        keepaliveInterval: UInt64 = 1_000_000_000,
        keepaliveTimeout: UInt64 = 3_000_000_000,
        maxPeers: Int = 64,
        minPeers: Int = 8,
        maxKnownAddresses: Int = 1024,
        maxPeerListEntries: Int = 1024
    ) {
        self.baseBackoff = baseBackoff
        self.maxBackoff = maxBackoff
        self.maxDialAttempts = maxDialAttempts
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout
        self.maxPeers = maxPeers
        self.minPeers = minPeers
        self.maxKnownAddresses = maxKnownAddresses
        self.maxPeerListEntries = maxPeerListEntries
    }
}
