import P2PQMembership
import P2PQWire

/// The cluster as one node sees it, over the last few minutes: what the operations endpoint
/// serves at `/dashboard.json` and streams to the dashboard page (docs/operations.md).
///
/// Every series is aligned with ``times``: one value per sample (once a second), oldest first;
/// `null` where the value was not known at that sample.
public struct DashboardSnapshot: Sendable, Codable, Equatable {
    /// A member of the cluster (this node included, as `self`).
    public struct Member: Sendable, Codable, Equatable {
        public var peerID: String
        /// The address to dial it, when known.
        public var address: String?
        /// SWIM state: `alive`, `suspect`, `dead`, `left`; `self` for this node.
        public var state: String
        /// Its incarnation as this node knows it.
        public var incarnation: UInt64?
        /// This node's link to it: `connected`, `connecting`, `backoff`, `failed`, `none`
        /// (no link, no dial); `self` for this node.
        public var link: String
        /// Seconds since its link last carried anything.
        public var secondsSinceHeard: Double?
        /// Its operations endpoint (`host:port`), when it told this node.
        public var operations: String?
    }

    /// One queue on one node.
    public struct QueueSeries: Sendable, Codable, Equatable {
        public var queue: String
        /// The node holding the items.
        public var peerID: String
        /// Items queued there at the last sample (for peers: their last fresh load report).
        public var length: Int?
        /// Items popped per second there (for peers: their reported service rate).
        public var popsPerSecond: Double?
        /// Seconds until its queue is empty at that rate; nil when nothing is popped.
        public var finishSeconds: Double?
        public var lengths: [Int?]
        public var pops: [Double?]
    }

    /// Items moved from one node to another per second (acknowledged transfers, all queues).
    public struct Flow: Sendable, Codable, Equatable {
        public var from: String
        public var to: String
        /// At the last sample.
        public var itemsPerSecond: Double
        public var series: [Double?]
    }

    /// Remote calls on one node.
    public struct Calls: Sendable, Codable, Equatable {
        public var peerID: String
        /// Calls made here and not answered yet.
        public var inFlight: Int
        public var madePerSecond: Double
        public var executedPerSecond: Double
        public var executed: [Double?]
        /// Calls executed here since start, per function, and how long they took.
        public var functions: [FunctionLatency]?
    }

    /// Latency percentiles of one function's calls executed on a node, from a histogram of
    /// powers of two: each value is the upper bound of its bucket (so within a factor of 2).
    public struct FunctionLatency: Sendable, Codable, Equatable {
        public var function: String
        public var count: UInt64
        public var p50Milliseconds: Double
        public var p90Milliseconds: Double
        public var p99Milliseconds: Double
    }

    /// Something that happened: `joined`, `suspect`, `dead`, `refuted`, `left`, `refused`
    /// (a connection refused before it became a link), `requeued`, `duplicates`.
    public struct Event: Sendable, Codable, Equatable {
        /// Unix time, seconds.
        public var at: Double
        public var kind: String
        public var peerID: String?
        public var detail: String
    }

    /// This node.
    public var peerID: String
    /// The sample times (Unix seconds), oldest first.
    public var times: [Double]
    /// Seconds between samples.
    public var sampleInterval: Double
    public var members: [Member]
    public var queues: [QueueSeries]
    public var flows: [Flow]
    public var calls: [Calls]
    /// The most recent last.
    public var events: [Event]
    /// The members whose own dashboards were pulled into this one (their queue lines, flows
    /// from them and calls are as they measured them); nil without pulling.
    public var pulled: [String]?

    public init(peerID: String, times: [Double], sampleInterval: Double, members: [Member], queues: [QueueSeries],
                flows: [Flow], calls: [Calls], events: [Event]) {
        self.peerID = peerID
        self.times = times
        self.sampleInterval = sampleInterval
        self.members = members
        self.queues = queues
        self.flows = flows
        self.calls = calls
        self.events = events
    }
}

/// A bounded ring: the newest `capacity` values, oldest first.
struct Ring<Element: Sendable>: Sendable {
    let capacity: Int
    private var storage: [Element] = []
    private var head = 0

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        storage.reserveCapacity(self.capacity)
    }

    mutating func append(_ element: Element) {
        if storage.count < capacity {
            storage.append(element)
        } else {
            storage[head] = element
            head = (head + 1) % capacity
        }
    }

    var count: Int { storage.count }
    var elements: [Element] { Array(storage[head...] + storage[..<head]) }
    var last: Element? { storage.isEmpty ? nil : storage[(head + storage.count - 1) % storage.count] }
}

/// What the node's shell reads from its machines once per sample (totals only: nothing is
/// counted per item for the dashboard).
struct DashboardInput {
    struct Queue {
        var length: Int
        /// Items popped here since start.
        var popped: Int
        var requeued: Int
        var duplicates: Int
        var peers: [(peer: PeerID, length: Int, rate: Double, finishTime: Double)]
        var transferredOut: [PeerID: Int]
        var transferredIn: [PeerID: Int]
    }
    /// Monotonic nanoseconds, and the wall clock (Unix seconds) at the same moment.
    var now: UInt64
    var wall: Double
    var queues: [String: Queue]
    var callsMade: Int
    var callsExecuted: Int
    var callsInFlight: Int
}

/// The dashboard's history: a ring of samples per node and events, fed once a second by the
/// shell (sans-I/O: times come in, nothing is read here).
struct DashboardHistory: Sendable {
    /// Samples kept (five minutes at one a second).
    static let defaultCapacity = 300
    /// Events kept.
    static let eventCapacity = 100
    /// Queues followed per node (by name); beyond, a queue is left off the dashboard.
    static let maxQueues = 16

    struct QueuePoint: Equatable, Sendable {
        var length: Int
        var pops: Double
        var finish: Double?
    }
    struct Frame: Sendable {
        var wall: Double
        /// Queue name, then node.
        var queues: [String: [PeerID: QueuePoint]] = [:]
        var flows: [Pair: Double] = [:]
        var callsExecuted: Double = 0
        var callsMade: Double = 0
        var callsInFlight = 0
    }
    struct Pair: Hashable, Sendable {
        var from: PeerID
        var to: PeerID
    }
    struct Totals: Sendable {
        var now: UInt64
        var popped: [String: Int] = [:]
        var requeued: [String: Int] = [:]
        var duplicates: [String: Int] = [:]
        var out: [PeerID: Int] = [:]
        var into: [PeerID: Int] = [:]
        var callsMade = 0
        var callsExecuted = 0
    }

    let local: PeerID
    private(set) var frames: Ring<Frame>
    private(set) var events: Ring<DashboardSnapshot.Event>
    private var last: Totals?

    /// `start`: when the totals were zero (the node's start), so that the first sample's rates
    /// count what happened before it.
    init(local: PeerID, start: UInt64, capacity: Int = Self.defaultCapacity) {
        self.local = local
        frames = Ring(capacity: capacity)
        events = Ring(capacity: Self.eventCapacity)
        last = Totals(now: start)
    }

    mutating func note(_ kind: String, peer: PeerID?, _ detail: String, wall: Double) {
        events.append(DashboardSnapshot.Event(at: wall, kind: kind, peerID: peer?.description, detail: detail))
    }

    /// Takes one sample: rates are the growth of the totals since the previous one.
    mutating func sample(_ input: DashboardInput) {
        var totals = Totals(now: input.now, callsMade: input.callsMade, callsExecuted: input.callsExecuted)
        var frame = Frame(wall: input.wall)
        let seconds = last.map { input.now > $0.now ? Double(input.now - $0.now) / 1e9 : 0 } ?? 0
        func rate(_ value: Int, _ previous: Int?) -> Double {
            guard seconds > 0, let previous, value >= previous else { return 0 }
            return Double(value - previous) / seconds
        }
        for name in input.queues.keys.sorted().prefix(Self.maxQueues) {
            let queue = input.queues[name]!
            totals.popped[name] = queue.popped
            totals.requeued[name] = queue.requeued
            totals.duplicates[name] = queue.duplicates
            for (peer, count) in queue.transferredOut { totals.out[peer, default: 0] += count }
            for (peer, count) in queue.transferredIn { totals.into[peer, default: 0] += count }
            let pops = rate(queue.popped, last?.popped[name])
            var points: [PeerID: QueuePoint] = [local: QueuePoint(
                length: queue.length, pops: pops, finish: pops > 0 ? Double(queue.length) / pops : nil)]
            for load in queue.peers {
                points[load.peer] = QueuePoint(length: load.length, pops: load.rate, finish: load.rate > 0 ? load.finishTime : nil)
            }
            frame.queues[name] = points
            if let last {
                let requeued = queue.requeued - (last.requeued[name] ?? 0)
                if requeued > 0 { note("requeued", peer: nil, "\(requeued) items of \(name) re-queued (their holder died)", wall: input.wall) }
                let duplicates = queue.duplicates - (last.duplicates[name] ?? 0)
                if duplicates > 0 { note("duplicates", peer: nil, "\(duplicates) duplicate deliveries of \(name)", wall: input.wall) }
            }
        }
        for (peer, count) in totals.out { frame.flows[Pair(from: local, to: peer)] = rate(count, last?.out[peer] ?? (last == nil ? nil : 0)) }
        for (peer, count) in totals.into { frame.flows[Pair(from: peer, to: local)] = rate(count, last?.into[peer] ?? (last == nil ? nil : 0)) }
        frame.callsMade = rate(input.callsMade, last?.callsMade)
        frame.callsExecuted = rate(input.callsExecuted, last?.callsExecuted)
        frame.callsInFlight = input.callsInFlight
        frames.append(frame)
        last = totals
    }

    /// The snapshot of the history, with the members as the shell reports them.
    func snapshot(members: [DashboardSnapshot.Member], interval: Double) -> DashboardSnapshot {
        let frames = self.frames.elements
        var queueKeys: Set<QueueKey> = []
        var pairs: Set<Pair> = []
        for frame in frames {
            for (name, points) in frame.queues { for peer in points.keys { queueKeys.insert(QueueKey(name: name, peer: peer)) } }
            pairs.formUnion(frame.flows.keys)
        }
        let queues = queueKeys.sorted().map { key -> DashboardSnapshot.QueueSeries in
            let points = frames.map { $0.queues[key.name]?[key.peer] }
            let latest = frames.last?.queues[key.name]?[key.peer]
            return DashboardSnapshot.QueueSeries(
                queue: key.name, peerID: key.peer.description, length: latest?.length, popsPerSecond: latest?.pops,
                finishSeconds: latest?.finish, lengths: points.map { $0?.length }, pops: points.map { $0?.pops })
        }
        let flows = pairs.sorted { ($0.from, $0.to) < ($1.from, $1.to) }.map { pair in
            DashboardSnapshot.Flow(from: pair.from.description, to: pair.to.description,
                                   itemsPerSecond: frames.last?.flows[pair] ?? 0, series: frames.map { $0.flows[pair] })
        }
        let calls = DashboardSnapshot.Calls(
            peerID: local.description, inFlight: frames.last?.callsInFlight ?? 0, madePerSecond: frames.last?.callsMade ?? 0,
            executedPerSecond: frames.last?.callsExecuted ?? 0, executed: frames.map { $0.callsExecuted })
        return DashboardSnapshot(peerID: local.description, times: frames.map(\.wall), sampleInterval: interval, members: members,
                                 queues: queues, flows: flows, calls: [calls], events: events.elements)
    }

    struct QueueKey: Hashable, Comparable {
        var name: String
        var peer: PeerID
        static func < (a: QueueKey, b: QueueKey) -> Bool { (a.name, a.peer) < (b.name, b.peer) }
    }
}

// MARK: The shell's side

extension NodeCore {
    /// Unix time in seconds (for the dashboard's times; the machines use the monotonic clock).
    var wallSeconds: Double { Double(environment.wallNanoseconds()) / 1e9 }

    /// One dashboard sample: the machines' totals, read once a second by the metrics timer.
    func sampleDashboard() {
        dashboard.sample(DashboardInput(
            now: now, wall: wallSeconds, queues: queues.dashboardInput(), callsMade: metrics.callsMade,
            callsExecuted: metrics.callsExecuted, callsInFlight: remoteCalls?.callsInFlight ?? 0))
    }

    /// Membership verdicts and refused connections go to the dashboard's recent events (they
    /// are rare: no per-item cost).
    func noteForDashboard(_ event: NodeEvent) {
        let wall = wallSeconds
        switch event {
        case .memberJoined(let peer): dashboard.note("joined", peer: peer, "\(peer.short) joined", wall: wall)
        case .memberSuspected(let peer): dashboard.note("suspect", peer: peer, "\(peer.short) is suspected", wall: wall)
        case .memberAlive(let peer): dashboard.note("refuted", peer: peer, "\(peer.short) refuted a suspicion", wall: wall)
        case .memberDead(let peer): dashboard.note("dead", peer: peer, "\(peer.short) was declared dead", wall: wall)
        case .memberLeft(let peer): dashboard.note("left", peer: peer, "\(peer.short) left", wall: wall)
        case .linkRejected(let remote, let reason):
            dashboard.note("refused", peer: nil, "refused a connection from \(remote): \(reason.prefix(200))", wall: wall)
        case .peerConnected, .peerDisconnected: break
        }
    }

    /// What a dashboard snapshot is built from, taken on the reactor: the history (a copy
    /// of its rings shares their storage until the next sample), the members and the call
    /// latencies. The series are built by ``DashboardParts/build()`` off the reactor.
    func dashboardParts() -> DashboardParts {
        var links: [PeerID: PeerStatus] = [:]
        for status in peerStatuses { if let peer = status.peerID { links[peer] = status } }
        var operations: [PeerID: String] = [:]
        for link in readyLinks { if let address = link.remoteOperations { operations[link.remotePeerID!] = address } }
        let own = operationsAddress.map { $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)" }
        var members = [DashboardSnapshot.Member(
            peerID: identity.peerID.description, address: advertised.description, state: "self", incarnation: incarnation,
            link: "self", secondsSinceHeard: nil, operations: own)]
        var listed: Set<PeerID> = [identity.peerID]
        for member in membership?.members ?? [] where listed.insert(member.peer).inserted {
            let link = links[member.peer]
            members.append(DashboardSnapshot.Member(
                peerID: member.peer.description, address: link?.address?.description, state: member.state.rawValue,
                incarnation: member.incarnation, link: link?.state.rawValue ?? "none", secondsSinceHeard: link?.secondsSinceHeard,
                operations: operations[member.peer]))
        }
        for (peer, link) in links.sorted(by: { $0.key < $1.key }) where listed.insert(peer).inserted {
            members.append(DashboardSnapshot.Member(
                peerID: peer.description, address: link.address?.description, state: link.membership?.rawValue ?? "unknown",
                incarnation: nil, link: link.state.rawValue, secondsSinceHeard: link.secondsSinceHeard, operations: operations[peer]))
        }
        // The summary is small (at most 64 functions of 40 buckets); the history is shared.
        let latencies = remoteCalls?.latencies.summary().map {
            DashboardSnapshot.FunctionLatency(function: $0.function, count: $0.count, p50Milliseconds: $0.p50,
                                              p90Milliseconds: $0.p90, p99Milliseconds: $0.p99)
        }
        return DashboardParts(history: dashboard, members: members, latencies: latencies,
                              interval: Double(Self.metricsInterval.components.seconds))
    }
}

/// See ``NodeCore/dashboardParts()``.
struct DashboardParts: Sendable {
    var history: DashboardHistory
    var members: [DashboardSnapshot.Member]
    var latencies: [DashboardSnapshot.FunctionLatency]?
    var interval: Double

    func build() -> DashboardSnapshot {
        var snapshot = history.snapshot(members: members, interval: interval)
        if let latencies, !snapshot.calls.isEmpty { snapshot.calls[0].functions = latencies }
        return snapshot
    }
}

extension Node {
    /// Tells peers where this node's operations endpoint listens (an empty or unspecified
    /// host means "the address my links come from"), so that their dashboards can pull from
    /// it. Sent to peers whose hello has feature bit 2 (``OperationsEndpoint`` calls it when it
    /// starts).
    public func advertiseOperations(host: String, port: UInt16) async {
        _ = await withCore { core in
            core.perform(core.machine.advertiseOperations(host: host, port: port, now: core.now))
        }
    }

    /// The cluster as this node sees it over the last few minutes (members, queue lengths and
    /// pop rates per node, flows, calls, recent events); nil when the node is not running.
    /// Sampled once a second; what `/dashboard.json` serves.
    public func dashboard() async -> DashboardSnapshot? {
        // The series are built on the caller's thread: the reactor only copies the rings.
        await withCore { $0.dashboardParts() }?.build()
    }
}
