import P2PQConnectionManager
import P2PQMembership
import P2PQWire

/// An address a ``NodeMachine`` can tell in a hello or a peer list, and read back from one.
public protocol NodeAddress: Hashable, Sendable {
    /// The address at `host`:`port`, as a hello or a peer list tells it; nil when it is none.
    init?(linkHost host: String, port: UInt16)
    /// Host and port as a hello or a peer list tells them; nil when this address cannot be
    /// told (no port).
    var linkHostAndPort: (host: String, port: UInt16)? { get }
}

/// Plain `host:port` strings (the simulator's and the tests' addresses).
extension String: NodeAddress {
    public init?(linkHost host: String, port: UInt16) {
        guard port != 0 else { return nil }
        self = "\(host):\(port)"
    }

    public var linkHostAndPort: (host: String, port: UInt16)? {
        guard let colon = lastIndex(of: ":"), let port = UInt16(self[index(after: colon)...]), port != 0 else { return nil }
        return (String(self[..<colon]), port)
    }
}

/// How loud a line for the log is.
public enum NodeLogLevel: Sendable, Hashable {
    case debug, info, notice, warning
}

/// How a ``NodeMachine`` sets up each link's stages (``LinkMachine``) and the admission of
/// inbound handshakes.
public struct LinkStagesConfiguration: Sendable {
    /// ns from opening a link by which both hellos must be through.
    public var handshakeTimeout: UInt64
    /// The handshake timeout as close reasons tell it.
    public var handshakeTimeoutDescription: String
    /// The connection manager's keepalive timeout as close reasons tell it.
    public var keepaliveTimeoutDescription: String
    /// The admission's first-message timeout as close reasons tell it.
    public var firstMessageTimeoutDescription: String
    /// The hello's fixed feature bits (a dialed link adds ``NodeMachine/dialFeatures``).
    public var helloFeatures: UInt64
    /// The feature bits the hello may carry at all (tests clear some).
    public var helloFeatureMask: UInt64
    /// Which inbound connections may handshake.
    public var admission: HandshakeAdmissionConfiguration

    public init(handshakeTimeout: UInt64 = 10_000_000_000, handshakeTimeoutDescription: String = "10 s",
                keepaliveTimeoutDescription: String = "", firstMessageTimeoutDescription: String = "1 s",
                helloFeatures: UInt64 = 0, helloFeatureMask: UInt64 = .max,
                admission: HandshakeAdmissionConfiguration = HandshakeAdmissionConfiguration()) {
        self.handshakeTimeout = handshakeTimeout
        self.handshakeTimeoutDescription = handshakeTimeoutDescription
        self.keepaliveTimeoutDescription = keepaliveTimeoutDescription
        self.firstMessageTimeoutDescription = firstMessageTimeoutDescription
        self.helloFeatures = helloFeatures
        self.helloFeatureMask = helloFeatureMask
        self.admission = admission
    }
}

/// Where a ``NodeMachine`` keeps a link's stages: the shell hands it back with every message
/// of the link, so that the message's input indexes an array instead of hashing a key.
public struct LinkHandle: Hashable, Sendable {
    public let id: LinkID
    @usableFromInline let slot: Int
}

/// What ``NodeMachine/received(_:_:on:now:)`` answers.
public enum NodeReceipt<Address: Hashable & Sendable>: Sendable {
    /// A message of a layer the shell serves (queues, calls, the application) from `peer`,
    /// on a ready link: hand the body on. (No array here: this is most messages' path.)
    case deliver(PeerID)
    /// Handled here (a link message, a membership message, one before the link is ready).
    case handled([NodeAction<Address>])
}

/// Every open link's stages, by link: entries in slots of an array (a message's input
/// indexes it, and mutates the stages in place), and an index by ``LinkID`` for the rarer
/// inputs. Not generic (the dials links answer are kept beside it), so the message path is
/// concrete code even where the node machine runs unspecialized.
@usableFromInline
struct LinkTable: Sendable {
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline let id: LinkID
        let direction: LinkDirection
        /// The host the connection is with (an inbound link's source, from its accept).
        var remoteHost: String
        @usableFromInline var stages: LinkMachine

        mutating func update<R>(_ body: (inout LinkMachine) -> R) -> R { body(&stages) }
    }

    @usableFromInline private(set) var slots: [Entry?] = []
    private var free: [Int] = []
    private var index: [LinkID: Int] = [:]

    func contains(_ link: LinkID) -> Bool { index[link] != nil }

    /// The open links in order (deterministic, unlike the index's).
    var ids: [LinkID] { index.keys.sorted() }

    mutating func insert(_ entry: Entry) -> LinkHandle {
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            slots[slot] = entry
        } else {
            slot = slots.count
            slots.append(entry)
        }
        index[entry.id] = slot
        return LinkHandle(id: entry.id, slot: slot)
    }

    mutating func remove(_ link: LinkID) -> Entry? {
        guard let slot = index.removeValue(forKey: link) else { return nil }
        let entry = slots[slot]
        slots[slot] = nil
        free.append(slot)
        return entry
    }

    func handle(of link: LinkID) -> LinkHandle? { index[link].map { LinkHandle(id: link, slot: $0) } }

    func entry(_ link: LinkID) -> Entry? { index[link].flatMap { slots[$0] } }

    func entry(_ handle: LinkHandle) -> Entry? {
        guard handle.slot < slots.count, let entry = slots[handle.slot], entry.id == handle.id else { return nil }
        return entry
    }

    func stage(of link: LinkID) -> LinkMachine.Stage? { index[link].flatMap { slots[$0]?.stages.stage } }

    /// Whether `handle` still names its link (a slot is reused once its link closed).
    @inlinable
    func isCurrent(_ handle: LinkHandle) -> Bool {
        handle.slot < slots.count && slots[handle.slot]?.id == handle.id
    }

    @inlinable
    func stage(of handle: LinkHandle) -> LinkMachine.Stage? {
        isCurrent(handle) ? slots[handle.slot]?.stages.stage : nil
    }

    @inlinable
    func canSend(on handle: LinkHandle) -> Bool {
        isCurrent(handle) && slots[handle.slot]?.stages.canSend == true
    }

    func peer(on handle: LinkHandle) -> PeerID? {
        isCurrent(handle) ? slots[handle.slot]?.stages.handshakePeerID : nil
    }

    /// Runs `body` on `link`'s stages, in place.
    mutating func update<R>(_ link: LinkID, _ body: (inout LinkMachine) -> R) -> R? {
        guard let slot = index[link] else { return nil }
        return slots[slot]?.update(body)
    }

    /// A message for `handle`'s link, handled by its stages in place (no copy of them).
    mutating func received(_ type: MessageType, _ body: UnsafeRawBufferPointer, on handle: LinkHandle, now: UInt64) -> LinkReceipt? {
        guard isCurrent(handle) else { return nil }
        return slots[handle.slot]?.stages.received(type, body, now: now)
    }
}

/// Every link's stages, as parts of the node: each link opened (dialed, or accepted when
/// the admission of inbound handshakes lets it) gets a ``LinkMachine``; its hello goes out with
/// this node's features and address, the peer's hello brings the link up in the manager, its
/// goodbye or close takes it down. The manager's keepalive pings, peer lists and closes of a
/// link go through its stages.
extension NodeMachine {
    // MARK: Inputs

    /// The shell accepted an inbound connection from `source` (a host) and names it `link`.
    /// The admission decides: ``NodeAction/admitLink(_:)`` starts its handshake (after closing
    /// a stalled one it evicts, if any); without that action, close it without a word.
    public mutating func linkAccepted(_ link: LinkID, source: String, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        if case .admit(let evicting) = admission.admit(link, source: source, now: now) {
            if let evicting {
                withStages(of: evicting, into: &actions, now: now) { $0.drop("stalled handshake closed for a newer connection") }
            }
            actions.append(.admitLink(link))
            open(link, direction: .inbound, dialed: nil, remoteHost: source, into: &actions, now: now)
        }
        rearmAdmission(into: &actions)
        return actions
    }

    /// The shell dials `address` (the manager's ``NodeAction/dial(_:)``) on a connection it
    /// names `link`: the handshake and the hellos have until the handshake timeout.
    public mutating func linkOpened(_ link: LinkID, dialing address: Address, now: UInt64) -> [Action] {
        var actions: [Action] = []
        open(link, direction: .outbound, dialed: address, remoteHost: "", into: &actions, now: now)
        return actions
    }

    /// An inbound link's first handshake message arrived whole: it is no longer stalled.
    public mutating func handshakeProgressed(_ link: LinkID, now: UInt64) -> [Action] {
        admission.progressed(link)
        var actions: [Action] = []
        rearmAdmission(into: &actions)
        return actions
    }

    /// `link`'s Noise handshake authenticated `peer` and settled `version`; `remoteHost` is
    /// the host the connection is with. Our hello goes out.
    public mutating func linkEstablished(_ link: LinkID, peer: PeerID, version: UInt16, remoteHost: String,
                                         now: UInt64) -> [Action] {
        var actions: [Action] = []
        withStages(of: link, into: &actions, now: now) {
            $0.established(peer: peer, version: version, remoteHost: remoteHost, now: now)
        }
        return actions
    }

    /// A message arrived on a link: its stages take link messages (and everything before the
    /// hellos are through), membership messages are handled here, the rest goes back to the
    /// shell to hand on. The body is only read here, never kept. One array index, no copy of
    /// the stages, no allocation for a message handed on: this is every message's path.
    public mutating func received(_ type: MessageType, _ body: UnsafeRawBufferPointer, on link: LinkHandle,
                                  now: UInt64) -> NodeReceipt<Address> {
        switch linkTable.received(type, body, on: link, now: now) {
        case nil:
            return .handled([])
        case .handled(let linkActions)?:
            var actions: [Action] = []
            perform(linkActions, on: link.id, into: &actions, now: now)
            return .handled(actions)
        case .deliver?:
            guard let peer = linkTable.peer(on: link) else { return .handled([]) }
            connections.heard(link: link.id, now: now)
            guard MessageType.membershipRange.contains(type.rawValue) else { return .deliver(peer) }
            var actions: [Action] = []
            do {
                let message = try MembershipMessage.decode(type: type, body: body)
                apply(membership.received(message, from: peer, now: now), into: &actions, now: now)
            } catch {
                withStages(of: link.id, into: &actions, now: now) { $0.fail("bad \(type) message: \(error)") }
            }
            return .handled(actions)
        }
    }

    /// `link` must close because of `reason`, an error the shell or a layer it serves found (a
    /// message it could not decode, a seal that failed).
    public mutating func linkFailed(_ link: LinkID, reason: String, now: UInt64) -> [Action] {
        var actions: [Action] = []
        withStages(of: link, into: &actions, now: now) { $0.fail(reason) }
        return actions
    }

    /// `link`'s connection closed: `end` and its `description` as the socket layer tells them.
    /// A ready link goes down in the manager; a dial that never got ready failed.
    public mutating func linkClosed(_ link: LinkID, end: LinkMachine.ConnectionEnd, description: String,
                                    now: UInt64) -> [Action] {
        guard var entry = linkTable.remove(link) else { return [] }
        let dialed = dials.removeValue(forKey: link)
        let ended = entry.stages.closed(end, description: description, outbound: entry.direction == .outbound)
        var actions: [Action] = [.cancelTimer(.link(link))]
        if ended.beforeHandshake { actions.append(.linkNote(link, .debug, "ended before the handshake: \(ended.reason)")) }
        if entry.direction == .inbound && ended.previous != .ready { admission.finished(link) }
        guard !isStopped else { return actions }
        if ended.previous == .ready {
            actions += linkDown(link, peerLeft: entry.stages.peerLeft, peerClosed: entry.stages.peerClosed,
                                asDuplicate: entry.stages.peerClosedAsDuplicate, now: now)
        } else if entry.direction == .outbound, let address = dialed {
            actions.append(.dialFailedNote(address, reason: ended.reason))
            actions += dialFailed(address, now: now)
        }
        return actions
    }

    /// This node's operations endpoint listens at `host`:`port`: told to every ready link's
    /// peer whose hello says it understands, and to those that come.
    public mutating func advertiseOperations(host: String, port: UInt16, now: UInt64) -> [Action] {
        operationsAddress = (host, port)
        var actions: [Action] = []
        for link in linkTable.ids {
            guard let entry = linkTable.entry(link), entry.stages.stage == .ready,
                  let remote = entry.stages.remote else { continue }
            sendOperationsAddress(on: link, features: remote.features, into: &actions)
        }
        return actions
    }

    // MARK: Queries

    /// Where `link`'s stages are kept, while it is open.
    public func handle(of link: LinkID) -> LinkHandle? { linkTable.handle(of: link) }

    /// The stage of the link `handle` names; nil once it closed. Mutating (it changes
    /// nothing), like ``canSend(on:)``: the shell asks for every message it sends and reads,
    /// and a read of the machine through the shell's class property copies the whole value.
    @inlinable
    public mutating func stage(of link: LinkHandle) -> LinkMachine.Stage? { linkTable.stage(of: link) }

    /// Whether messages may be sent on the link `handle` names (``LinkMachine/canSend``).
    @inlinable
    public mutating func canSend(on link: LinkHandle) -> Bool { linkTable.canSend(on: link) }

    /// The stages of the link `handle` names (a copy, for queries); nil once it closed.
    public func stages(of link: LinkHandle) -> LinkMachine? { linkTable.entry(link)?.stages }

    /// Inbound handshakes refused, evicted and timed out since the start.
    public var handshakeTotals: HandshakeAdmissionReport { admission.totals }

    // MARK: Stages

    private mutating func open(_ link: LinkID, direction: LinkDirection, dialed: Address?, remoteHost: String,
                               into actions: inout [Action], now: UInt64) {
        let settings = configuration.links
        let features = (settings.helloFeatures | (direction == .outbound ? dialFeatures : 0)) & settings.helloFeatureMask
        let listen = advertised?.linkHostAndPort
        let hello = LinkMachine.LocalHello(peerID: localPeer, listenHost: listen?.host ?? "", listenPort: listen?.port ?? 0,
                                           incarnation: configuration.incarnation, features: features)
        var stages = LinkMachine(local: hello, handshakeTimeout: settings.handshakeTimeout,
                                 timeoutDescription: settings.handshakeTimeoutDescription,
                                 keepaliveTimeoutDescription: settings.keepaliveTimeoutDescription)
        let linkActions = stages.opened(now: now)
        _ = linkTable.insert(.init(id: link, direction: direction, remoteHost: remoteHost, stages: stages))
        dials[link] = dialed
        perform(linkActions, on: link, into: &actions, now: now)
    }

    /// Runs `body` on `link`'s stages and performs what they answer.
    mutating func withStages(of link: LinkID, into actions: inout [Action], now: UInt64,
                             _ body: (inout LinkMachine) -> [LinkAction]) {
        guard let linkActions = linkTable.update(link, body) else { return }
        perform(linkActions, on: link, into: &actions, now: now)
    }

    /// The stages' actions, as the node's.
    private mutating func perform(_ linkActions: [LinkAction], on link: LinkID, into actions: inout [Action], now: UInt64) {
        for action in linkActions {
            switch action {
            case .send(let message): actions.append(.sendLinkMessage(link, message))
            case .armTimer(let at): actions.append(.armTimer(.link(link), at: at))
            case .cancelTimer: actions.append(.cancelTimer(.link(link)))
            case .heard: connections.heard(link: link, now: now)
            case .note(let text): actions.append(.linkNote(link, .debug, text))
            case .peersReceived(let entries):
                guard !isStopped else { continue }
                let list = entries.compactMap { entry in
                    Address(linkHost: entry.host, port: entry.port).map { PeerListEntry(peer: entry.peerID, address: $0) }
                }
                apply(connections.peerListReceived(from: link, entries: list, now: now), into: &actions, now: now)
            case .up(let hello): ready(link, hello, into: &actions, now: now)
            case .close(let closing): close(link, closing, into: &actions, now: now)
            }
        }
    }

    /// The peer's hello checked out: the link is ready, and the manager hears of it.
    private mutating func ready(_ link: LinkID, _ hello: LinkMachine.RemoteHello, into actions: inout [Action], now: UInt64) {
        guard let entry = linkTable.entry(link) else { return }
        if entry.direction == .inbound { admission.finished(link) }
        actions.append(.linkReady(link))
        sendOperationsAddress(on: link, features: hello.features, into: &actions)
        let peerAddress = hello.listenPort == 0 ? nil : Address(linkHost: hello.listenHost, port: hello.listenPort)
        actions += linkUp(link, peer: hello.peerID, direction: entry.direction, incarnation: hello.incarnation,
                          features: hello.features, peerAddress: peerAddress, dialedAddress: dials[link], now: now)
    }

    /// Closes `link` as its stages decided, with the reason they keep. A failed inbound
    /// handshake counts in the admission, which says whether it gets a line of its own.
    private mutating func close(_ link: LinkID, _ closing: LinkMachine.Closing, into actions: inout [Action], now: UInt64) {
        guard let entry = linkTable.entry(link) else { return }
        let level: NodeLogLevel?
        switch closing {
        case .failed(let duringHandshake):
            if duringHandshake && entry.direction == .inbound {
                level = admission.failed(link, source: entry.remoteHost, now: now) ? .notice : .debug
                rearmAdmission(into: &actions)
            } else {
                level = .notice
            }
        case .dropped: level = .debug
        case .afterGoodbye, .afterFlush, .peerSaidGoodbye: level = nil
        }
        actions.append(.closeConnection(link, how: closing, reason: entry.stages.closeReason ?? "", level: level))
    }

    /// The manager's peer list for `link`, as a link message (addresses without a port stay out).
    mutating func sendPeerList(_ entries: [PeerListEntry<PeerID, Address>], on link: LinkID, into actions: inout [Action]) {
        let peers = entries.compactMap { entry -> PeerAddress? in
            guard let (host, port) = entry.address.linkHostAndPort else { return nil }
            return PeerAddress(peerID: entry.peer, host: host, port: port)
        }
        if !peers.isEmpty { actions.append(.sendLinkMessage(link, .peers(peers))) }  // at most the manager's cap
    }

    private func sendOperationsAddress(on link: LinkID, features: UInt64, into actions: inout [Action]) {
        guard let (host, port) = operationsAddress, features & WireProtocol.featureOperationsAddress != 0 else { return }
        actions.append(.sendLinkMessage(link, .operations(host: host, port: port)))
    }

    mutating func admissionTicked(into actions: inout [Action], now: UInt64) {
        let reason = "no first handshake message within \(configuration.links.firstMessageTimeoutDescription)"
        for link in admission.expire(now: now) {
            withStages(of: link, into: &actions, now: now) { $0.drop(reason) }
        }
        if let report = admission.takeReport(now: now) { actions.append(.admissionReport(report)) }
        rearmAdmission(into: &actions)
    }

    private func rearmAdmission(into actions: inout [Action]) {
        if let deadline = admission.nextDeadline, !isStopped {
            actions.append(.armTimer(.admission, at: deadline))
        } else {
            actions.append(.cancelTimer(.admission))
        }
    }
}
