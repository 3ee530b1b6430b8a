/// The type byte of a message.
///
/// The type space is split into ranges, one per protocol layer, so a layer can be added
/// without renumbering another:
///
/// | range       | layer                                    |
/// |-------------|------------------------------------------|
/// | `0x01–0x0F` | link (this module): hello, ping, …       |
/// | `0x10–0x1F` | membership (SWIM, P2PQMembership)        |
/// | `0x20–0x3F` | queue, reserved                          |
/// | `0x40–0x5F` | remote calls, reserved                   |
/// | `0xF0–0xFF` | experimental: `0xF0` benchmark payload   |
///
/// `0x00` and every other value are unassigned. Only the cases below decode today; any other
/// byte, reserved or not, is ``WireError/unknownMessageType(_:)`` and closes the link.
public enum MessageType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// First message on a link after the handshake, sent by both sides.
    case hello = 0x01
    /// Liveness probe; answered with ``pong``.
    case ping = 0x02
    /// Answer to a ``ping``, echoing its fields.
    case pong = 0x03
    /// Last message before a side closes the link.
    case goodbye = 0x04
    /// Peer exchange: addresses of other peers.
    case peers = 0x05
    /// The sender's operations endpoint address (sent only to peers whose hello has
    /// ``WireProtocol/featureOperationsAddress``).
    case operations = 0x06
    /// Membership: a SWIM probe (body decoded by P2PQMembership).
    case membershipPing = 0x10
    /// Membership: the answer to a probe.
    case membershipAck = 0x11
    /// Membership: a request to probe a member on the sender's behalf.
    case membershipPingRequest = 0x12
    /// Membership: an indirect probe got no answer in time (Lifeguard).
    case membershipNack = 0x13
    /// Membership: updates only (state sync on a new link, leave announcements).
    case membershipGossip = 0x14
    /// Queue (P2PQQueue): a node's load report for one named queue.
    case queueStats = 0x20
    /// Queue: a node with idle consumers asks a peer for a batch of items.
    case queueStealRequest = 0x21
    /// Queue: the answer to a steal request when the peer has nothing to give.
    case queueStealEmpty = 0x22
    /// Queue: a batch of items handed from one node to another.
    case queueTransfer = 0x23
    /// Queue: the receiver of a transfer accepts or refuses it.
    case queueTransferAck = 0x24
    /// Queue: pop confirmations and custody changes, sent to an item's owner in batches.
    case queueOwnerUpdate = 0x25
    /// Queue: the owner got an owner update (the sender may forget it).
    case queueOwnerUpdateAck = 0x26
    /// Queue: a stopping owner hands the ownership of items to the node holding them.
    case queueOwnerChange = 0x27
    /// Queue: a holder that may have been declared dead asks an owner which of its copies are
    /// stale (re-queued or confirmed meanwhile).
    case queueCustodyCheck = 0x28
    /// Queue: the owner's answer to a custody check, the stale copies.
    case queueCustodyVerdict = 0x29
    /// Queue: an owner tells the holder of its replicas which of them it no longer needs.
    case queueReplicaRelease = 0x2A
    /// Queue: an owner that may have been declared dead asks the holder of its replicas which
    /// of them it re-queued as its own (the owner drops those originals).
    case queueReplicaCheck = 0x2B
    /// Queue: the replica holder's answer to a replica check, the replicas it re-queued.
    case queueReplicaVerdict = 0x2C
    /// Opaque payload of the link benchmark (`p2pq bench link`); never sent by a node.
    case benchmark = 0xF0
    /// Remote calls (P2PQRemoteCall): a batch of call results, executor to caller.
    case remoteCallResults = 0x40
    /// Remote calls: the executor began running these calls.
    case remoteCallStarted = 0x41
    /// Remote calls: the caller cancels these calls, caller to executor.
    case remoteCallCancel = 0x42
    /// Remote calls: call items sent straight to an executor that granted credit for them,
    /// caller to executor (one network hop instead of a trip through the queue).
    case remoteCallDirect = 0x43
    /// Remote calls: the executor grants the caller credit for more direct calls.
    case remoteCallCredit = 0x44
    /// Remote calls: consecutive direct calls of one caller to one function as one run (one
    /// header, the arguments in one buffer), caller to executor; only to a peer whose hello
    /// has ``WireProtocol/featureCallRuns``.
    case remoteCallDirectRun = 0x45
    /// Remote calls: results of consecutive calls as one run (the first sequence once),
    /// executor to caller; only to a peer whose hello has ``WireProtocol/featureResultRuns``.
    case remoteCallResultRun = 0x46

    /// Link-level messages (this module).
    public static let linkRange: ClosedRange<UInt8> = 0x01...0x0F
    /// Membership (SWIM); decoded by P2PQMembership, not by ``LinkMessage``.
    public static let membershipRange: ClosedRange<UInt8> = 0x10...0x1F
    /// Reserved for the work queue.
    public static let queueRange: ClosedRange<UInt8> = 0x20...0x3F
    /// Reserved for remote calls.
    public static let remoteCallRange: ClosedRange<UInt8> = 0x40...0x5F
    /// Reserved for experiments; never used by a release.
    public static let experimentalRange: ClosedRange<UInt8> = 0xF0...0xFF

    /// Which layer a raw type byte belongs to, whether or not it is decodable yet.
    public static func family(of raw: UInt8) -> MessageFamily {
        switch raw {
        case linkRange: return .link
        case membershipRange: return .membership
        case queueRange: return .queue
        case remoteCallRange: return .remoteCall
        case experimentalRange: return .experimental
        default: return .unassigned
        }
    }

    public var description: String {
        switch self {
        case .hello: return "hello"
        case .ping: return "ping"
        case .pong: return "pong"
        case .goodbye: return "goodbye"
        case .peers: return "peers"
        case .operations: return "operations"
        case .membershipPing: return "membership ping"
        case .membershipAck: return "membership ack"
        case .membershipPingRequest: return "membership ping-req"
        case .membershipNack: return "membership nack"
        case .membershipGossip: return "membership gossip"
        case .queueStats: return "queue stats"
        case .queueStealRequest: return "queue steal request"
        case .queueStealEmpty: return "queue steal empty"
        case .queueTransfer: return "queue transfer"
        case .queueTransferAck: return "queue transfer ack"
        case .queueOwnerUpdate: return "queue owner update"
        case .queueOwnerUpdateAck: return "queue owner update ack"
        case .queueOwnerChange: return "queue owner change"
        case .queueCustodyCheck: return "queue custody check"
        case .queueCustodyVerdict: return "queue custody verdict"
        case .queueReplicaRelease: return "queue replica release"
        case .queueReplicaCheck: return "queue replica check"
        case .queueReplicaVerdict: return "queue replica verdict"
        case .benchmark: return "benchmark"
        case .remoteCallResults: return "remote call results"
        case .remoteCallStarted: return "remote call started"
        case .remoteCallCancel: return "remote call cancel"
        case .remoteCallDirect: return "remote call direct"
        case .remoteCallCredit: return "remote call credit"
        case .remoteCallDirectRun: return "remote call direct run"
        case .remoteCallResultRun: return "remote call result run"
        }
    }
}

/// The layer a message type range is assigned to (see ``MessageType``).
public enum MessageFamily: Sendable, Equatable {
    case link, membership, queue, remoteCall, experimental, unassigned
}
