import P2PQConnectionManager
import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQRemoteCall
import P2PQWire

/// Nanoseconds in a millisecond and a second, for simulated times.
public let simulatedMillisecond: UInt64 = 1_000_000
public let simulatedSecond: UInt64 = 1_000_000_000

/// Node machines (``NodeMachine``, the type real nodes run) on a virtual clock and an in-memory
/// network of links, driven by one seed.
///
/// - A dial reaches the node at the address unless it is crashed, paused or cut off either way
///   (then it fails after one latency); the handshake and hellos take a round trip and a half.
/// - Membership and queue messages, pings, peer lists and closes travel with a delay drawn
///   from the link's distribution, in order on each link (``NetworkConfiguration``: stalls,
///   resets, and resets after delivery stand for what TCP makes of lost packets); a cut drops
///   everything sent across it in its direction, so links across it end by their keepalive
///   timeouts, as over a cut cable.
/// - A crashed node processes nothing more; its peers' ends of its links close one latency
///   later (the kernel's reset) and dials to it fail. A paused node (SIGSTOP) keeps its state and
///   its links; what is sent to it and its timers wait until it resumes, pings included (its
///   peers hear no pong). A restarted node comes back with the same identity, a new
///   incarnation and empty queues.
///
/// Every action of every node goes into a running ``TraceHash`` (and, when asked, a trace), so
/// two runs of one seed can be compared, here or in another process.
public struct ClusterSimulation {
    public typealias Machine = NodeMachine<String>
    public typealias Action = NodeAction<String>

    /// How the simulated cluster is set up.
    public struct Configuration: Sendable {
        public var nodes: Int
        public var seed: UInt64
        /// Latencies and network faults.
        public var network = NetworkConfiguration()
        /// The base one-way latency of every link without its own (``NetworkConfiguration/latency``).
        public var latency: UInt64 {
            get { network.latency.base }
            set { network.latency.base = newValue }
        }
        public var connection = ConnectionConfiguration(baseBackoff: 100 * simulatedMillisecond, maxBackoff: simulatedSecond,
                                                        keepaliveInterval: 300 * simulatedMillisecond,
                                                        keepaliveTimeout: simulatedSecond, maxPeers: 64)
        public var membership = MembershipConfiguration()
        public var queue = QueueConfiguration()
        /// Check the membership invariants while running (``InvariantBounds``); nil: do not.
        public var invariants: InvariantBounds? = nil
        /// Keep every action in ``ClusterSimulation/trace`` (memory grows with the run).
        public var recordsTrace = false
        /// Remote calls: every node executes, the workload's callers call (nil: no calls).
        public var calls: CallWorkload? = nil

        public init(nodes: Int, seed: UInt64) {
            self.nodes = nodes
            self.seed = seed
        }
    }

    /// Something a run got wrong (a codec mismatch, a broken invariant), with what replays it:
    /// the seed, and the trace hash when it was found.
    public struct Failure: Sendable, Equatable, CustomStringConvertible {
        public var time: UInt64
        public var kind: String
        public var detail: String
        public var seed: UInt64
        public var traceHash: TraceHash

        public var description: String {
            "seed \(seed), trace hash \(traceHash), at \(Double(time) / 1e9) s: \(kind): \(detail)"
        }
    }

    /// A membership verdict or suspicion as a node reached it.
    public struct Verdict: Sendable, Hashable {
        public var time: UInt64
        public var observer: Int
        public var subject: Int
        public var dead: Bool
    }

    enum Event {
        case timer(node: Int, NodeTimer, at: UInt64)
        case linkUp(node: Int, link: LinkID, peer: Int, direction: LinkDirection, dialed: String?, features: UInt64 = 0)
        case dialFailed(node: Int, address: String)
        /// `thenReset`: the link resets once the message is handled.
        case message(node: Int, link: LinkID, from: Int, MembershipMessage, thenReset: Bool)
        case queueMessage(node: Int, link: LinkID, from: Int, QueueMessage, thenReset: Bool)
        /// A ping reaches `node`, which answers it with a pong when it runs.
        case ping(node: Int, link: LinkID)
        case heard(node: Int, link: LinkID)
        case linkDown(node: Int, link: LinkID, peerLeft: Bool, peerClosed: Bool = false)
        /// The end of a link that reset reports it (its state is already gone).
        case linkLost(node: Int, link: LinkID, wasUp: Bool, dialed: String?)
        case peerList(node: Int, link: LinkID, [PeerListEntry<PeerID, String>])
        /// A producer's next push (it picks its node).
        case produce(producer: Int)
        /// A consumer pops (its task is over, or it starts).
        case consume(node: Int, consumer: Int)
        /// The periodic membership invariant check.
        case check
        case callMessage(node: Int, link: LinkID, from: Int, RemoteCallMessage, thenReset: Bool)
        /// The end of the turn in which the node asked for ``NodeAction/flushCallsAtEndOfTurn``.
        case flushCalls(node: Int)
        /// A task of a node's executor ends (dropped when the node restarted since).
        case taskFinished(node: Int, TaskID, CallOutcome, incarnation: UInt64)
        /// A caller makes its next call (``CallWorkload``).
        case makeCall(caller: Int)

        /// The node that handles the event; nil for the simulation's own.
        var node: Int? {
            switch self {
            case .produce, .check, .makeCall:
                nil
            case .consume(let node, _):
                node
            case .timer(let node, _, _), .linkUp(let node, _, _, _, _, _), .dialFailed(let node, _),
                 .message(let node, _, _, _, _), .queueMessage(let node, _, _, _, _), .ping(let node, _),
                 .heard(let node, _), .linkDown(let node, _, _, _), .linkLost(let node, _, _, _), .peerList(let node, _, _),
                 .callMessage(let node, _, _, _, _), .flushCalls(let node), .taskFinished(let node, _, _, _):
                node
            }
        }
    }

    /// One end of a link: which node and link it leads to, whether the hellos are through,
    /// when the last message sent from this end arrives (the next one may not arrive earlier),
    /// and when its bytes queued for the node's egress have left (``NetworkConfiguration/egressBandwidth``).
    private struct End {
        var peer: Int
        var peerLink: LinkID
        var up = false
        var dialed: String? = nil
        var lastArrival: UInt64 = 0
        var sentUntil: UInt64 = 0
    }

    public let configuration: Configuration
    /// The network's latencies and faults now (``Configuration/network`` at the start).
    public var network: NetworkConfiguration
    public internal(set) var machines: [Machine]
    public private(set) var now: UInt64 = 0
    /// Every action, by node, in order (only with ``Configuration/recordsTrace``).
    public private(set) var trace: [(time: UInt64, node: Int, action: Action)] = []
    /// A hash of every action of every node, in order.
    public private(set) var traceHash = TraceHash()
    /// Every suspicion and death verdict, in order.
    public private(set) var verdicts: [Verdict] = []
    /// Items handed to waiting pops, by node and queue, in order.
    public private(set) var delivered: [Int: [String: [[UInt8]]]] = [:]
    /// Messages sent (membership, queue, ping, peer list), per node.
    public private(set) var messagesSent: [Int]
    /// Inputs processed.
    public private(set) var eventsProcessed = 0
    var events = EventQueue<Event>()
    private var deadlines: [[NodeTimer: UInt64]]
    private var ends: [[LinkID: End]]
    private var nextLink: [UInt64]
    private(set) var incarnations: [UInt64]
    private var seeds: SplitMix64
    /// Draws the network's delays and faults, apart from the nodes' seeds.
    private var random: SplitMix64
    /// Directions (sender, receiver) in which nothing gets through.
    private var cut: Set<[Int]> = []
    /// Links reset by ``NetworkConfiguration/resetProbability``,
    /// ``NetworkConfiguration/resetAfterDeliveryProbability`` or ``resetLink(between:and:)``.
    public private(set) var linkResets = 0
    /// Messages sent through the wire codec (``NetworkConfiguration/codecSampleRate``).
    public private(set) var codecSamples = 0
    /// What went wrong in the run (a codec mismatch, a broken invariant), in order.
    public internal(set) var failures: [Failure] = []
    /// Links reset whose ends have not heard of it yet, as [node, link]: what the node sends
    /// on one meanwhile vanishes, as on a reset socket.
    private var resetPending: Set<[UInt64]> = []
    /// Directions of links, as [sender, its link], that lost a message to a cut.
    private var silenced: Set<[UInt64]> = []
    public private(set) var crashed: Set<Int> = []
    public private(set) var paused: Set<Int> = []
    /// Nodes stopped gracefully (``stop(_:)``).
    public private(set) var stopped: Set<Int> = []
    var workload = WorkloadState()
    var calls = CallsState()
    /// Draws the consumers' task durations.
    var workloadRandom: SplitMix64
    /// What reached a paused node, in order, to be handled when it resumes.
    private var held: [Int: [Event]] = [:]
    private let indexByPeer: [PeerID: Int]
    /// Node `n`'s identity, made once.
    private let peers: [PeerID]

    /// The address of node `n` on the simulated network.
    public static func address(_ n: Int) -> String { "n\(n)" }

    /// The identity of node `n` (the same across its restarts).
    public static func peer(_ n: Int) -> PeerID {
        var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: 32)
        bytes[0] = UInt8(truncatingIfNeeded: n >> 8)
        bytes[1] = UInt8(truncatingIfNeeded: n >> 16)
        bytes[31] = 0x5A
        return PeerID(bytes: bytes)!
    }

    /// Node `n` of `peer`, if it is one of the simulation's.
    public func index(of peer: PeerID) -> Int? { indexByPeer[peer] }

    /// Starts every node at time 0: node 0 dials nobody, every other node bootstraps from node 0.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
        seeds = SplitMix64(seed: configuration.seed)
        random = SplitMix64(seed: configuration.seed ^ 0x6E65_7477_6F72_6B21)
        workloadRandom = SplitMix64(seed: configuration.seed ^ 0x776F_726B_6C6F_6164)
        network = configuration.network
        let size = configuration.nodes
        machines = []
        deadlines = Array(repeating: [:], count: size)
        ends = Array(repeating: [:], count: size)
        nextLink = Array(repeating: 1, count: size)
        incarnations = (0..<size).map { UInt64($0 + 1) * 1000 }
        messagesSent = Array(repeating: 0, count: size)
        peers = (0..<size).map { Self.peer($0) }
        indexByPeer = Dictionary(uniqueKeysWithValues: (0..<size).map { (Self.peer($0), $0) })
        machines = (0..<size).map { makeMachine($0) }
        for n in 0..<size { start(n) }
        startCallers()
        if let bounds = configuration.invariants { events.schedule(.check, at: bounds.checkInterval) }
    }

    private mutating func makeMachine(_ n: Int) -> Machine {
        Machine(configuration: NodeMachineConfiguration(
            localPeer: Self.peer(n), incarnation: incarnations[n], seed: seeds.next(),
            connection: configuration.connection, membership: configuration.membership, queue: configuration.queue))
    }

    private mutating func start(_ n: Int) {
        attachCalls(n)
        let actions = machines[n].start(advertising: Self.address(n), bootstrap: n == 0 ? [] : [Self.address(0)], now: now)
        perform(actions, at: n)
    }

    // MARK: Faults

    /// Cuts every link between `side` and the other nodes, both ways.
    public mutating func partition(_ side: Set<Int>) {
        for a in side {
            for b in 0..<machines.count where !side.contains(b) {
                cut.insert([a, b])
                cut.insert([b, a])
            }
        }
    }

    /// Cuts one way: nothing `senders` send reaches `receivers`, while the reverse gets through
    /// (a one-way firewall rule, a broken route).
    public mutating func cutOneWay(from senders: Set<Int>, to receivers: Set<Int>) {
        for a in senders { for b in receivers where a != b { cut.insert([a, b]) } }
    }

    /// The link between `a` and `b`, if there is one, resets: both ends see it drop and what is
    /// in flight on it vanishes.
    public mutating func resetLink(between a: Int, and b: Int) {
        guard let link = ends[a].first(where: { $0.value.peer == b })?.key else { return }
        reset(link, at: a)
    }

    /// Removes every cut.
    public mutating func heal() { cut.removeAll() }

    /// Node `n`'s process dies: it handles nothing more, and its peers' links to it close.
    public mutating func crash(_ n: Int) {
        guard !crashed.contains(n) else { return }
        crashed.insert(n)
        paused.remove(n)
        held[n] = nil
        deadlines[n] = [:]
        for link in ends[n].keys { ends[n][link]?.sentUntil = now }  // what it had queued dies with it: the resets go out at once
        for (link, end) in ends[n].sorted(by: { $0.key < $1.key }) where passes(from: n, on: link) {
            events.schedule(.linkDown(node: end.peer, link: end.peerLink, peerLeft: false), at: arrival(from: n, on: link))
        }
        ends[n] = [:]
        workloadCrashed(n)
        callerCrashed(n)
    }

    /// Node `n` stops processing (SIGSTOP) and keeps its state.
    public mutating func pause(_ n: Int) {
        guard !crashed.contains(n) else { return }
        paused.insert(n)
    }

    /// Node `n` processes again what reached it meanwhile, in order, then goes on.
    public mutating func resume(_ n: Int) {
        guard paused.remove(n) != nil else { return }
        for event in held.removeValue(forKey: n) ?? [] { events.schedule(event, at: now) }
    }

    /// A crashed node `n` starts again: the same identity, a new incarnation, empty queues.
    public mutating func restart(_ n: Int) {
        guard crashed.remove(n) != nil else { return }
        // A real node's incarnation is its start time in wall-clock nanoseconds, above every
        // incarnation and item sequence its earlier processes used (queues number items from
        // it); the simulated wall clock starts at 2^40 ns.
        incarnations[n] = max(incarnations[n] + 1, 1 << 40 + now)
        nextLink[n] += 1000  // links of the old process are never mistaken for new ones
        machines[n] = makeMachine(n)
        stopped.remove(n)
        start(n)
        workloadRestarted(n)
    }

    /// Node `n` stops gracefully (``NodeMachine/stop(now:)``).
    public mutating func stop(_ n: Int) {
        stopped.insert(n)
        perform(machines[n].stop(now: now), at: n)
    }

    /// Whether what `sender` sends cannot reach `receiver`.
    func isCut(_ sender: Int, _ receiver: Int) -> Bool { !cut.isEmpty && cut.contains([sender, receiver]) }

    /// Whether what `node` sends now on `link` gets through. Not across a cut; and a direction
    /// of a link that lost a message to a cut stays silent for good, since TCP never skips a
    /// message: its segments are retransmitted until the keepalive at the other end gives up.
    private mutating func passes(from node: Int, on link: LinkID) -> Bool {
        let key = [UInt64(node), link.rawValue]
        if !silenced.isEmpty && silenced.contains(key) { return false }
        guard let end = ends[node][link], isCut(node, end.peer) else { return true }
        silenced.insert(key)
        return false
    }

    // MARK: The network

    /// One delay of the link between `a` and `b`.
    private mutating func delay(_ a: Int, _ b: Int) -> UInt64 {
        network.latency(between: a, and: b).sample(&random)
    }

    /// When a message `node` sends now on `link` arrives: a drawn delay,
    /// perhaps a retransmission's stall, never before the message sent before it (TCP's order).
    private mutating func arrival(from node: Int, on link: LinkID, bytes: Int = 0) -> UInt64 {
        guard let end = ends[node][link] else { return now + configuration.latency }
        var departure = now
        if let rate = network.egress(of: node), rate > 0 {
            // Behind what this link queued before; the links with bytes still queued share the
            // egress equally, as a fair-queueing qdisc (Linux's default fq_codel) shares it.
            var sharing = 1
            for (other, otherEnd) in ends[node] where other != link && otherEnd.sentUntil > now { sharing += 1 }
            departure = max(now, end.sentUntil) + UInt64((Double(bytes) * Double(sharing) * 1e9 / Double(rate)).rounded(.up))
            ends[node][link]?.sentUntil = departure
        }
        var time = departure + delay(node, end.peer)
        if random.chance(network.stallProbability) { time += network.stallDelay }
        time = max(time, end.lastArrival)
        ends[node][link]?.lastArrival = time
        return time
    }

    /// The link resets (an RST, a dead NAT entry): both ends drop their state at once, so what
    /// is in flight on it vanishes, and each end hears of it after a delay.
    private mutating func reset(_ link: LinkID, at node: Int) {
        guard let mine = ends[node].removeValue(forKey: link) else { return }
        linkResets += 1
        resetPending.insert([UInt64(node), link.rawValue])
        events.schedule(.linkLost(node: node, link: link, wasUp: mine.up, dialed: mine.dialed), at: now + delay(node, mine.peer))
        if let theirs = ends[mine.peer].removeValue(forKey: mine.peerLink) {
            resetPending.insert([UInt64(mine.peer), mine.peerLink.rawValue])
            events.schedule(.linkLost(node: mine.peer, link: mine.peerLink, wasUp: theirs.up, dialed: theirs.dialed),
                            at: now + delay(node, mine.peer))
        }
    }

    /// Whether the message `node` is about to send on `link` is lost with the link (its reset
    /// is done), and whether the link resets once it has arrived.
    private mutating func linkFate(of link: LinkID, at node: Int) -> (lost: Bool, thenReset: Bool) {
        if random.chance(network.resetProbability) {
            reset(link, at: node)
            return (true, false)
        }
        return (false, random.chance(network.resetAfterDeliveryProbability))
    }

    /// `message` as the receiver would decode it from its wire bytes; a message that does not
    /// encode, decode, or encode again to the same bytes is a failure (and passes as a value).
    private mutating func throughCodec<Message: WireMessage & WireDecodable>(_ message: Message, maxFrameSize: Int) -> Message {
        codecSamples += 1
        var bytes: [UInt8] = []
        do {
            try MessageEncoder.encode(message, into: &bytes, maxFrameSize: maxFrameSize)
            let frames = try MessageDecoder.decodeAll(bytes, maxFrameSize: maxFrameSize)
            guard frames.count == 1 else {
                fail("codec", "\(Message.self) framed as \(frames.count) messages: \(message)")
                return message
            }
            let decoded = try Message.decode(frames[0])
            var again: [UInt8] = []
            try MessageEncoder.encode(decoded, into: &again, maxFrameSize: maxFrameSize)
            guard again == bytes else {
                fail("codec", "\(Message.self) decoded to other bytes: \(message) became \(decoded)")
                return message
            }
            return decoded
        } catch {
            fail("codec", "\(Message.self) \(bytes.isEmpty ? "did not encode" : "did not decode"): \(error): \(message)")
            return message
        }
    }

    /// Sends `message` from `node` on `link` the way every message travels: counted, then lost
    /// to a cut or a reset, or delivered by `arriving(receiver, its end of the link, the
    /// message as carried, whether the link then resets)` after the link's delay, some through
    /// the codec. False when there is no ready link to send it on (the sender hears it was
    /// undeliverable); a link whose reset its end has not heard of yet swallows it silently.
    private mutating func transmit<Message: WireMessage & WireDecodable>(
        _ message: Message, from node: Int, on link: LinkID?, maxFrameSize: Int,
        arriving: (Int, LinkID, Message, Bool) -> Event
    ) -> Bool {
        guard let link else { return false }
        if resetPending.contains([UInt64(node), link.rawValue]) { return true }
        guard let end = ends[node][link], end.up else { return false }
        messagesSent[node] += 1
        guard passes(from: node, on: link) else { return true }
        let fate = linkFate(of: link, at: node)
        guard !fate.lost else { return true }
        let carried = random.chance(network.codecSampleRate) ? throughCodec(message, maxFrameSize: maxFrameSize) : message
        let bytes = network.egress(of: node) == nil ? 0 : WireProtocol.messageHeaderSize + message.bodySize
        events.schedule(arriving(end.peer, end.peerLink, carried, fate.thenReset), at: arrival(from: node, on: link, bytes: bytes))
        return true
    }

    /// Records a failure with the seed and the trace hash so far.
    mutating func fail(_ kind: String, _ detail: String) {
        failures.append(Failure(time: now, kind: kind, detail: detail, seed: configuration.seed, traceHash: traceHash))
    }

    // MARK: Queues

    /// Node `n` pushes `items` into `queue`.
    public mutating func push(_ items: [[UInt8]], at n: Int, into queue: String) -> PushOutcome? {
        guard let (outcome, actions) = machines[n].push(items, into: queue, now: now) else { return nil }
        perform(actions, at: n)
        return outcome
    }

    /// Node `n` pops up to `max` items of `queue`, waiting as `waiter` if none is here; returns
    /// those popped at once (later ones go to ``delivered``).
    public mutating func pop(_ queue: String, at n: Int, max: Int, waiter: UInt64) -> [[UInt8]] {
        guard let (payloads, actions) = machines[n].pop(queue, max: max, waiter: WaiterID(waiter), now: now) else { return [] }
        let items = payloads.map { Array($0.bytes) }
        if !items.isEmpty && workload.queues.contains(queue) { countPops(items) }
        perform(actions, at: n)
        return items
    }

    // MARK: Running

    /// Handles every event due until `end`, then sets the clock to `end`.
    public mutating func run(until end: UInt64) {
        while let next = events.nextTime, next <= end, let (time, event) = events.pop() {
            now = time
            guard let node = event.node else {
                handle(event)
                continue
            }
            if crashed.contains(node) { continue }
            if paused.contains(node) {
                held[node, default: []].append(event)
                continue
            }
            eventsProcessed += 1
            handle(event)
            if workload.pending[node] != nil { completePushes(at: node) }
        }
        now = end
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .timer(let node, let timer, let at):
            guard deadlines[node][timer] == at else { return }  // re-armed or cancelled since
            deadlines[node][timer] = nil
            perform(machines[node].tick(timer, now: now), at: node)
        case .linkUp(let node, let link, let other, let direction, let dialed, let features):
            guard var end = ends[node][link] else { return }
            end.up = true
            ends[node][link] = end
            let actions = machines[node].linkUp(link, peer: peers[other], direction: direction,
                                                incarnation: incarnations[other],
                                                features: QueueWire.featureOwnershipHandover | QueueWire.featureReplicas
                                                    | WireProtocol.featureCallRuns | WireProtocol.featureResultRuns | features,
                                                peerAddress: Self.address(other), dialedAddress: dialed, now: now)
            perform(actions, at: node)
        case .dialFailed(let node, let address):
            perform(machines[node].dialFailed(address, now: now), at: node)
        case .message(let node, let link, let from, let message, let thenReset):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peers[from], now: now), at: node)
            if thenReset { reset(link, at: node) }
        case .queueMessage(let node, let link, let from, let message, let thenReset):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peers[from], now: now), at: node)
            if thenReset { reset(link, at: node) }
        case .ping(let node, let link):
            guard let end = ends[node][link] else { return }
            machines[node].heard(link, now: now)
            if passes(from: node, on: link) { events.schedule(.heard(node: end.peer, link: end.peerLink), at: arrival(from: node, on: link)) }
        case .heard(let node, let link):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
        case .peerList(let node, let link, let entries):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].peerListReceived(entries, on: link, now: now), at: node)
        case .linkDown(let node, let link, let peerLeft, let peerClosed):
            guard let end = ends[node].removeValue(forKey: link) else { return }
            if end.up { perform(machines[node].linkDown(link, peerLeft: peerLeft, peerClosed: peerClosed, now: now), at: node) }
        case .produce(let producer):
            produce(producer)
        case .consume(_, let consumer):
            consume(consumer)
        case .check:
            if let bounds = configuration.invariants { checkDeadMembers(bounds) }
        case .callMessage(let node, let link, let from, let message, let thenReset):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            let wall: UInt64 = switch message {
            case .direct, .directRun: wallClock
            case .results, .started, .cancel, .credit, .resultRun: 0
            }
            perform(machines[node].received(message, from: peers[from], now: now, wallClock: wall), at: node)
            if thenReset { reset(link, at: node) }
        case .flushCalls(let node):
            perform(machines[node].flushCalls(now: now, wallClock: wallClock), at: node)
        case .taskFinished(let node, let task, let outcome, let incarnation):
            guard incarnations[node] == incarnation else { return }
            perform(machines[node].callsFinished([(task, outcome)], now: now), at: node)
        case .makeCall(let caller):
            makeCall(caller)
        case .linkLost(let node, let link, let wasUp, let dialed):
            resetPending.remove([UInt64(node), link.rawValue])
            // A dial whose link reset before its hellos fails, as its handshake would.
            if wasUp {
                perform(machines[node].linkDown(link, peerLeft: false, now: now), at: node)
            } else if let dialed {
                perform(machines[node].dialFailed(dialed, now: now), at: node)
            }
        }
    }

    mutating func perform(_ actions: [Action], at node: Int) {
        for action in actions {
            record(action, at: node)
            switch action {
            case .dial(let address):
                // A paused node answers no handshake: the dial fails, as its timeout would.
                guard let other = Int(address.dropFirst()), other < machines.count, other != node, !isCut(node, other),
                      !isCut(other, node), !crashed.contains(other), !paused.contains(other) else {
                    events.schedule(.dialFailed(node: node, address: address), at: now + configuration.latency)
                    continue
                }
                let mine = LinkID(nextLink[node]), theirs = LinkID(nextLink[other])
                nextLink[node] += 1
                nextLink[other] += 1
                // The handshake's round trip, then the dialer's hello, then the acceptor's: each
                // side's first message comes after the hello it sends on its link.
                let acceptorUp = now + delay(node, other) + delay(node, other)
                let dialerUp = acceptorUp + delay(node, other)
                ends[node][mine] = End(peer: other, peerLink: theirs, dialed: address, lastArrival: acceptorUp)
                ends[other][theirs] = End(peer: node, peerLink: mine, lastArrival: dialerUp)
                // The dialer's hello says whether it is short of links (as it was when it dialed).
                events.schedule(.linkUp(node: other, link: theirs, peer: node, direction: .inbound, dialed: nil,
                                        features: machines[node].dialFeatures), at: acceptorUp)
                events.schedule(.linkUp(node: node, link: mine, peer: other, direction: .outbound, dialed: address), at: dialerUp)
            case .closeLink(let link, let reason):
                guard let end = ends[node][link] else { continue }
                events.schedule(.linkDown(node: node, link: link, peerLeft: false), at: now)
                if passes(from: node, on: link) {
                    // The peer hears the goodbye a real link says (``LinkMachine/close(_:)``).
                    let goodbye = LinkMachine.goodbye(for: reason)
                    events.schedule(.linkDown(node: end.peer, link: end.peerLink, peerLeft: goodbye.map(LinkMachine.leaves) ?? false,
                                              peerClosed: goodbye.map(LinkMachine.closesAlive) ?? false),
                                    at: arrival(from: node, on: link))
                }
            case .sendPing(let link, _):
                guard let end = ends[node][link], end.up else { continue }
                messagesSent[node] += 1
                guard passes(from: node, on: link) else { continue }
                events.schedule(.ping(node: end.peer, link: end.peerLink), at: arrival(from: node, on: link))
            case .sendPeerList(let link, let entries):
                guard let end = ends[node][link], end.up else { continue }
                messagesSent[node] += 1
                guard passes(from: node, on: link) else { continue }
                events.schedule(.peerList(node: end.peer, link: end.peerLink, entries), at: arrival(from: node, on: link))
            case .send(let message, let to, let link):
                let sent = transmit(message, from: node, on: link, maxFrameSize: WireProtocol.defaultMaxFrameSize) {
                    .message(node: $0, link: $1, from: node, $2, thenReset: $3)
                }
                if !sent { perform(machines[node].undeliverable(message, to: to, now: now), at: node) }
            case .armTimer(let timer, let at):
                deadlines[node][timer] = at
                events.schedule(.timer(node: node, timer, at: at), at: max(at, now))
            case .cancelTimer(let timer):
                deadlines[node][timer] = nil
            case .queue(_, .send(let message, let to)):
                let sent = transmit(message, from: node, on: machines[node].link(to: to), maxFrameSize: configuration.queue.maxFrameSize) {
                    .queueMessage(node: $0, link: $1, from: node, $2, thenReset: $3)
                }
                if !sent { perform(machines[node].sendFailed(message, to: to, now: now), at: node) }
            case .queue(let name, .armTimer(let at)):
                deadlines[node][.queue(name)] = at
                events.schedule(.timer(node: node, .queue(name), at: at), at: max(at, now))
            case .queue(let name, .deliver(let waiter, let payloads)):
                let items = payloads.map { Array($0.bytes) }
                delivered[node, default: [:]][name, default: []].append(contentsOf: items)
                delivered(items, of: name, to: waiter, at: node)
            case .queue(_, .fail(let waiter, _)):
                popFailed(waiter, at: node)
            case .member(let event):
                switch event {
                case .suspect(let peer): if let subject = index(of: peer) { verdicts.append(Verdict(time: now, observer: node, subject: subject, dead: false)) }
                case .dead(let peer): if let subject = index(of: peer) { verdicts.append(Verdict(time: now, observer: node, subject: subject, dead: true)) }
                case .joined, .restarted, .alive, .left, .refutedDeath: break
                }
            case .queue, .deadLettered, .peerConnected, .peerMovedLink, .peerDisconnected:
                break  // in the trace
            case .sendCall(let message, let to):
                let sent = transmit(message, from: node, on: machines[node].link(to: to), maxFrameSize: WireProtocol.defaultMaxFrameSize) {
                    .callMessage(node: $0, link: $1, from: node, $2, thenReset: $3)
                }
                if !sent { perform(machines[node].callMessageUndeliverable(message, to: to, now: now), at: node) }
            case .flushCallsAtEndOfTurn:
                events.schedule(.flushCalls(node: node), at: now)  // after the events already due now
            case .completeCalls(let ended):
                callsCompleted(ended, at: node)
            case .runTasks(let tasks):
                runCallTasks(tasks, at: node)
            case .cancelTask, .callItemDiscarded:
                break  // an echo ends anyway; in the trace
            case .admitLink, .sendLinkMessage, .closeConnection, .linkNote, .linkReady, .dialFailedNote, .admissionReport:
                break  // the simulated links have no stages in the machine (it hears linkUp and linkDown)
            }
        }
    }

    /// Adds `action` to the hash (``TraceHash/add(_:number:)``) and, if kept, the trace.
    private mutating func record(_ action: Action, at node: Int) {
        if configuration.recordsTrace { trace.append((now, node, action)) }
        traceHash.add(now)
        traceHash.add(node)
        let numbers = indexByPeer  // not self: traceHash is being modified
        traceHash.add(action) { numbers[$0] ?? -1 }
    }

    private func number(_ peer: PeerID) -> Int { indexByPeer[peer] ?? -1 }


    /// The actions of `node` that `matches` selects (needs ``Configuration/recordsTrace``).
    public func actions(of node: Int, where matches: (Action) -> Bool) -> [Action] {
        trace.filter { $0.node == node && matches($0.action) }.map(\.action)
    }

    /// When `node` first returned an action that `matches` selects (needs the trace).
    public func firstTime(of node: Int, where matches: (Action) -> Bool) -> UInt64? {
        trace.first { $0.node == node && matches($0.action) }?.time
    }
}
