/// The peer-link policy of a node, as a plain value: which addresses to dial, which links to
/// keep, when to ping, redial or give up.
///
/// No I/O, clocks or threads: every input is a method call carrying `now` (monotonic
/// nanoseconds) and returns the ``ConnectionAction``s the node shell performs, in order.
///
/// ## Inputs
/// - ``start(bootstrap:now:)`` once, ``stop(now:)`` at the end.
/// - Every `.dial(address)` is answered by exactly one of ``dialFailed(address:now:)`` (TCP,
///   handshake or hello failed) or ``linkUp(link:peer:direction:peerAddress:dialedAddress:now:)``
///   with `direction: .outbound, dialedAddress: address`. The dialed address rides on `linkUp`
///   so no separate "dial succeeded" input (and no half-open state) is needed.
/// - Inbound links: `linkUp(direction: .inbound)` after handshake and hello.
/// - ``linkDown(link:now:peerLeft:peerClosed:)`` when any link closes, including ones the manager closed.
/// - ``heard(link:now:)`` for every received message (O(1), emits nothing).
/// - ``peerListReceived(from:entries:now:)`` for a peer list message.
/// - ``discovered(peer:address:now:)`` for a peer found on the local network (mDNS).
/// - ``peerGone(_:now:)`` when membership declares a peer dead or left, ``peerJoined(_:now:)``
///   when it reports a member (re)joined.
/// - ``tick(now:)`` when the timer armed by `.armTimer(at:)` fires.
///
/// ## One link per pair
/// When a second link to a linked peer comes up, both nodes keep the link whose initiator (its
/// outbound side) has the smaller `PeerID` and close the other as `.duplicate`, so they agree
/// without talking. If both links have the same initiator (it dialed two addresses of one
/// peer), the newer link wins: a peer that restarted and redialed must replace its dead link.
/// Upper layers never hear about a losing link; if the loser was announced first (it came up
/// first), they hear `.peerLinkChanged` instead of a disconnect.
public struct ConnectionMachine<PeerID: Hashable & Comparable & Sendable, Address: Hashable & Sendable>: Sendable {
    public typealias Action = ConnectionAction<PeerID, Address>
    public typealias Record = PeerRecord<PeerID, Address>
    public typealias Entry = PeerListEntry<PeerID, Address>

    /// This node.
    public let localPeerID: PeerID
    /// The address peers should dial to reach this node (never dialed by it), if it accepts links.
    public let advertisedAddress: Address?
    public let configuration: ConnectionConfiguration
    /// True after ``stop(now:)``; every input then returns no actions.
    public private(set) var isStopped = false

    private var random: any RandomNumberGenerator & Sendable
    private var links: [LinkID: Link] = [:]
    private var linkByPeer: [PeerID: LinkID] = [:]
    /// Every address the node knows, capped at `maxKnownAddresses` (bootstrap addresses excepted).
    private var addresses: [Address: AddressEntry] = [:]
    /// The one address to (re)dial for each peer; always a key of `addresses` whose entry names the peer.
    private var dialAddress: [PeerID: Address] = [:]
    private var dialsInFlight = 0
    /// Number of entries in `.backoff`, so the deadline scan can skip the table when there are none.
    private var backoffCount = 0
    /// What the shell's timer is armed for, as far as the manager knows.
    private var armedDeadline: UInt64?
    private var nextOrder: UInt64 = 0

    private struct Link: Sendable {
        var peer: PeerID
        var direction: LinkDirection
        /// What the peer advertised in its hello; the only address shared in peer lists, since
        /// the peer is the authority on how to reach it.
        var peerAddress: Address?
        var lastHeard: UInt64
        /// When the last ping went out; a ping counts for the current silence only if it is not
        /// older than `lastHeard`.
        var pingedAt: UInt64?
        /// Membership declared the peer dead or left while this link was up: when it closes,
        /// the peer is forgotten instead of redialed (see ``peerGone(_:now:)``).
        var peerGone = false
    }

    private enum DialState: Equatable, Sendable {
        case idle
        case dialing
        case backoff(until: UInt64)
        case failed
        /// Leads to this node: never dialed.
        case own

        var isPending: Bool {
            switch self {
            case .dialing, .backoff: true
            case .idle, .failed, .own: false
            }
        }
    }

    private struct AddressEntry: Sendable {
        var state = DialState.idle
        /// Who is (or was last seen, or is said to be) at this address.
        var peer: PeerID?
        /// Consecutive failed dials; reset when the peer is reached.
        var attempts = 0
        var isBootstrap = false
        /// The peer itself vouched for the address (its hello, or a dial to it reached the peer),
        /// as opposed to hearsay from a peer list.
        var confirmed = false
        var lastSeen: UInt64 = 0
        /// Last state change, for eviction.
        var lastChange: UInt64
        /// Insertion order, for deterministic iteration and eviction ties.
        let order: UInt64
        /// The peer was declared gone while a dial here was in flight: forget the address if
        /// that dial fails, instead of backing off.
        var abandoned = false
    }

    /// A manager for node `localPeerID`.
    ///
    /// - Parameters:
    ///   - localPeerID: this node; a link that turns out to lead here is closed.
    ///   - advertisedAddress: where peers should dial this node (shared in peer lists).
    ///   - configuration: timings and limits.
    ///   - randomNumberGenerator: draws the backoff jitter (the manager's only randomness); a
    ///     seeded generator replays the same schedule.
    public init(
        localPeerID: PeerID,
        advertisedAddress: Address?,
        configuration: ConnectionConfiguration = ConnectionConfiguration(),
        randomNumberGenerator: any RandomNumberGenerator & Sendable
    ) {
        precondition(configuration.maxPeers > 0, "maxPeers must be positive")
        precondition(configuration.maxKnownAddresses > 0, "maxKnownAddresses must be positive")
        precondition(configuration.keepaliveInterval > 0, "keepaliveInterval must be positive")
        precondition(configuration.baseBackoff <= configuration.maxBackoff, "baseBackoff exceeds maxBackoff")
        self.localPeerID = localPeerID
        self.advertisedAddress = advertisedAddress
        self.configuration = configuration
        self.random = randomNumberGenerator
    }

    // MARK: Queries

    /// The link currently kept for `peer`.
    public func link(to peer: PeerID) -> LinkID? { linkByPeer[peer] }

    /// The peers a link is kept for, in order.
    public var linkedPeers: [PeerID] { linkByPeer.keys.sorted() }

    /// The peer at the other end of a kept link.
    public func peer(on link: LinkID) -> PeerID? { links[link]?.peer }

    /// Number of linked peers.
    public var connectedPeerCount: Int { links.count }

    /// The peer table: connected peers (by `PeerID`), then addresses being dialed, backing off
    /// or given up (in the order they became known).
    public var peers: [Record] {
        var records = links.map { id, link in
            Record(
                peer: link.peer, address: link.peerAddress ?? dialAddress[link.peer], state: .connected,
                lastSeen: link.lastHeard, link: id, direction: link.direction
            )
        }
        records.sort { $0.peer! < $1.peer! }
        for (address, entry) in addresses.sorted(by: { $0.value.order < $1.value.order }) {
            let state: Record.State
            switch entry.state {
            case .dialing: state = .connecting
            case .backoff(let until): state = .backoff(until: until)
            case .failed: state = .failed
            case .idle, .own: continue
            }
            // A connected peer already has its row; a dial still in flight to it is noise.
            if let peer = entry.peer, linkByPeer[peer] != nil { continue }
            records.append(Record(peer: entry.peer, address: address, state: state, lastSeen: entry.lastSeen))
        }
        return records
    }

    // MARK: Inputs

    /// Dials each bootstrap address (once, however often it is listed). Bootstrap addresses are
    /// retried forever and survive address-table eviction.
    public mutating func start(bootstrap: [Address], now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        var seen = Set<Address>()
        for address in bootstrap where address != advertisedAddress && seen.insert(address).inserted {
            _ = ensureEntry(address, now: now, force: true)
            addresses[address]!.isBootstrap = true
            // A bootstrap address outranks any other address of its peer (it is retried forever).
            if let peer = addresses[address]!.peer { dialAddress[peer] = address }
            guard shouldDial(address) else { continue }
            if hasDialCapacity {
                dial(address, now: now, into: &actions)
            } else {
                scheduleRedial(address, delay: configuration.maxBackoff, now: now)
            }
        }
        rearm(&actions)
        return actions
    }

    /// Whether this node is short of links (fewer than `minPeers`, at most half of `maxPeers`):
    /// its dials ask a full peer to make room (the hello's `featureNeedsLinks`). The half
    /// matters: the peer that loses a link for it keeps `maxPeers` − 1, so it never becomes
    /// short in turn and evicts another (a cascade).
    public var needsLinks: Bool { links.count < Swift.min(configuration.minPeers, configuration.maxPeers / 2) }

    /// A link finished its handshake and hello. A full node refuses it, with a peer list, unless
    /// the peer dialed it short of links: then it closes one of its other links (chosen at
    /// random, HyParView's rule for a join) to keep this one.
    ///
    /// - Parameters:
    ///   - link: the shell's identifier of the connection.
    ///   - peer: the authenticated PeerID at the other end.
    ///   - direction: whether this node dialed (outbound) or accepted (inbound).
    ///   - peerAddress: the address the peer advertises for dialing it, if any; shared with
    ///     other peers and used to redial it.
    ///   - dialedAddress: for an outbound link, the address of the `.dial` it answers.
    ///   - peerNeedsLinks: the peer's hello says it is short of links (``needsLinks``).
    ///   - now: the current time (monotonic nanoseconds).
    public mutating func linkUp(
        link: LinkID, peer: PeerID, direction: LinkDirection, peerAddress: Address?,
        dialedAddress: Address? = nil, peerNeedsLinks: Bool = false, now: UInt64
    ) -> [Action] {
        guard !isStopped else { return [] }
        guard links[link] == nil else {
            assertionFailure("linkUp twice for \(link)")
            return []
        }
        var actions: [Action] = []
        let dialed = direction == .outbound ? dialedAddress : nil
        if let dialed, addresses[dialed]?.state == .dialing {
            setState(dialed, .idle, now: now)
            addresses[dialed]!.abandoned = false
        }

        if peer == localPeerID {
            if let dialed { markOwn(dialed, now: now) }
            actions.append(.closeLink(link, reason: .selfConnection))
            rearm(&actions)
            return actions
        }

        // What the link taught about addresses holds even if the link itself is refused.
        if let dialed {
            learn(dialed, for: peer, firsthand: true, now: now)
            addresses[dialed]?.attempts = 0
        }
        if let peerAddress { learn(peerAddress, for: peer, firsthand: true, now: now) }

        let fresh = Link(peer: peer, direction: direction, peerAddress: peerAddress, lastHeard: now)
        if let existingID = linkByPeer[peer], let existing = links[existingID] {
            guard keepsNewLink(existing: existing.direction, new: direction, peer: peer) else {
                actions.append(.closeLink(link, reason: .duplicate))
                rearm(&actions)
                return actions
            }
            links[existingID] = nil
            links[link] = fresh
            linkByPeer[peer] = link
            actions.append(.closeLink(existingID, reason: .duplicate))
            actions.append(.peerLinkChanged(peer, from: existingID, to: link))
            // The list sent on the old link may die with it.
            appendPeerList(to: link, recipient: peer, into: &actions)
        } else {
            if links.count >= configuration.maxPeers, peerNeedsLinks, direction == .inbound, !links.isEmpty {
                // A newcomer's way in: one random link makes room (its peer keeps the others).
                let victims = links.keys.sorted()
                let victim = victims[Int.random(in: 0..<victims.count, using: &random)]
                if let gone = links.removeValue(forKey: victim) {
                    linkByPeer[gone.peer] = nil
                    actions.append(.closeLink(victim, reason: .tooManyPeers))
                    actions.append(.peerDisconnected(gone.peer, reason: .evicted))
                    // Not redialed (it is full here); it may dial back once it is short of links.
                    planRedial(of: gone.peer, lastSeen: gone.lastHeard, peerLeft: true, now: now)
                }
            }
            guard links.count < configuration.maxPeers else {
                // The refused peer learns where else to link (ahead of the goodbye, on the same
                // link), or a node whose only address is a full one never joins the mesh.
                appendPeerList(to: link, recipient: peer, into: &actions)
                actions.append(.closeLink(link, reason: .tooManyPeers))
                rearm(&actions)
                return actions
            }
            links[link] = fresh
            linkByPeer[peer] = link
            actions.append(.peerConnected(peer, link))
            appendPeerList(to: link, recipient: peer, into: &actions)
            if let peerAddress {
                // Tell everyone else at once, so the mesh forms in one round trip.
                let news = [Entry(peer: peer, address: peerAddress)]
                for other in links.keys.sorted() where other != link {
                    actions.append(.sendPeerList(other, news))
                }
            }
        }
        markReached(peer, now: now)
        rearm(&actions)
        return actions
    }

    /// A dial failed (connect, handshake or hello). Schedules a redial after
    /// `min(maxBackoff, baseBackoff · 2^failures)` with jitter in [delay/2, delay], or gives the
    /// address up after `maxDialAttempts` consecutive failures (never a bootstrap address).
    public mutating func dialFailed(address: Address, now: UInt64) -> [Action] {
        guard !isStopped, let entry = addresses[address], entry.state == .dialing else { return [] }
        var actions: [Action] = []
        let attempts = entry.attempts + 1
        addresses[address]!.attempts = attempts
        if let peer = entry.peer, linkByPeer[peer] != nil {
            // The peer reached us some other way meanwhile.
            setState(address, .idle, now: now)
        } else if entry.abandoned {
            setState(address, .idle, now: now)
            removeAddress(address)
        } else if !entry.isBootstrap && attempts >= configuration.maxDialAttempts {
            setState(address, .failed, now: now)
        } else {
            scheduleRedial(address, delay: backoffDelay(failures: attempts), now: now)
        }
        rearm(&actions)
        return actions
    }

    /// A link closed, for any reason. `peerLeft` means the peer said goodbye: it is not
    /// redialed (unless reached through a bootstrap address, which is redialed at `maxBackoff`,
    /// since a seed that leaves is usually restarting). Links the manager closed or never kept
    /// are ignored.
    /// `peerClosed`: the peer said a goodbye that was not a leave (see ``PeerDisconnectReason/peerClosed``).
    public mutating func linkDown(link: LinkID, now: UInt64, peerLeft: Bool = false, peerClosed: Bool = false) -> [Action] {
        guard !isStopped, let gone = links.removeValue(forKey: link) else { return [] }
        linkByPeer[gone.peer] = nil
        let reason: PeerDisconnectReason = peerLeft ? .peerLeft : peerClosed ? .peerClosed : .linkLost
        var actions: [Action] = [.peerDisconnected(gone.peer, reason: reason)]
        if gone.peerGone { forget(gone.peer, now: now) }
        planRedial(of: gone.peer, lastSeen: gone.lastHeard, peerLeft: peerLeft || gone.peerGone, refused: peerClosed, now: now)
        rearm(&actions)
        return actions
    }

    /// A message arrived on the link. O(1); never emits anything: the timer is not moved
    /// later, a tick that finds nothing due re-arms it instead.
    public mutating func heard(link: LinkID, now: UInt64) {
        links[link]?.lastHeard = now
    }

    /// A peer list arrived. Dials each entry that is not this node, not linked, not already
    /// being dialed or waiting to be, not known to be ours, while dial capacity lasts. Lists
    /// from links the manager does not keep (a duplicate being closed) are ignored.
    public mutating func peerListReceived(from link: LinkID, entries: [Entry], now: UInt64) -> [Action] {
        guard !isStopped, links[link] != nil else { return [] }
        var actions: [Action] = []
        var seenPeers = Set<PeerID>()
        var seenAddresses = Set<Address>()
        for entry in entries {
            guard seenPeers.insert(entry.peer).inserted, seenAddresses.insert(entry.address).inserted else { continue }
            guard consider(entry, now: now, into: &actions) else { break }
        }
        rearm(&actions)
        return actions
    }

    /// A peer was discovered on the local network (an mDNS hint): dialed like a peer-list
    /// entry, under the same rules (not this node, not linked, not already being dialed, dial
    /// capacity permitting). The address counts as hearsay until the handshake confirms it.
    public mutating func discovered(peer: PeerID, address: Address, now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        var actions: [Action] = []
        _ = consider(Entry(peer: peer, address: address), now: now, into: &actions)
        rearm(&actions)
        return actions
    }

    /// Membership declared `peer` dead or left: stop redialing it. Its addresses are forgotten
    /// (a dial already in flight is let finish; if it fails, its address is forgotten too),
    /// except bootstrap addresses, which keep being retried as always. If the peer is still
    /// linked, the link is left alone (it may yet carry a refutation), but once it closes the
    /// peer is forgotten rather than redialed. Nothing else changes: a later peer list,
    /// discovery hint or inbound link from the peer is handled as for any stranger.
    public mutating func peerGone(_ peer: PeerID, now: UInt64) -> [Action] {
        guard !isStopped, peer != localPeerID else { return [] }
        if let id = linkByPeer[peer] {
            links[id]!.peerGone = true
            return []
        }
        var actions: [Action] = []
        forget(peer, now: now)
        rearm(&actions)
        return actions
    }

    /// Membership reports `peer` joined (new, restarted, or back after a verdict it refuted):
    /// undoes a ``peerGone(_:now:)`` whose link is still up, so losing that link is redialed
    /// as usual again. Addresses already forgotten are relearned from links and peer lists.
    public mutating func peerJoined(_ peer: PeerID, now: UInt64) -> [Action] {
        guard !isStopped, let id = linkByPeer[peer] else { return [] }
        links[id]!.peerGone = false
        return []
    }

    /// The timer fired (or the shell polls): pings silent links, closes dead ones, runs the
    /// redials that are due. Emits `.armTimer` for the next deadline.
    public mutating func tick(now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        // The shell's one-shot timer has fired if its deadline passed: make rearm re-emit it.
        if let armed = armedDeadline, armed <= now { armedDeadline = nil }
        var actions: [Action] = []
        // Only the links due now, in ID order: each link's ping brings a tick of its own, so
        // sorting every link on every tick would cost O(L² log L) per keepalive interval.
        var due: [LinkID] = []
        for (id, link) in links where now >= min(nextPing(link), saturatingAdd(link.lastHeard, configuration.keepaliveTimeout)) {
            due.append(id)
        }
        due.sort()
        for id in due {
            guard let link = links[id] else { continue }
            if now >= saturatingAdd(link.lastHeard, configuration.keepaliveTimeout) {
                links[id] = nil
                linkByPeer[link.peer] = nil
                actions.append(.closeLink(id, reason: .keepaliveTimeout))
                actions.append(.peerDisconnected(link.peer, reason: .keepaliveTimeout))
                if link.peerGone { forget(link.peer, now: now) }
                planRedial(of: link.peer, lastSeen: link.lastHeard, peerLeft: link.peerGone, now: now)
            } else if now >= nextPing(link) {
                links[id]!.pingedAt = now
                actions.append(.sendPing(id))
            }
        }
        if backoffCount > 0 {
            var due: [(address: Address, until: UInt64, order: UInt64)] = []
            for (address, entry) in addresses {
                if case .backoff(let until) = entry.state, until <= now {
                    due.append((address, until, entry.order))
                }
            }
            due.sort { ($0.until, $0.order) < ($1.until, $1.order) }
            for item in due {
                if let peer = addresses[item.address]!.peer, linkByPeer[peer] != nil {
                    setState(item.address, .idle, now: now)
                } else if hasDialCapacity {
                    dial(item.address, now: now, into: &actions)
                } else {
                    // At the peer limit: look again later, without counting an attempt.
                    scheduleRedial(item.address, delay: configuration.maxBackoff, now: now)
                }
            }
        }
        rearm(&actions)
        return actions
    }

    /// Closes every link as `.leaving` (announcing each peer as disconnected), forgets all
    /// pending dials and redials and disarms the timer. Afterwards every input returns no
    /// actions. The manager cannot cancel a dial the shell already started: the shell aborts
    /// its own in-progress connections.
    public mutating func stop(now: UInt64) -> [Action] {
        guard !isStopped else { return [] }
        isStopped = true
        var actions: [Action] = []
        for (id, link) in links.sorted(by: { $0.key < $1.key }) {
            actions.append(.closeLink(id, reason: .leaving))
            actions.append(.peerDisconnected(link.peer, reason: .stopped))
        }
        links = [:]
        linkByPeer = [:]
        addresses = [:]
        dialAddress = [:]
        dialsInFlight = 0
        backoffCount = 0
        if armedDeadline != nil {
            armedDeadline = nil
            actions.append(.cancelTimer)
        }
        return actions
    }

    /// Dials a hinted peer unless it is this node, linked, pending, or the address is known to
    /// be ours or a linked peer's. False when out of dial capacity (the caller stops offering).
    private mutating func consider(_ entry: Entry, now: UInt64, into actions: inout [Action]) -> Bool {
        guard entry.peer != localPeerID, entry.address != advertisedAddress, linkByPeer[entry.peer] == nil else {
            return true
        }
        if let current = dialAddress[entry.peer], addresses[current]?.state.isPending == true { return true }
        if let known = addresses[entry.address] {
            if known.state == .own || known.state.isPending { return true }
            // The address belongs to another peer we are linked to: stale news, and a dial
            // would only produce a duplicate.
            if let holder = known.peer, holder != entry.peer, linkByPeer[holder] != nil { return true }
        }
        guard hasDialCapacity else { return false }
        learn(entry.address, for: entry.peer, firsthand: false, now: now)
        // Dial the peer's best address, which may be one it confirmed itself earlier.
        let target = dialAddress[entry.peer] ?? entry.address
        // No entry means the table is full of addresses that must be kept: do not dial
        // what cannot be tracked.
        guard addresses[target] != nil, shouldDial(target) else { return true }
        dial(target, now: now, into: &actions)
        return true
    }

    // MARK: Links

    /// The duplicate rule (see the type's documentation); true to keep the new link.
    private func keepsNewLink(existing: LinkDirection, new: LinkDirection, peer: PeerID) -> Bool {
        let existingInitiator = existing == .outbound ? localPeerID : peer
        let newInitiator = new == .outbound ? localPeerID : peer
        if existingInitiator != newInitiator { return newInitiator < existingInitiator }
        return true
    }

    /// Sends `recipient` every other linked peer that advertises an address.
    private func appendPeerList(to link: LinkID, recipient: PeerID, into actions: inout [Action]) {
        var entries: [Entry] = []
        for other in links.values where other.peer != recipient {
            if let address = other.peerAddress { entries.append(Entry(peer: other.peer, address: address)) }
        }
        guard !entries.isEmpty, configuration.maxPeerListEntries > 0 else { return }
        entries.sort { $0.peer < $1.peer }
        if entries.count > configuration.maxPeerListEntries {
            entries.removeLast(entries.count - configuration.maxPeerListEntries)
        }
        actions.append(.sendPeerList(link, entries))
    }

    /// When the link is next due a ping: `keepaliveInterval` after it was last heard, or after
    /// the last ping if that was sent during the current silence.
    private func nextPing(_ link: Link) -> UInt64 {
        if let pinged = link.pingedAt, pinged >= link.lastHeard {
            return saturatingAdd(pinged, configuration.keepaliveInterval)
        }
        return saturatingAdd(link.lastHeard, configuration.keepaliveInterval)
    }

    // MARK: Addresses

    private var hasDialCapacity: Bool { links.count + dialsInFlight < configuration.maxPeers }

    /// Whether a dial to `address` is useful: not ours, nothing pending on it, its peer neither
    /// linked nor being dialed at another address.
    private func shouldDial(_ address: Address) -> Bool {
        guard address != advertisedAddress else { return false }
        guard let entry = addresses[address] else { return true }
        guard entry.state == .idle || entry.state == .failed else { return false }
        if let peer = entry.peer {
            if linkByPeer[peer] != nil { return false }
            if let other = dialAddress[peer], other != address, addresses[other]?.state.isPending == true {
                return false
            }
        }
        return true
    }

    private mutating func dial(_ address: Address, now: UInt64, into actions: inout [Action]) {
        setState(address, .dialing, now: now)
        actions.append(.dial(address))
    }

    /// `min(maxBackoff, baseBackoff · 2^failures)`, without overflowing.
    func backoffDelay(failures: Int) -> UInt64 {
        let base = configuration.baseBackoff
        let cap = configuration.maxBackoff
        guard failures < 64, base <= cap >> UInt64(failures) else { return cap }
        return base << UInt64(failures)
    }

    /// Backs the address off for `delay` with full jitter in [delay/2, delay], so that nodes that
    /// lost the same peer at the same moment do not redial in lockstep.
    private mutating func scheduleRedial(_ address: Address, delay: UInt64, now: UInt64) {
        let jittered = UInt64.random(in: delay / 2 ... delay, using: &random)
        setState(address, .backoff(until: saturatingAdd(now, jittered)), now: now)
    }

    /// After a peer's link is gone: plan a redial of its dial address. A peer that closed the
    /// link itself (`refused`: most often full) is asked again only after `maxBackoff`, and
    /// news of it does not bring a dial before then: at once, every node short of links
    /// would redial every full one in a loop.
    private mutating func planRedial(of peer: PeerID, lastSeen: UInt64, peerLeft: Bool, refused: Bool = false, now: UInt64) {
        guard let address = dialAddress[peer], let entry = addresses[address] else { return }
        addresses[address]!.lastSeen = lastSeen
        guard entry.state == .idle || entry.state == .failed else { return }
        if refused && !peerLeft {
            scheduleRedial(address, delay: configuration.maxBackoff, now: now)
        } else if !peerLeft {
            scheduleRedial(address, delay: backoffDelay(failures: entry.attempts), now: now)
        } else if entry.isBootstrap {
            scheduleRedial(address, delay: configuration.maxBackoff, now: now)
        }
    }

    /// The peer is linked: its dial address starts afresh and any planned redial is dropped.
    private mutating func markReached(_ peer: PeerID, now: UInt64) {
        guard let address = dialAddress[peer], let entry = addresses[address] else { return }
        addresses[address]!.attempts = 0
        addresses[address]!.lastSeen = now
        switch entry.state {
        case .backoff, .failed: setState(address, .idle, now: now)
        case .idle, .dialing, .own: break
        }
    }

    /// Records that `peer` is at `address` and decides whether it becomes the peer's dial
    /// address. Preference: bootstrap (retried forever) over confirmed by the peer over hearsay;
    /// among equals the newest first-hand news wins, and hearsay only replaces a failed address.
    private mutating func learn(_ address: Address, for peer: PeerID, firsthand: Bool, now: UInt64) {
        guard address != advertisedAddress, ensureEntry(address, now: now) else { return }
        var entry = addresses[address]!
        guard entry.state != .own else { return }
        if let previous = entry.peer, previous != peer, dialAddress[previous] == address {
            dialAddress[previous] = nil
        }
        entry.peer = peer
        if firsthand { entry.confirmed = true }
        addresses[address] = entry
        if let current = dialAddress[peer], current != address, let currentEntry = addresses[current] {
            let newRank = rank(entry)
            let currentRank = rank(currentEntry)
            let replace = newRank > currentRank
                || (newRank == currentRank && (firsthand || currentEntry.state == .failed))
            guard replace else { return }
        }
        dialAddress[peer] = address
    }

    private func rank(_ entry: AddressEntry) -> Int {
        entry.isBootstrap ? 2 : entry.confirmed ? 1 : 0
    }

    /// The address led back to this node: never dial it again.
    private mutating func markOwn(_ address: Address, now: UInt64) {
        guard let entry = addresses[address] else { return }
        if let peer = entry.peer, dialAddress[peer] == address { dialAddress[peer] = nil }
        addresses[address]!.peer = nil
        setState(address, .own, now: now)
    }

    /// Makes sure `address` has an entry, evicting one if the table is full. Returns false when
    /// every entry must be kept (pending, bootstrap, ours, or a linked peer's dial address),
    /// unless `force` (bootstrap addresses, which the caller bounds).
    private mutating func ensureEntry(_ address: Address, now: UInt64, force: Bool = false) -> Bool {
        guard addresses[address] == nil else { return true }
        if addresses.count >= configuration.maxKnownAddresses && !evictOne() && !force { return false }
        addresses[address] = AddressEntry(lastChange: now, order: nextOrder)
        nextOrder += 1
        return true
    }

    /// Forgets `peer`'s addresses but its bootstrap ones (which then become its dial address);
    /// one being dialed is only marked, so its dial's outcome still finds it. O(addresses).
    private mutating func forget(_ peer: PeerID, now: UInt64) {
        var bootstrap: (address: Address, order: UInt64)?
        for (address, entry) in addresses where entry.peer == peer {
            if entry.isBootstrap {
                if bootstrap == nil || entry.order < bootstrap!.order { bootstrap = (address, entry.order) }
            } else if entry.state == .dialing {
                addresses[address]!.abandoned = true
            } else {
                setState(address, .idle, now: now)
                removeAddress(address)
            }
        }
        if let bootstrap { dialAddress[peer] = bootstrap.address }
    }

    /// Drops an address that is not being dialed or backing off (the counters stay right).
    private mutating func removeAddress(_ address: Address) {
        guard let entry = addresses.removeValue(forKey: address) else { return }
        if let peer = entry.peer, dialAddress[peer] == address { dialAddress[peer] = nil }
    }

    /// Forgets the oldest failed address, else the oldest idle one. O(n), only when full.
    private mutating func evictOne() -> Bool {
        var victim: (address: Address, failed: Bool, lastChange: UInt64, order: UInt64)?
        for (address, entry) in addresses where !entry.isBootstrap {
            let failed: Bool
            switch entry.state {
            case .failed: failed = true
            case .idle: failed = false
            case .dialing, .backoff, .own: continue
            }
            if let peer = entry.peer, linkByPeer[peer] != nil, dialAddress[peer] == address { continue }
            if let current = victim {
                let better = (failed && !current.failed)
                    || (failed == current.failed && (entry.lastChange, entry.order) < (current.lastChange, current.order))
                guard better else { continue }
            }
            victim = (address, failed, entry.lastChange, entry.order)
        }
        guard let victim, let entry = addresses.removeValue(forKey: victim.address) else { return false }
        if let peer = entry.peer, dialAddress[peer] == victim.address { dialAddress[peer] = nil }
        return true
    }

    /// The single place dial states change, keeping the counters right.
    private mutating func setState(_ address: Address, _ state: DialState, now: UInt64) {
        guard let old = addresses[address]?.state else { return }
        if old == .dialing { dialsInFlight -= 1 }
        if case .backoff = old { backoffCount -= 1 }
        if state == .dialing { dialsInFlight += 1 }
        if case .backoff = state { backoffCount += 1 }
        addresses[address]!.state = state
        addresses[address]!.lastChange = now
    }

    // MARK: Timer

    /// Emits `.armTimer` (or `.cancelTimer`) if the earliest deadline changed. O(links), plus
    /// O(addresses) while any redial is pending.
    private mutating func rearm(_ actions: inout [Action]) {
        var earliest: UInt64?
        for link in links.values {
            let deadline = min(nextPing(link), saturatingAdd(link.lastHeard, configuration.keepaliveTimeout))
            earliest = min(earliest ?? deadline, deadline)
        }
        if backoffCount > 0 {
            for entry in addresses.values {
                if case .backoff(let until) = entry.state { earliest = min(earliest ?? until, until) }
            }
        }
        guard earliest != armedDeadline else { return }
        armedDeadline = earliest
        actions.append(earliest.map { .armTimer(at: $0) } ?? .cancelTimer)
    }
}

private func saturatingAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? .max : sum
}
