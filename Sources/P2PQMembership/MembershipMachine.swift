// The C library for `log` alone (Lifeguard's suspicion timeout): a pure function, no clock,
// random source or I/O; the standard library has no logarithm.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import P2PQWire

/// SWIM membership and failure detection with Lifeguard's refinements, as a plain value.
///
/// Inputs carry the current monotonic time (`now`, nanoseconds); each returns the
/// ``MembershipAction``s the shell must carry out, in order. Nothing here does I/O.
///
/// - **Probing.** Every protocol period (``MembershipConfiguration/probeInterval``) the next
///   member in a shuffled round-robin order gets a `ping`. Without an ack within the probe
///   timeout, up to ``MembershipConfiguration/indirectProbes`` helpers are sent a `ping-req`;
///   each pings the target and relays the ack, or answers `nack` when it got none. Without any
///   ack by the end of the period the target becomes *suspect*. A ping that cannot be sent at
///   all (no link) goes indirect at once, and a probe whose helpers all said nack ends early.
/// - **Suspicion** (Lifeguard). A suspect is declared *dead* when its suspicion timer runs
///   out. The timer starts at the maximum and shrinks towards the minimum, log-scaled, with each
///   independent confirmation (a suspect update for the same incarnation from another origin).
/// - **Refutation.** A node that hears itself suspected or declared dead at its incarnation
///   or later bumps its incarnation past it and gossips `alive` (and sends it straight to the
///   linked peers it does not believe alive). When probing a suspect, the prober tells it (the
///   buddy system), so the refutation does not wait for gossip; a linked member believed dead
///   is told every protocol period, so the halves of a healed partition do not keep each
///   other dead on working links.
/// - **Local health** (Lifeguard). A score from 0 to ``MembershipConfiguration/maxLocalHealth``:
///   +1 for a probe that failed with no helper to ask, for each helper that sent neither ack nor
///   nack in time, and for each refutation; −1 for a probe that got its ack. The probe timeout
///   and the probe interval are multiplied by score + 1, so a node too slow to process acks in
///   time probes more patiently instead of suspecting healthy members.
/// - **Stalls.** A probe or suspicion deadline met by a timer that fired much later than due (this
///   node was not scheduled) is pushed back once by half a probe timeout, so acks and
///   refutations waiting unread are read first; a stalled probe also counts against local health.
/// - **Dissemination.** Updates that changed this node's view are queued and piggybacked on
///   pings, acks, nacks and ping-reqs (and pushed on their own every gossip interval), fewest
///   transmissions first, as many as fit ``MembershipConfiguration/maxPiggybackBytes``. Each is
///   sent at most λ·⌈log10(n + 1)⌉ times. A verdict (dead or left) that changed this node's
///   view also goes at once, on its own, to every linked live member: in a partial mesh the
///   rounds alone took seconds to reach every node (5.5 s at 1,000 nodes), a flood over the
///   links takes a hop or two. A burst of more verdicts than one message holds (a partition)
///   is left to the rounds.
/// - **Links.** A new link (`linkUp`) makes its peer a member and sends it this node's whole
///   view; a closed link (`linkDown`) triggers an immediate probe, never a verdict.
/// - **Tombstones.** A member declared dead or left is kept for
///   ``MembershipConfiguration/tombstoneRetention``, so stale alive news at its old incarnation
///   cannot bring it back, then forgotten on a later tick with everything kept about it. The
///   table holds at most ``MembershipConfiguration/maxMembers`` members.
public struct MembershipMachine: Sendable {
    /// This node.
    public let localPeer: PeerID
    /// This node's incarnation: bumped past any suspicion of it.
    public private(set) var incarnation: UInt64
    public let configuration: MembershipConfiguration
    /// Lifeguard's local health score, `0...maxLocalHealth`.
    public private(set) var localHealth = 0
    /// Whether ``leave(now:)`` was called; the membership is inert afterwards.
    public private(set) var hasLeft = false
    /// Received updates refused because their incarnation is absurd (see ``maxIncarnation``):
    /// a forged or corrupt rumour, counted for the node's metrics.
    public private(set) var refusedUpdates: UInt64 = 0

    /// The highest incarnation a member may have. Incarnations start at a process's
    /// wall-clock start in nanoseconds (this ceiling is the year 2262) and grow by one per
    /// refutation, so anything above is forged. Received updates above it are refused, and
    /// verdicts (suspect, dead, left) at it too, so a refutation (the verdict's incarnation
    /// + 1) always stays within it and never wraps: a rumour can no longer pin a member
    /// where it cannot refute.
    public static let maxIncarnation = UInt64(Int64.max)

    private var rng: SplitMix64

    private struct Member {
        var state: MemberState
        var incarnation: UInt64
        /// Who said so (the member itself for alive and left).
        var origin: PeerID
    }
    private var memberTable: [PeerID: Member] = [:]
    /// When each dead or left member is forgotten; exactly the dead and left keys of `memberTable`.
    private var tombstones: [PeerID: UInt64] = [:]
    /// No tombstone expires before this (it may be early after one was dropped, never late), so
    /// neither the timer nor a tick scans the tombstones for nothing.
    private var nextTombstoneExpiry: UInt64 = .max

    private struct Suspicion {
        var startedAt: UInt64
        /// Distinct origins of suspect updates at this incarnation, the first one included.
        var origins: Set<PeerID>
        var expected: Int
        var deadline: UInt64
        /// Pushed back once because this node's timer fired late.
        var extended = false
    }
    private var suspicions: [PeerID: Suspicion] = [:]

    private struct Probe {
        var target: PeerID
        /// When the probe goes indirect; nil once it has.
        var directDeadline: UInt64?
        /// When the probe fails without an ack.
        var deadline: UInt64
        /// The ping could not be sent at all (no link to the target).
        var undeliverable = false
        var helpers: Set<PeerID> = []
        var nacks: Set<PeerID> = []
        /// The deadline was pushed back once because this node's timer fired late.
        var extended = false
    }
    private var probes: [UInt64: Probe] = [:]
    private var probing: [PeerID: UInt64] = [:]
    private var probeOrder: [PeerID] = []
    private var probeIndex = 0
    private var nextProbeAt: UInt64 = .max

    /// A ping this node sends as a helper for someone's ping-req.
    private struct Relay {
        var requester: PeerID
        var requesterSequence: UInt64
        var nackAt: UInt64?
        var expiresAt: UInt64
    }
    private var relays: [UInt64: Relay] = [:]

    private struct Pending {
        var update: MemberUpdate
        var transmissions: Int
        /// Insertion order, so newer updates go first among equals.
        var serial: UInt64
    }
    private var queue: [PeerID: Pending] = [:]
    /// Verdicts that changed this node's view during the current input, flooded at its end.
    private var verdictsToFlood: [MemberUpdate] = []
    private var serial: UInt64 = 0
    private var nextGossipAt: UInt64 = .max

    private var sequence: UInt64 = 0
    private var armed: UInt64?
    /// Peers with a link up (``linkUp(_:incarnation:now:)`` minus ``linkDown(_:now:)``): a
    /// refutation goes to each of them at once, and a linked member believed dead is told so
    /// every protocol period, because neither side gossips to a member it believes dead.
    private var linked = Set<PeerID>()
    /// The start each member's latest link announced in its hello (members only): a later
    /// one is a new process, even when gossip already told its incarnation.
    private var processStarts: [PeerID: UInt64] = [:]

    /// A membership of one (this node) at `incarnation`. `seed` drives every random choice
    /// (probe order, helpers, gossip targets), so equal seeds and inputs give equal outputs.
    public init(localPeer: PeerID, incarnation: UInt64, configuration: MembershipConfiguration = MembershipConfiguration(),
                seed: UInt64) {
        self.localPeer = localPeer
        self.incarnation = min(incarnation, Self.maxIncarnation)
        self.configuration = configuration
        rng = SplitMix64(seed: seed)
    }

    // MARK: Queries

    /// Every member this node knows (itself excluded), sorted by PeerID.
    public var members: [MemberStatus] {
        memberTable.keys.sorted().map { peer in
            let member = memberTable[peer]!
            return MemberStatus(peer: peer, state: member.state, incarnation: member.incarnation)
        }
    }

    /// The state of `peer`, or nil if unknown.
    public func state(of peer: PeerID) -> MemberState? {
        memberTable[peer]?.state
    }

    /// Members alive or suspect, this node excluded.
    public var liveMemberCount: Int {
        memberTable.values.lazy.filter { $0.state == .alive || $0.state == .suspect }.count
    }

    /// How many times each update is sent: λ·⌈log10(n + 1)⌉, n counting this node.
    public var retransmitLimit: Int {
        let n = liveMemberCount + 1
        var digits = 0
        var power = 1
        while power < n + 1 {
            power *= 10
            digits += 1
        }
        return configuration.retransmitMultiplier * max(1, digits)
    }

    /// The current suspicion deadline of `peer` (for tests and status).
    public func suspicionDeadline(of peer: PeerID) -> UInt64? {
        suspicions[peer]?.deadline
    }

    /// When the dead or left `peer` is forgotten (for tests and status); nil if it is not a tombstone.
    public func tombstoneExpiry(of peer: PeerID) -> UInt64? {
        tombstones[peer]
    }

    private var healthMultiplier: UInt64 { UInt64(localHealth + 1) }

    // MARK: Inputs

    /// Starts probing and announces this node.
    public mutating func start(now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        nextProbeAt = now &+ configuration.probeInterval
        enqueue(MemberUpdate(kind: .alive, member: localPeer, incarnation: incarnation, origin: localPeer))
        rearm(now: now, &out)
        return out
    }

    /// The timer fired (or any time): runs everything that is due.
    public mutating func tick(now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        guard !hasLeft else { return out }
        armed = nil  // the shell's timer has fired: always say when the next one is due
        for sequence in probes.keys.sorted() {
            guard let probe = probes[sequence] else { continue }
            if let direct = probe.directDeadline, now >= direct {
                goIndirect(sequence, now: now, &out)
            }
            if let probe = probes[sequence], now >= probe.deadline {
                if !probe.extended && now - probe.deadline > configuration.probeTimeout / 2 {
                    // The timer fired this late because this node was stalled: the ack may be
                    // waiting unread. Give it one short grace, and count the stall against
                    // local health instead of against the target.
                    probes[sequence]!.extended = true
                    probes[sequence]!.deadline = now &+ configuration.probeTimeout / 2
                    localHealth = min(configuration.maxLocalHealth, localHealth + 1)
                } else {
                    probeFailed(sequence, now: now, &out)
                }
            }
        }
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence] else { continue }
            if let nackAt = relay.nackAt, now >= nackAt {
                relays[sequence]!.nackAt = nil
                out.append(.send(.nack(sequence: relay.requesterSequence, updates: piggyback(for: relay.requester)),
                                 to: relay.requester))
            }
            if now >= relay.expiresAt { relays[sequence] = nil }
        }
        for peer in suspicions.keys.sorted() {
            guard let suspicion = suspicions[peer], now >= suspicion.deadline else { continue }
            guard let member = memberTable[peer], member.state == .suspect else {
                suspicions[peer] = nil
                continue
            }
            if !suspicion.extended && now - suspicion.deadline > configuration.probeTimeout / 2 {
                // Stalled: a refutation may be waiting unread; look once more shortly.
                suspicions[peer]!.extended = true
                suspicions[peer]!.deadline = now &+ configuration.probeTimeout / 2
                continue
            }
            apply(MemberUpdate(kind: .dead, member: peer, incarnation: member.incarnation, origin: localPeer), now: now, &out)
        }
        if now >= nextTombstoneExpiry {
            for (peer, expiry) in tombstones where now >= expiry { forget(peer) }
            nextTombstoneExpiry = tombstones.values.min() ?? .max
        }
        if now >= nextProbeAt {
            nextProbeAt = now &+ configuration.probeInterval &* healthMultiplier
            if let target = nextProbeTarget() { startProbe(target, now: now, &out) }
            remindLinkedDead(&out)
        }
        if now >= nextGossipAt {
            nextGossipAt = now &+ configuration.gossipInterval
            gossipRound(&out)
        }
        rearm(now: now, &out)
        return out
    }

    /// A membership message arrived from `peer`.
    public mutating func received(_ message: MembershipMessage, from peer: PeerID, now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        guard !hasLeft else { return out }
        var missedRefutation = false
        for update in message.updates {
            guard Self.isPlausible(update) else {
                refusedUpdates &+= 1
                continue
            }
            // A verdict about this node older than its incarnation: the sender missed the
            // refutation (its gossip rounds ran out before reaching it) and would hold this node
            // dead for good. It hears the current incarnation straight back.
            if update.member == localPeer, update.kind != .alive, update.incarnation < incarnation { missedRefutation = true }
            apply(update, now: now, &out)
        }
        if missedRefutation {
            out.append(.send(.gossip(updates: [MemberUpdate(kind: .alive, member: localPeer, incarnation: incarnation,
                                                            origin: localPeer)]), to: peer))
        }
        switch message {
        case .ping(let sequence, _):
            out.append(.send(.ack(sequence: sequence, updates: piggyback(for: peer)), to: peer))
        case .ack(let sequence, _):
            if probes[sequence] != nil {
                probeSucceeded(sequence)
            } else if let relay = relays.removeValue(forKey: sequence) {
                out.append(.send(.ack(sequence: relay.requesterSequence, updates: piggyback(for: relay.requester)),
                                 to: relay.requester))
            }
        case .pingRequest(let sequence, let target, _):
            if target == localPeer {
                out.append(.send(.ack(sequence: sequence, updates: piggyback(for: peer)), to: peer))
            } else {
                let own = nextSequence()
                // The nack must reach the requester before its probe ends, so it leaves at 80 %
                // of the probe timeout.
                relays[own] = Relay(requester: peer, requesterSequence: sequence,
                                    nackAt: now &+ configuration.probeTimeout / 5 * 4,
                                    expiresAt: now &+ configuration.probeInterval &* healthMultiplier)
                out.append(.send(.ping(sequence: own, updates: piggyback(for: target)), to: target))
            }
        case .nack(let sequence, _):
            if var probe = probes[sequence], probe.helpers.contains(peer) {
                probe.nacks.insert(peer)
                probes[sequence] = probe
                concludeIfHopeless(sequence, now: now, &out)
            }
        case .gossip:
            break
        }
        floodVerdicts(except: peer, &out)
        rearm(now: now, &out)
        return out
    }

    /// A `.send` directive could not be carried out (no ready link to `peer`).
    public mutating func undeliverable(_ message: MembershipMessage, to peer: PeerID, now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        guard !hasLeft else { return out }
        switch message {
        case .ping(let sequence, _):
            if var probe = probes[sequence], probe.directDeadline != nil {
                probe.undeliverable = true
                probes[sequence] = probe
                goIndirect(sequence, now: now, &out)
            } else if let relay = relays[sequence], relay.nackAt != nil {
                // A helper without a link to the target says so at once.
                relays[sequence] = nil
                out.append(.send(.nack(sequence: relay.requesterSequence, updates: piggyback(for: relay.requester)),
                                 to: relay.requester))
            }
        case .pingRequest(let sequence, _, _):
            if var probe = probes[sequence] {
                probe.helpers.remove(peer)
                probes[sequence] = probe
                concludeIfHopeless(sequence, now: now, &out)
            }
        case .ack, .nack, .gossip:
            break
        }
        rearm(now: now, &out)
        return out
    }

    /// A link to `peer` came up. `incarnation` is the lower bound the peer announced for its
    /// incarnation (its process start), which tells a restarted member from a reconnect: one
    /// above what this node knows, or above the previous link's hello, is reported as
    /// ``MembershipEvent/restarted(_:)`` (or ``MembershipEvent/joined(_:)`` after a verdict).
    public mutating func linkUp(_ peer: PeerID, incarnation: UInt64, now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        guard !hasLeft, peer != localPeer else { return out }
        let incarnation = min(incarnation, Self.maxIncarnation)
        linked.insert(peer)
        let previousStart = processStarts[peer]
        if let member = memberTable[peer] {
            if (member.state == .dead || member.state == .left) && incarnation > member.incarnation {
                apply(MemberUpdate(kind: .alive, member: peer, incarnation: incarnation, origin: peer), now: now, &out)
            } else if incarnation > member.incarnation {
                // A process never starts below the incarnation it announced, so this is a new
                // process of the same identity: the one we knew is gone, whatever we thought.
                record(peer, Member(state: .alive, incarnation: incarnation, origin: peer), now: now)
                suspicions[peer] = nil
                if let sequence = probing.removeValue(forKey: peer) { probes[sequence] = nil }
                enqueue(MemberUpdate(kind: .alive, member: peer, incarnation: incarnation, origin: peer))
                out.append(.event(.restarted(peer)))
            } else if member.state == .alive || member.state == .suspect, let previousStart, incarnation > previousStart {
                // Gossip brought the new process's incarnation before its link did: the view is
                // current, but the process this node was linked to is gone all the same.
                out.append(.event(.restarted(peer)))
            }
        } else {
            apply(MemberUpdate(kind: .alive, member: peer, incarnation: incarnation, origin: peer), now: now, &out)
        }
        if memberTable[peer] != nil { processStarts[peer] = max(previousStart ?? 0, incarnation) }
        // The newcomer learns this node's whole view at once (and, if it is suspected or
        // declared dead, that too, so it refutes).
        var view = [MemberUpdate(kind: .alive, member: localPeer, incarnation: self.incarnation, origin: localPeer)]
        for other in memberTable.keys.sorted() {
            let member = memberTable[other]!
            view.append(MemberUpdate(kind: Self.kind(of: member.state), member: other,
                                     incarnation: member.incarnation, origin: member.origin))
        }
        var start = 0
        while start < view.count {
            let end = min(view.count, start + MembershipWire.maxUpdatesPerMessage)
            out.append(.send(.gossip(updates: Array(view[start..<end])), to: peer))
            start = end
        }
        rearm(now: now, &out)
        return out
    }

    /// The link to `peer` closed: strong evidence, so probe it now (never a verdict by itself).
    /// `probe` false: the peer closed it with a goodbye, so it was alive; without a link it is
    /// no longer this node's to judge.
    public mutating func linkDown(_ peer: PeerID, probe: Bool = true, now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        linked.remove(peer)
        if !probe, let sequence = probing.removeValue(forKey: peer) {
            probes[sequence] = nil  // it answered by closing: alive
        }
        guard probe, !hasLeft, let member = memberTable[peer], member.state == .alive || member.state == .suspect,
              probing[peer] == nil else { return out }
        startProbe(peer, now: now, &out)
        rearm(now: now, &out)
        return out
    }

    /// This node leaves: every live member is told directly, so it records *left*, not dead.
    /// The membership does nothing afterwards.
    public mutating func leave(now: UInt64) -> [MembershipAction] {
        var out: [MembershipAction] = []
        guard !hasLeft else { return out }
        hasLeft = true
        let update = MemberUpdate(kind: .left, member: localPeer, incarnation: incarnation, origin: localPeer)
        for peer in memberTable.keys.sorted() where memberTable[peer]!.state == .alive || memberTable[peer]!.state == .suspect {
            out.append(.send(.gossip(updates: [update]), to: peer))
        }
        probes = [:]
        probing = [:]
        relays = [:]
        suspicions = [:]
        queue = [:]
        nextProbeAt = .max
        nextGossipAt = .max
        armed = nil
        return out
    }

    // MARK: Probing

    private mutating func nextSequence() -> UInt64 {
        sequence &+= 1
        return sequence
    }

    private mutating func nextProbeTarget() -> PeerID? {
        for pass in 0..<2 {
            while probeIndex < probeOrder.count {
                let candidate = probeOrder[probeIndex]
                probeIndex += 1
                if let member = memberTable[candidate], member.state == .alive || member.state == .suspect,
                   probing[candidate] == nil, linked.contains(candidate) {
                    return candidate
                }
            }
            guard pass == 0 else { break }
            // Only members this node has a link to: the others are judged by the nodes that
            // link to them (a partial mesh above `maxPeers` + 1 nodes), and their verdicts
            // come by gossip. A ping to an unlinked member could not go, and its helpers,
            // unlinked as well, would nack a live member into a false verdict.
            probeOrder = linked.sorted().filter {
                memberTable[$0].map { $0.state == .alive || $0.state == .suspect } ?? false
            }
            probeOrder.shuffle(using: &rng)
            probeIndex = 0
        }
        return nil
    }

    private mutating func startProbe(_ target: PeerID, now: UInt64, _ out: inout [MembershipAction]) {
        let sequence = nextSequence()
        probes[sequence] = Probe(
            target: target,
            directDeadline: now &+ configuration.probeTimeout &* healthMultiplier,
            deadline: now &+ configuration.probeInterval &* healthMultiplier
        )
        probing[target] = sequence
        out.append(.send(.ping(sequence: sequence, updates: piggyback(for: target)), to: target))
    }

    private mutating func goIndirect(_ sequence: UInt64, now: UInt64, _ out: inout [MembershipAction]) {
        guard var probe = probes[sequence], probe.directDeadline != nil else { return }
        probe.directDeadline = nil
        // Helpers get their window even when this node goes indirect late (a stall).
        probe.deadline = max(probe.deadline, now &+ configuration.probeTimeout &* healthMultiplier)
        // Helpers are asked over links, so only linked ones can be.
        var candidates = linked.sorted().filter {
            $0 != probe.target && memberTable[$0]?.state == .alive
        }
        candidates.shuffle(using: &rng)
        probe.helpers = Set(candidates.prefix(configuration.indirectProbes))
        probes[sequence] = probe
        for helper in candidates.prefix(configuration.indirectProbes) {
            out.append(.send(.pingRequest(sequence: sequence, target: probe.target, updates: piggyback(for: helper)),
                             to: helper))
        }
        concludeIfHopeless(sequence, now: now, &out)
    }

    /// Ends a probe early when nothing can answer any more: the ping was never sent and every
    /// helper either could not be asked or said nack.
    private mutating func concludeIfHopeless(_ sequence: UInt64, now: UInt64, _ out: inout [MembershipAction]) {
        guard let probe = probes[sequence], probe.directDeadline == nil, probe.undeliverable,
              probe.helpers.isSubset(of: probe.nacks) else { return }
        probeFailed(sequence, now: now, &out)
    }

    private mutating func probeSucceeded(_ sequence: UInt64) {
        guard let probe = probes.removeValue(forKey: sequence) else { return }
        probing[probe.target] = nil
        localHealth = max(0, localHealth - 1)
    }

    private mutating func probeFailed(_ sequence: UInt64, now: UInt64, _ out: inout [MembershipAction]) {
        guard let probe = probes.removeValue(forKey: sequence) else { return }
        probing[probe.target] = nil
        // Lifeguard: helpers that said nothing point at this node being slow, not the target.
        // A ping that could not even be sent is no sign of slowness.
        let missed: Int
        if probe.helpers.isEmpty {
            missed = probe.undeliverable ? 0 : 1
        } else {
            missed = probe.helpers.subtracting(probe.nacks).count
        }
        localHealth = min(configuration.maxLocalHealth, localHealth + missed)
        guard let member = memberTable[probe.target], member.state == .alive || member.state == .suspect else { return }
        apply(MemberUpdate(kind: .suspect, member: probe.target, incarnation: member.incarnation, origin: localPeer),
              now: now, &out)
    }

    // MARK: Updates

    private static func kind(of state: MemberState) -> MemberUpdateKind {
        switch state {
        case .alive: return .alive
        case .suspect: return .suspect
        case .dead: return .dead
        case .left: return .left
        }
    }

    /// Applies one update under SWIM's ordering rules; updates that change the view are
    /// queued for gossip and reported as events.
    private mutating func apply(_ update: MemberUpdate, now: UInt64, _ out: inout [MembershipAction]) {
        let peer = update.member
        let incarnation = update.incarnation
        if peer == localPeer {
            refuteIfNeeded(update, &out)
            return
        }
        guard let member = memberTable[peer] else {
            switch update.kind {
            case .alive:
                guard makeRoom() else { return }
                record(peer, Member(state: .alive, incarnation: incarnation, origin: peer), now: now)
                insertIntoProbeOrder(peer)
                enqueue(update)
                out.append(.event(.joined(peer)))
            case .dead, .left:
                // Remembered, so stale alive news of the same incarnation cannot revive it.
                guard makeRoom() else { return }
                record(peer, Member(state: update.kind == .dead ? .dead : .left, incarnation: incarnation,
                                    origin: update.origin), now: now)
            case .suspect:
                break  // a suspicion of a stranger says nothing useful; its alive will come
            }
            return
        }
        switch (update.kind, member.state) {
        case (.alive, .alive):
            guard incarnation > member.incarnation else { return }
            memberTable[peer]!.incarnation = incarnation
            enqueue(update)
        case (.alive, .suspect):
            guard incarnation > member.incarnation else { return }
            record(peer, Member(state: .alive, incarnation: incarnation, origin: peer), now: now)
            suspicions[peer] = nil
            enqueue(update)
            out.append(.event(.alive(peer)))
        case (.alive, .dead), (.alive, .left):
            guard incarnation > member.incarnation else { return }
            record(peer, Member(state: .alive, incarnation: incarnation, origin: peer), now: now)
            insertIntoProbeOrder(peer)
            enqueue(update)
            out.append(.event(.joined(peer)))
        case (.suspect, .alive):
            guard incarnation >= member.incarnation else { return }
            record(peer, Member(state: .suspect, incarnation: incarnation, origin: update.origin), now: now)
            startSuspicion(of: peer, origin: update.origin, now: now)
            enqueue(update)
            out.append(.event(.suspect(peer)))
        case (.suspect, .suspect):
            if incarnation > member.incarnation {
                record(peer, Member(state: .suspect, incarnation: incarnation, origin: update.origin), now: now)
                startSuspicion(of: peer, origin: update.origin, now: now)
                enqueue(update)
            } else if incarnation == member.incarnation, confirm(peer, origin: update.origin) {
                enqueue(update)
            }
        case (.suspect, .dead), (.suspect, .left):
            return
        case (.dead, .alive), (.dead, .suspect), (.left, .alive), (.left, .suspect):
            guard incarnation >= member.incarnation else { return }
            let state: MemberState = update.kind == .dead ? .dead : .left
            record(peer, Member(state: state, incarnation: incarnation, origin: update.origin), now: now)
            suspicions[peer] = nil
            if let sequence = probing.removeValue(forKey: peer) { probes[sequence] = nil }
            enqueue(update)
            verdictsToFlood.append(update)
            out.append(.event(state == .dead ? .dead(peer) : .left(peer)))
        case (.dead, .dead), (.dead, .left), (.left, .dead), (.left, .left):
            // A verdict at a later incarnation is news still spreading: keep the tombstone longer.
            if incarnation > member.incarnation {
                memberTable[peer]!.incarnation = incarnation
                setTombstone(peer, expiry: now &+ configuration.tombstoneRetention)
            }
        }
    }

    /// Stores a member's record, keeping `tombstones` in step: a dead or left record gets its
    /// expiry (a fresh one only on the change into dead or left), any other clears it.
    private mutating func record(_ peer: PeerID, _ member: Member, now: UInt64) {
        let wasTombstone = tombstones[peer] != nil
        memberTable[peer] = member
        if member.state == .dead || member.state == .left {
            if !wasTombstone { setTombstone(peer, expiry: now &+ configuration.tombstoneRetention) }
        } else {
            tombstones[peer] = nil
        }
    }

    private mutating func setTombstone(_ peer: PeerID, expiry: UInt64) {
        tombstones[peer] = expiry
        nextTombstoneExpiry = min(nextTombstoneExpiry, expiry)
    }

    /// Makes room for one more member: true if the table is below `maxMembers`, or after
    /// forgetting the tombstone closest to its expiry; false when only live members fill it.
    private mutating func makeRoom() -> Bool {
        guard memberTable.count >= configuration.maxMembers else { return true }
        guard let victim = tombstones.min(by: { ($0.value, $0.key) < ($1.value, $1.key) })?.key else { return false }
        forget(victim)
        return true
    }

    /// Forgets a member and everything kept about it. Pending gossip about it goes too: a
    /// verdict still queued when its tombstone expires has had no one to go to.
    private mutating func forget(_ peer: PeerID) {
        memberTable[peer] = nil
        tombstones[peer] = nil
        suspicions[peer] = nil
        processStarts[peer] = nil
        if let sequence = probing.removeValue(forKey: peer) { probes[sequence] = nil }
        queue[peer] = nil
        if let position = probeOrder.firstIndex(of: peer) {
            probeOrder.remove(at: position)
            if position < probeIndex { probeIndex -= 1 }
        }
    }

    /// Whether a received update's incarnation could be real: alive at most
    /// ``maxIncarnation``, a verdict below it (so its refutation fits).
    static func isPlausible(_ update: MemberUpdate) -> Bool {
        switch update.kind {
        case .alive: return update.incarnation <= maxIncarnation
        case .suspect, .dead, .left: return update.incarnation < maxIncarnation
        }
    }

    private mutating func refuteIfNeeded(_ update: MemberUpdate, _ out: inout [MembershipAction]) {
        guard incarnation <= update.incarnation else { return }
        if update.kind == .alive && update.incarnation == incarnation { return }
        // Suspected, declared dead or left at our incarnation (or an alive from a previous
        // life of this identity claims a later one): take a newer incarnation and say so.
        // Saturating: received updates are within maxIncarnation (an alive there needs no +1).
        incarnation = min(update.incarnation, Self.maxIncarnation - 1) + 1
        if update.kind != .alive {
            localHealth = min(configuration.maxLocalHealth, localHealth + 1)
        }
        let alive = MemberUpdate(kind: .alive, member: localPeer, incarnation: incarnation, origin: localPeer)
        enqueue(alive)
        // Gossip only goes to members believed alive: straight to the linked others too. After
        // a partition heals they may be all this node has, and may believe it dead in turn.
        for peer in linked.sorted() where !(memberTable[peer].map { $0.state == .alive || $0.state == .suspect } ?? false) {
            out.append(.send(.gossip(updates: [alive]), to: peer))
        }
        if update.kind == .dead || update.kind == .left { out.append(.event(.refutedDeath)) }
    }

    /// Tells each linked member believed dead what this node believes (and the queued news), so
    /// it refutes: neither side probes or gossips to a member it believes dead, so two halves of
    /// a healed partition would otherwise keep each other dead on a working link.
    private mutating func remindLinkedDead(_ out: inout [MembershipAction]) {
        for peer in linked.sorted() where memberTable[peer]?.state == .dead {
            out.append(.send(.gossip(updates: piggyback(for: peer)), to: peer))
        }
    }

    private mutating func insertIntoProbeOrder(_ peer: PeerID) {
        // A random place in the rest of this round, so a newcomer is probed soon.
        let position = probeIndex + Int(rng.next(upperBound: UInt64(probeOrder.count - probeIndex + 1)))
        probeOrder.insert(peer, at: position)
    }

    // MARK: Suspicion

    private mutating func startSuspicion(of peer: PeerID, origin: PeerID, now: UInt64) {
        // Members that could confirm: every live member but the suspect and the first origin
        // (this node included when another node started it).
        let live = liveMemberCount + 1
        let expected = min(configuration.expectedConfirmations, max(0, live - 2))
        var suspicion = Suspicion(startedAt: now, origins: [origin], expected: expected, deadline: 0)
        suspicion.deadline = now &+ suspicionTimeout(confirmations: 0, expected: expected)
        suspicions[peer] = suspicion
    }

    /// Adds an independent confirmation; false if `origin` had already suspected.
    private mutating func confirm(_ peer: PeerID, origin: PeerID) -> Bool {
        guard var suspicion = suspicions[peer], !suspicion.origins.contains(origin) else { return false }
        suspicion.origins.insert(origin)
        suspicion.deadline = suspicion.startedAt &+ suspicionTimeout(
            confirmations: suspicion.origins.count - 1, expected: suspicion.expected)
        suspicions[peer] = suspicion
        return true
    }

    /// Lifeguard: max − (max − min)·log(c + 1)/log(K + 1), never below min.
    func suspicionTimeout(confirmations: Int, expected: Int) -> UInt64 {
        let low = configuration.suspicionMinTimeout
        let high = configuration.suspicionMaxTimeout
        guard expected > 0 else { return low }
        let fraction = min(1, log(Double(confirmations + 1)) / log(Double(expected + 1)))
        let timeout = Double(high) - Double(high - low) * fraction
        return max(low, UInt64(timeout.rounded()))
    }

    // MARK: Dissemination

    private mutating func enqueue(_ update: MemberUpdate) {
        serial &+= 1
        queue[update.member] = Pending(update: update, transmissions: 0, serial: serial)
        if nextGossipAt == .max { nextGossipAt = 0 }
    }

    /// The updates to put on a message to `recipient`: first what this node believes about
    /// the recipient if that is bad news (so it can refute), then the least-sent queued updates.
    private mutating func piggyback(for recipient: PeerID) -> [MemberUpdate] {
        let room = min(configuration.maxPiggybackBytes / MemberUpdate.encodedSize, MembershipWire.maxUpdatesPerMessage)
        var updates: [MemberUpdate] = []
        if let member = memberTable[recipient], member.state == .suspect || member.state == .dead {
            updates.append(MemberUpdate(kind: Self.kind(of: member.state), member: recipient,
                                        incarnation: member.incarnation, origin: member.origin))
        }
        guard !queue.isEmpty, updates.count < room else { return updates }
        let limit = retransmitLimit
        let chosen = queue.values.sorted {
            ($0.transmissions, ~$0.serial) < ($1.transmissions, ~$1.serial)
        }.prefix(room - updates.count)
        for pending in chosen where !updates.contains(pending.update) {
            updates.append(pending.update)
            let key = pending.update.member
            queue[key]!.transmissions += 1
            if queue[key]!.transmissions >= limit { queue[key] = nil }
        }
        return updates
    }

    /// Sends the verdicts this input produced to every linked live member but `sender` and the
    /// members they condemn, in one message each (the queued rounds still carry them as well).
    private mutating func floodVerdicts(except sender: PeerID?, _ out: inout [MembershipAction]) {
        guard !verdictsToFlood.isEmpty else { return }
        defer { verdictsToFlood.removeAll(keepingCapacity: true) }
        let room = min(configuration.maxPiggybackBytes / MemberUpdate.encodedSize, MembershipWire.maxUpdatesPerMessage)
        guard verdictsToFlood.count <= room else { return }
        for peer in linked.sorted() where peer != sender
            && (memberTable[peer].map { $0.state == .alive || $0.state == .suspect } ?? false)
            && !verdictsToFlood.contains(where: { $0.member == peer }) {
            out.append(.send(.gossip(updates: verdictsToFlood), to: peer))
        }
    }

    private mutating func gossipRound(_ out: inout [MembershipAction]) {
        guard !queue.isEmpty, configuration.gossipFanout > 0 else { return }
        // Linked members only: a send to another could not go, yet would spend the updates'
        // retransmissions (a partial mesh would hear of deaths late, or never).
        var targets = linked.sorted().filter { memberTable[$0].map { $0.state == .alive || $0.state == .suspect } ?? false }
        targets.shuffle(using: &rng)
        for target in targets.prefix(configuration.gossipFanout) {
            let updates = piggyback(for: target)
            if !updates.isEmpty { out.append(.send(.gossip(updates: updates), to: target)) }
        }
    }

    // MARK: Timer

    /// Ends every input: floods its verdicts (``floodVerdicts(except:_:)``) and says when the
    /// timer is next due.
    private mutating func rearm(now: UInt64, _ out: inout [MembershipAction]) {
        guard !hasLeft else { return }
        floodVerdicts(except: nil, &out)
        var earliest = nextProbeAt
        if !queue.isEmpty {
            if nextGossipAt < now { nextGossipAt = now }
            earliest = min(earliest, nextGossipAt)
        } else {
            nextGossipAt = .max
        }
        for probe in probes.values {
            earliest = min(earliest, probe.directDeadline ?? probe.deadline, probe.deadline)
        }
        for relay in relays.values {
            earliest = min(earliest, relay.nackAt ?? relay.expiresAt, relay.expiresAt)
        }
        for suspicion in suspicions.values { earliest = min(earliest, suspicion.deadline) }
        earliest = min(earliest, nextTombstoneExpiry)
        guard earliest != .max, earliest != armed else { return }
        armed = earliest
        out.append(.armTimer(at: earliest))
    }
}
