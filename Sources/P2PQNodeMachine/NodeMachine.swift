import P2PQConnectionManager
import P2PQMembership
import P2PQQueue
import P2PQRemoteCall
import P2PQWire

/// How a ``NodeMachine`` is set up: this node, its timings and its non-deterministic inputs
/// (incarnation and seed), all given from outside.
public struct NodeMachineConfiguration: Sendable {
    /// This node.
    public var localPeer: PeerID
    /// Distinguishes restarts of the same identity (membership announces it).
    public var incarnation: UInt64
    /// Seeds every random choice of the machine: each part gets a generator of its own.
    public var seed: UInt64
    /// Seeds membership instead of `seed` (tests that pin membership's choices).
    public var membershipSeed: UInt64?
    public var connection: ConnectionConfiguration
    public var membership: MembershipConfiguration
    /// Every named queue's settings (the node's internal `p2pq.` queues keep no replicas).
    public var queue: QueueConfiguration
    /// Most named queues, created locally or by peers' messages.
    public var maxQueues: Int
    /// The links' stages (hello, handshake deadline) and the admission of inbound handshakes.
    public var links: LinkStagesConfiguration

    public init(localPeer: PeerID, incarnation: UInt64, seed: UInt64, membershipSeed: UInt64? = nil,
                connection: ConnectionConfiguration = ConnectionConfiguration(),
                membership: MembershipConfiguration = MembershipConfiguration(),
                queue: QueueConfiguration = QueueConfiguration(), maxQueues: Int = 256,
                links: LinkStagesConfiguration = LinkStagesConfiguration()) {
        self.localPeer = localPeer
        self.incarnation = incarnation
        self.seed = seed
        self.membershipSeed = membershipSeed
        self.connection = connection
        self.membership = membership
        self.queue = queue
        self.maxQueues = maxQueues
        self.links = links
    }
}

/// The timers a ``NodeMachine`` arms: one per part that keeps time.
public enum NodeTimer: Sendable, Hashable {
    /// The connection manager's (keepalives, redials).
    case connections
    /// Membership's (protocol periods, suspicions).
    case membership
    /// A named queue's (stats, balancing, leases, timeouts).
    case queue(String)
    /// The caller's (call deadlines, waits for credit).
    case calls
    /// A link's stages' (the handshake deadline).
    case link(LinkID)
    /// The admission of inbound handshakes' (first-message deadlines, the report).
    case admission
}

/// What the shell does for a ``NodeMachine``, in order.
public enum NodeAction<Address: Hashable & Sendable>: Sendable, Equatable {
    /// Dial `address`; answer with ``NodeMachine/linkOpened(_:dialing:now:)`` (a driver
    /// without link stages: ``NodeMachine/linkUp(_:peer:direction:incarnation:features:peerAddress:dialedAddress:now:)``)
    /// or ``NodeMachine/dialFailed(_:now:)``.
    case dial(Address)
    /// Close a link that has no stages here (one a driver reported with
    /// ``NodeMachine/linkUp(_:peer:direction:incarnation:features:peerAddress:dialedAddress:now:)``);
    /// a real link says it with ``LinkMachine/close(_:)``'s goodbye.
    case closeLink(LinkID, reason: LinkCloseReason)
    /// Send a keepalive ping with `nonce` on a link without stages here.
    case sendPing(LinkID, nonce: UInt64)
    /// Send these peer addresses on a link without stages here.
    case sendPeerList(LinkID, [PeerListEntry<PeerID, Address>])
    /// Start the handshake of the inbound connection ``NodeMachine/linkAccepted(_:source:now:)``
    /// admitted (a refused one gets no action: close it without a word).
    case admitLink(LinkID)
    /// Queue a link message on a link (sealed with the rest of the turn's output).
    case sendLinkMessage(LinkID, LinkMessage)
    /// Close a link's connection as `how` says, because of `reason`; log that at `level` (nil:
    /// no line). ``LinkMachine/Closing/failed(duringHandshake:)`` with `true` is a rejected link.
    case closeConnection(LinkID, how: LinkMachine.Closing, reason: String, level: NodeLogLevel?)
    /// A line about a link for the log.
    case linkNote(LinkID, NodeLogLevel, String)
    /// A link's hellos are through (the manager hears of it next).
    case linkReady(LinkID)
    /// A dial of `address` failed because of `reason` (for the log; the manager already knows).
    case dialFailedNote(Address, reason: String)
    /// The admission of inbound handshakes' summary of an interval, for the log.
    case admissionReport(HandshakeAdmissionReport)
    /// Send a membership message to `peer` on `link`, the link kept for it when the message was
    /// made (a stop closes links right after the leave is sent); if it cannot go, tell
    /// ``NodeMachine/undeliverable(_:to:now:)``.
    case send(MembershipMessage, to: PeerID, on: LinkID)
    /// Arm `timer` at `at` (monotonic ns), replacing its previous deadline; it fires
    /// ``NodeMachine/tick(_:now:)``.
    case armTimer(NodeTimer, at: UInt64)
    /// Disarm `timer`.
    case cancelTimer(NodeTimer)
    /// The manager kept a link to `peer` (for logs and the node's events).
    case peerConnected(PeerID, LinkID)
    /// `peer` moved to another link (a duplicate lost the tie-break).
    case peerMovedLink(PeerID)
    /// The last link to `peer` closed (for logs and the node's events).
    case peerDisconnected(PeerID, reason: PeerDisconnectReason)
    /// Membership's news (for logs and the node's events); verdicts are routed by the machine.
    case member(MembershipEvent)
    /// What the queue named by the string asks for: send a queue message (if it cannot go,
    /// tell ``NodeMachine/sendFailed(_:to:now:)``), hand items to a waiter or fail it, retry
    /// the pushes waiting for room, arm its timer (``NodeTimer/queue(_:)``). Dead letters are
    /// settled inside (``deadLettered(from:into:refusals:)``).
    case queue(String, QueueAction)
    /// A dead-lettered item of the first queue went into the second (`refusals` 0), or that
    /// queue refused it (`refusals` counts the refusals so far; the item stays held and is
    /// retried).
    case deadLettered(from: String, into: String, refusals: Int)
    /// Send a remote-call message (`0x40–0x5F`) to `peer`; if it cannot go, tell
    /// ``NodeMachine/callMessageUndeliverable(_:to:now:)``.
    case sendCall(RemoteCallMessage, to: PeerID)
    /// Calls ended, in order: each the call the shell named with its token
    /// (``NodeCallRequest/token``). Results that end in one run of actions travel in one list
    /// (a results message answers many calls). A nested call's result comes once its task has
    /// a slot again.
    case completeCalls([NodeCallResult])
    /// Run these tasks (on the workers, or inline); report each with
    /// ``NodeMachine/callsFinished(_:now:)``.
    case runTasks([CallTask])
    /// Nobody waits for this task any more: cancel it (it still reports finished).
    case cancelTask(TaskID)
    /// A call item too broken to name its caller was dropped (for the log).
    case callItemDiscarded(WireError)
    /// Call ``NodeMachine/flushCalls(now:wallClock:)`` once at the end of this reactor turn
    /// (after every handler of the turn, before the links seal): the direct calls of the turn
    /// go out packed per executor, results and credit batched per caller.
    case flushCallsAtEndOfTurn
}

/// The node's logic as one plain value: every link's stages and the admission of inbound
/// handshakes (``linkAccepted(_:source:now:)`` and the inputs after it), the connection
/// manager, membership, the named queues, the caller and executor of remote calls, and the
/// one routing of peer events (``PeerEventRouting``) between them.
///
/// No I/O, clock, lock or random source: every input carries `now` and returns the
/// ``NodeAction``s the shell performs in order; every random choice comes from the seed in
/// the configuration. A peer event is routed where it happens, in this machine, so the
/// membership verdicts and the manager's link changes reach the queues, the calls and each
/// other by one rule (``route(_:into:now:)``). The shell feeds inputs in the order the
/// reactor saw them, and when an action fails (a membership message that cannot be sent)
/// reports back through another input.
public struct NodeMachine<Address: NodeAddress>: Sendable {
    public typealias Action = NodeAction<Address>
    public typealias Connections = ConnectionMachine<PeerID, Address>

    public let localPeer: PeerID
    public let configuration: NodeMachineConfiguration
    /// Which links to keep, dial and ping.
    public internal(set) var connections: Connections
    /// Who is alive (SWIM).
    public internal(set) var membership: MembershipMachine
    /// The incarnation each kept link's hello announced (membership learns it with the link).
    private var incarnations: [LinkID: UInt64] = [:]
    /// The feature bits each kept link's hello announced (§5).
    var linkFeatures: [LinkID: UInt64] = [:]
    /// The named queues.
    public internal(set) var queues: [String: QueueMachine] = [:]
    /// Dead letters a full dead-letter queue refused, for the rate of the warning.
    var deadLetterRefusals = 0
    /// Remote calls: the caller and executor machines and what ties them to the call queue
    /// (inert until ``attachCalls(queue:caller:executor:now:)``).
    @usableFromInline var calls: NodeCalls
    /// Direct-call credit peers granted before calls were attached.
    @usableFromInline var earlyCredit = EarlyCredit()
    /// Every open link's stages, by link (``LinkTable``).
    @usableFromInline var linkTable = LinkTable()
    /// The address each open outbound link dialed (the manager hears it back with the link).
    var dials: [LinkID: Address] = [:]
    /// Which inbound connections may handshake.
    var admission: HandshakeAdmission<LinkID, String>
    /// What peers should dial (the hellos tell it), from ``start(advertising:bootstrap:now:)``.
    var advertised: Address?
    /// This node's operations endpoint, as told to peers whose hello has
    /// ``WireProtocol/featureOperationsAddress`` (``advertiseOperations(host:port:now:)``).
    public internal(set) var operationsAddress: (host: String, port: UInt16)?
    private var random: SplitMix64
    private var pingNonces: SplitMix64
    public private(set) var isStarted = false
    public private(set) var isStopped = false

    /// A machine for `configuration.localPeer`; it dials and probes nothing until
    /// ``start(advertising:bootstrap:now:)``.
    public init(configuration: NodeMachineConfiguration) {
        localPeer = configuration.localPeer
        self.configuration = configuration
        var random = SplitMix64(seed: configuration.seed)
        pingNonces = SplitMix64(seed: random.next())
        let membershipSeed = random.next()
        membership = MembershipMachine(localPeer: configuration.localPeer, incarnation: configuration.incarnation,
                                       configuration: configuration.membership,
                                       seed: configuration.membershipSeed ?? membershipSeed)
        connections = Connections(localPeerID: configuration.localPeer, advertisedAddress: nil,
                                  configuration: configuration.connection,
                                  randomNumberGenerator: SplitMix64(seed: random.next()))
        self.random = random
        calls = NodeCalls(localPeer: configuration.localPeer)
        admission = HandshakeAdmission(configuration: configuration.links.admission)
    }

    /// The link kept for `peer`, if any.
    public func link(to peer: PeerID) -> LinkID? { connections.link(to: peer) }

    // MARK: Inputs

    /// The node listens at `advertised` (what peers should dial) and dials `bootstrap`.
    public mutating func start(advertising advertised: Address?, bootstrap: [Address], now: UInt64) -> [Action] {
        guard !isStarted else { return [] }
        isStarted = true
        self.advertised = advertised
        connections = Connections(localPeerID: localPeer, advertisedAddress: advertised,
                                  configuration: configuration.connection,
                                  randomNumberGenerator: SplitMix64(seed: random.next()))
        var actions: [Action] = []
        apply(membership.start(now: now), into: &actions, now: now)
        apply(connections.start(bootstrap: bootstrap, now: now), into: &actions, now: now)
        return actions
    }

    /// A link passed its handshake and hellos: `incarnation` and `features` are from the
    /// peer's hello, `peerAddress` where the peer accepts links, `dialedAddress` the dial it
    /// answers. A link opened here (``linkOpened(_:dialing:now:)``, ``linkAccepted(_:source:now:)``)
    /// gets there through its stages; this input is for a driver that runs none (the
    /// simulator), whose links then get the manager's link actions as they are
    /// (``NodeAction/closeLink(_:reason:)``, ``NodeAction/sendPing(_:nonce:)``, ...).
    public mutating func linkUp(_ link: LinkID, peer: PeerID, direction: LinkDirection, incarnation: UInt64, features: UInt64,
                                peerAddress: Address?, dialedAddress: Address?, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        incarnations[link] = incarnation
        linkFeatures[link] = features
        var actions: [Action] = []
        apply(connections.linkUp(link: link, peer: peer, direction: direction, peerAddress: peerAddress,
                                 dialedAddress: dialedAddress, peerNeedsLinks: features & WireProtocol.featureNeedsLinks != 0,
                                 now: now), into: &actions, now: now)
        return actions
    }

    /// The hello features this node sends on a link it dials now, beyond its fixed ones:
    /// `featureNeedsLinks` while it is short of links.
    public var dialFeatures: UInt64 { connections.needsLinks ? WireProtocol.featureNeedsLinks : 0 }

    /// A link that was up closed; `peerLeft` when the peer said goodbye as leaving,
    /// `peerClosed` when it refused the link or closed it as a duplicate, with a goodbye
    /// (``LinkMachine/closesAlive(_:)``: alive, so no evidence). For links without stages
    /// here, like ``linkUp(_:peer:direction:incarnation:features:peerAddress:dialedAddress:now:)``.
    /// `asDuplicate`: the peer closed it as a duplicate of a link it keeps (which comes up
    /// here too, if it has not already).
    public mutating func linkDown(_ link: LinkID, peerLeft: Bool, peerClosed: Bool = false, asDuplicate: Bool = false,
                                  now: UInt64) -> [Action] {
        incarnations[link] = nil
        linkFeatures[link] = nil
        guard !isStopped else { return [] }
        var actions: [Action] = []
        apply(connections.linkDown(link: link, now: now, peerLeft: peerLeft, peerClosed: peerClosed), into: &actions, now: now,
              closedAsDuplicate: asDuplicate)
        return actions
    }

    /// A dial of `address` failed (connect, handshake or hello).
    public mutating func dialFailed(_ address: Address, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        apply(connections.dialFailed(address: address, now: now), into: &actions, now: now)
        return actions
    }

    /// Something arrived on `link` (every message: O(1), no actions).
    public mutating func heard(_ link: LinkID, now: UInt64) {
        connections.heard(link: link, now: now)
    }

    /// A peer list arrived on `link`.
    public mutating func peerListReceived(_ entries: [PeerListEntry<PeerID, Address>], on link: LinkID, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        apply(connections.peerListReceived(from: link, entries: entries, now: now), into: &actions, now: now)
        return actions
    }

    /// Discovery found `peer` at `address`.
    public mutating func discovered(_ peer: PeerID, at address: Address, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        apply(connections.discovered(peer: peer, address: address, now: now), into: &actions, now: now)
        return actions
    }

    /// A membership message arrived from `peer`.
    public mutating func received(_ message: MembershipMessage, from peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        apply(membership.received(message, from: peer, now: now), into: &actions, now: now)
        return actions
    }

    /// A membership message to `peer` could not be sent (no ready link).
    public mutating func undeliverable(_ message: MembershipMessage, to peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        apply(membership.undeliverable(message, to: peer, now: now), into: &actions, now: now)
        return actions
    }

    /// `timer` fired.
    public mutating func tick(_ timer: NodeTimer, now: UInt64) -> [Action] {
        var actions: [Action] = []
        switch timer {
        case .connections: apply(connections.tick(now: now), into: &actions, now: now)
        case .membership: apply(membership.tick(now: now), into: &actions, now: now)
        case .queue(let name): withQueue(name, into: &actions, now: now) { $0.tick(now: now) }
        case .calls: callerTicked(into: &actions, now: now)
        case .link(let link): withStages(of: link, into: &actions, now: now) { $0.tick(now: now) }
        case .admission: admissionTicked(into: &actions, now: now)
        }
        return actions
    }

    /// The node stops: membership announces the leave (ahead of the goodbyes, so peers record
    /// left, not dead), then the manager closes every link. Both timers end.
    public mutating func stop(now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        apply(membership.leave(now: now), into: &actions, now: now)
        actions.append(.cancelTimer(.membership))
        apply(connections.stop(now: now), into: &actions, now: now)
        isStopped = true
        actions.append(.cancelTimer(.connections))
        actions.append(.cancelTimer(.admission))
        // Links the manager does not hold (not ready yet) end as their stage says.
        for link in linkTable.ids where linkTable.stage(of: link) != .ready {
            withStages(of: link, into: &actions, now: now) { $0.nodeStopping() }
        }
        return actions
    }

    /// Routes `event` as if it had happened (tests that stage a verdict without membership).
    public mutating func routeForTesting(_ event: PeerEvent, now: UInt64) -> [Action] {
        var actions: [Action] = []
        route(event, into: &actions, now: now)
        return actions
    }

    // MARK: Routing

    /// Hands `event` to every part that hears it, in the order ``PeerEventRouting`` gives:
    /// membership, the manager, the queues and the calls, all parts of this machine.
    mutating func route(_ event: PeerEvent, into actions: inout [Action], now: UInt64) {
        for delivery in PeerEventRouting.route(event) {
            switch delivery {
            case .membership(.linkUp(let peer, let incarnation)):
                apply(membership.linkUp(peer, incarnation: incarnation, now: now), into: &actions, now: now)
            case .membership(.linkDown(let peer, let probe)):
                apply(membership.linkDown(peer, probe: probe, now: now), into: &actions, now: now)
            case .queues(let input):
                queuesHeard(input, into: &actions, now: now)
            case .calls(let input):
                callsHeard(input, into: &actions, now: now)
            case .manager(.joined(let peer)):
                apply(connections.peerJoined(peer, now: now), into: &actions, now: now)
            case .manager(.gone(let peer)):
                apply(connections.peerGone(peer, now: now), into: &actions, now: now)
            }
        }
    }

    /// The manager's actions, as the node's: its link changes become peer events.
    mutating func apply(_ managerActions: [Connections.Action], into actions: inout [Action], now: UInt64,
                        closedAsDuplicate: Bool = false) {
        for action in managerActions {
            switch action {
            case .dial(let address): actions.append(.dial(address))
            case .closeLink(let link, let reason):
                if linkTable.contains(link) {
                    withStages(of: link, into: &actions, now: now) { $0.close(reason) }
                } else {
                    actions.append(.closeLink(link, reason: reason))
                }
            case .sendPing(let link):
                let nonce = pingNonces.next()
                if linkTable.contains(link) {
                    withStages(of: link, into: &actions, now: now) { $0.ping(nonce: nonce, now: now) }
                } else {
                    actions.append(.sendPing(link, nonce: nonce))
                }
            case .sendPeerList(let link, let entries):
                if linkTable.contains(link) {
                    sendPeerList(entries, on: link, into: &actions)
                } else {
                    actions.append(.sendPeerList(link, entries))
                }
            case .armTimer(let at): actions.append(.armTimer(.connections, at: at))
            case .cancelTimer: actions.append(.cancelTimer(.connections))
            case .peerConnected(let peer, let link):
                actions.append(.peerConnected(peer, link))
                route(.linkUp(peer, incarnation: incarnations[link] ?? 0), into: &actions, now: now)
            case .peerLinkChanged(let peer, _, _):
                actions.append(.peerMovedLink(peer))
                route(.linkReplaced(peer), into: &actions, now: now)
            case .peerDisconnected(let peer, let reason):
                actions.append(.peerDisconnected(peer, reason: reason))
                route(.linkDown(peer, nodeStopping: reason == .stopped, peerClosed: reason == .peerClosed || reason == .evicted,
                                asDuplicate: closedAsDuplicate && reason == .peerClosed),
                      into: &actions, now: now)
            }
        }
    }

    /// Membership's actions, as the node's: its verdicts become peer events.
    mutating func apply(_ membershipActions: [MembershipAction], into actions: inout [Action], now: UInt64) {
        for action in membershipActions {
            switch action {
            case .send(let message, let peer):
                if let link = connections.link(to: peer) {
                    actions.append(.send(message, to: peer, on: link))
                } else {
                    apply(membership.undeliverable(message, to: peer, now: now), into: &actions, now: now)
                }
            case .armTimer(let at): actions.append(.armTimer(.membership, at: at))
            case .event(let event):
                actions.append(.member(event))
                switch event {
                case .joined(let peer): route(.joined(peer, linked: connections.link(to: peer) != nil), into: &actions, now: now)
                case .restarted(let peer): route(.restarted(peer, linked: connections.link(to: peer) != nil), into: &actions, now: now)
                case .dead(let peer): route(.dead(peer), into: &actions, now: now)
                case .left(let peer): route(.left(peer), into: &actions, now: now)
                case .refutedDeath: route(.refuted, into: &actions, now: now)
                case .suspect, .alive: break
                }
            }
        }
    }
}
