import Logging
import P2PQLink
import P2PQMembership
import P2PQQueue
import P2PQReactor
import P2PQWire

/// Everything a node needs to start.
public struct NodeConfiguration: Sendable {
    /// The address to listen on. Loopback by default; anything else needs a cluster key.
    public var listenHost: String = "127.0.0.1"
    /// 0 picks a free port (see ``NodeInfo/listenAddress``).
    public var listenPort: Int = 0
    /// The host peers should dial back (default: `listenHost`; with a wildcard listen host,
    /// peers use the address they see the connection come from).
    public var advertisedHost: String?
    /// `host:port` addresses to dial at start; a host may be a name (see ``HostAndPort``):
    /// resolved by ``Node/start()``, which fails if it cannot be, and again before each redial.
    public var bootstrap: [String] = []
    /// The cluster's shared key. Without one the node speaks Noise with a fixed development
    /// key and refuses anything but loopback.
    public var clusterKey: ClusterKey?
    /// Plaintext links without authentication, for loopback benchmarks only. Off by default.
    public var insecure = false
    /// Hello feature bits this node announces, masked (tests: a node that announces fewer, as
    /// an older one does).
    var helloFeatureMask: UInt64 = .max
    /// The AEAD of the Noise links. nil (the default) lets each link choose: AES-256-GCM when
    /// both ends have AES instructions (see ``aesInstructions``), ChaCha20-Poly1305 otherwise;
    /// links to protocol version 1 peers run ChaCha20-Poly1305. A cipher set here is the only
    /// one the node runs, with every peer: a peer that cannot run it is refused at the
    /// handshake (`--link-cipher`, docs/operations.md).
    public var linkCipher: LinkCipher?
    /// Whether this CPU has the AES and carry-less multiply instructions that make AES-256-GCM
    /// the faster cipher; detected when the configuration is made. Tests set it to act as
    /// another machine.
    public var aesInstructions: Bool = CPUFeatures.hasAESGCMInstructions
    /// The peer protocol versions the node speaks; `1...1` makes it a version 1 node (no
    /// cipher offer), for interoperability tests.
    public var protocolVersions: ClosedRange<UInt16> = WireProtocol.supportedVersions
    /// The node's identity; generated when nil (see ``identityFile``).
    public var identity: NodeIdentity?
    /// Load the identity from this file, creating it (mode 0600) on first start.
    public var identityFile: String?
    /// Most peers linked at once.
    public var maxPeers = 64
    /// Largest message a peer may send.
    public var maxFrameSize = WireProtocol.defaultMaxFrameSize
    /// Limits, delivery mode and balancing of every named queue (its `maxFrameSize` is
    /// replaced by the node's).
    public var queue = QueueConfiguration()
    /// Per-link outbound buffering: above `highWatermark` queued bytes the link is unwritable.
    public var highWatermark = 4 << 20
    public var lowWatermark = 1 << 20
    /// A connection that has not finished the handshake and hello by then is closed.
    public var handshakeTimeout: Duration = .seconds(5)
    /// An inbound connection whose first handshake message has not arrived whole by then is
    /// closed (a real peer sends it at once; see docs/operations.md, "Trust model").
    public var handshakeFirstMessageTimeout: Duration = .seconds(1)
    /// Inbound handshakes in progress at once from one source address; at the limit the
    /// source's oldest stalled handshake makes room. All sources together may have
    /// `2 * maxPeers + 16`.
    public var maxHandshakesPerSource = 32
    /// A link silent this long is pinged.
    public var keepaliveInterval: Duration = .seconds(1)
    /// A link silent this long is closed.
    public var keepaliveTimeout: Duration = .seconds(3)
    /// First redial delay after a lost link; doubles per failure up to `maxBackoff`, jittered.
    public var baseBackoff: Duration = .milliseconds(100)
    public var maxBackoff: Duration = .seconds(10)
    /// How long `stop()` waits for peers to acknowledge the items and confirmations it hands
    /// over, and then again for its goodbyes to be written (see ``Node/stop()``). 5 s: a full
    /// queue at the default limits (256 MiB) takes over 2 s to cross a 1 Gb/s link.
    public var drainTimeout: Duration = .seconds(5)
    /// Where the node's metrics go (see ``NodeMetricsBackend``).
    public var metrics: NodeMetricsBackend = .global
    /// mDNS / DNS-SD discovery: on by default, on loopback port 5353 (see docs/discovery.md).
    public var discovery = DiscoveryConfiguration()
    /// SWIM membership timings and limits (nanoseconds; LAN defaults, see docs/protocol.md).
    public var membership = MembershipConfiguration()
    /// Seeds the membership's random choices; split from the environment's seed when nil
    /// (tests fix it to replay a run).
    public var membershipSeed: UInt64?
    /// The node's clocks, random seed, incarnation and handshake keys; nil:
    /// ``NodeEnvironment/system()`` at start. Tests and simulations pass their own.
    public var environment: NodeEnvironment?
    /// The reactor's settings (backend, buffers).
    public var reactor = ReactorConfiguration()
    /// Where the node logs; the PeerID is added to its metadata.
    public var logger = Logger(label: "p2pq.node")
    /// Resolves bootstrap host names (blocking; called off the reactor thread). Tests replace it.
    var resolveHost: @Sendable (String, Int) throws(NodeError) -> SocketAddress = HostAndPort.systemResolve

    public init() {}
}

/// Why a node could not start or act.
public enum NodeError: Error, Sendable, CustomStringConvertible {
    case invalidConfiguration(String)
    /// Listening or dialing off loopback without a cluster key (or in insecure mode).
    case notLoopback(String)
    case reactor(ReactorError)
    case identity(IdentityError)
    case alreadyStarted
    case stopped
    /// A wait (``Node/waitForPeers(count:timeout:)``) ran out of time.
    case timedOut(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid configuration: \(why)"
        case .notLoopback(let why): return why
        case .reactor(let error): return "\(error)"
        case .identity(let error): return "\(error)"
        case .alreadyStarted: return "the node is already started"
        case .stopped: return "the node is stopped"
        case .timedOut(let why): return "timed out: \(why)"
        }
    }
}

/// What `start()` reports.
public struct NodeInfo: Sendable, CustomStringConvertible {
    public let peerID: PeerID
    /// The bound address (with the real port when 0 was asked).
    public let listenAddress: SocketAddress
    public let backend: ReactorBackendKind

    public var description: String { "node \(peerID.short) listening on \(listenAddress) (\(backend))" }
}

/// A node's view of one peer, for status output.
public struct PeerStatus: Sendable, Equatable {
    public enum State: String, Sendable { case connected, connecting, backoff, failed }
    public var peerID: PeerID?
    public var address: SocketAddress?
    public var state: State
    /// Seconds since the peer was last heard from; nil if never.
    public var secondsSinceHeard: Double?
    public var inbound: Bool?
    /// The peer's membership state, if it is a member this node knows.
    public var membership: MemberState?
}

/// Link-level happenings that upper layers and tests observe.
public enum NodeEvent: Sendable, Equatable {
    case peerConnected(PeerID)
    case peerDisconnected(PeerID, left: Bool)
    /// A connection was refused or closed before it became a link, with the logged reason.
    case linkRejected(remote: SocketAddress, reason: String)
    /// Membership: a member appeared, came back with a new incarnation, or restarted (a new
    /// process of it linked here; the previous one is gone).
    case memberJoined(PeerID)
    /// Membership: a member is suspected to have failed.
    case memberSuspected(PeerID)
    /// Membership: a suspected member refuted the suspicion.
    case memberAlive(PeerID)
    /// Membership: a member was declared dead.
    case memberDead(PeerID)
    /// Membership: a member left gracefully.
    case memberLeft(PeerID)
}

extension LinkSecurity {
    /// The key of a node started without one: loopback-only development clusters share it.
    static let developmentKey = ClusterKey(bytes: Array("p2pq loopback development key!!!".utf8))!
}

extension NodeConfiguration {
    /// What the node's links offer (``linkCipher``, else by ``aesInstructions``).
    var linkCipherChoice: LinkCipherChoice {
        linkCipher.map { .forced($0) } ?? .automatic(aesInstructions: aesInstructions)
    }
}
