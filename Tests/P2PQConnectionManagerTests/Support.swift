import P2PQConnectionManager
import P2PQTestSupport

typealias TestManager = ConnectionMachine<Int, String>
typealias Action = ConnectionAction<Int, String>
typealias Entry = PeerListEntry<Int, String>

let ms: UInt64 = 1_000_000
let second: UInt64 = 1_000_000_000

func address(_ node: Int) -> String { "node-\(node)" }

func makeManager(
    _ id: Int, configuration: ConnectionConfiguration = ConnectionConfiguration(), seed: UInt64 = 1
) -> TestManager {
    TestManager(
        localPeerID: id, advertisedAddress: address(id), configuration: configuration,
        randomNumberGenerator: SplitMix64(seed: seed)
    )
}

extension TestManager {
    /// The peer-table row for an address that is not connected.
    func record(at address: String) -> PeerRecord<Int, String>? {
        peers.first { $0.address == address && $0.state != .connected }
    }

    func backoffDeadline(of address: String) -> UInt64? {
        if case .backoff(let until)? = record(at: address)?.state { return until }
        return nil
    }
}

extension Array where Element == Action {
    var dials: [String] {
        compactMap { if case .dial(let address) = $0 { address } else { nil } }
    }

    var closes: [(LinkID, LinkCloseReason)] {
        compactMap { if case .closeLink(let link, let reason) = $0 { (link, reason) } else { nil } }
    }

    var disconnects: [Int] {
        compactMap { if case .peerDisconnected(let peer, _) = $0 { peer } else { nil } }
    }

    var connects: [Int] {
        compactMap { if case .peerConnected(let peer, _) = $0 { peer } else { nil } }
    }
}

/// One end of a simulated TCP connection.
struct Endpoint: Hashable {
    var node: Int
    var link: LinkID
}

/// A deterministic in-process network of managers: a queue of timed events, per-connection
/// FIFO delivery with seeded random latency (0 = instant), and each node's single timer.
/// Node `i` listens at `address(i)`; its PeerID is `i`.
struct Simulator {
    enum Event {
        case linkUp(Endpoint, peer: Int, direction: LinkDirection, dialed: String?)
        case linkDown(Endpoint, peerLeft: Bool)
        case peerList(Endpoint, [Entry])
        case heard(Endpoint)
        case dialFailed(node: Int, address: String)
    }

    var managers: [TestManager]
    var timers: [UInt64?]
    var alive: [Bool]
    /// Every action each node emitted, in order.
    var log: [[Action]]
    var now: UInt64 = 0
    private var rng: SplitMix64
    private let maxLatency: UInt64
    private var queue: [(time: UInt64, seq: UInt64, event: Event)] = []
    private var seq: UInt64 = 0
    private var lastDelivery: [Endpoint: UInt64] = [:]
    /// Open connections, both directions.
    private(set) var remote: [Endpoint: Endpoint] = [:]
    private var nextLink: UInt64 = 1

    init(nodes: Int, seed: UInt64, maxLatency: UInt64, configuration: ConnectionConfiguration = .init()) {
        managers = (0..<nodes).map { makeManager($0, configuration: configuration, seed: seed &* 31 &+ UInt64($0)) }
        timers = Array(repeating: nil, count: nodes)
        alive = Array(repeating: true, count: nodes)
        log = Array(repeating: [], count: nodes)
        rng = SplitMix64(seed: seed)
        self.maxLatency = maxLatency
    }

    mutating func start(_ node: Int, bootstrap: [String]) {
        apply(node, managers[node].start(bootstrap: bootstrap, now: now))
    }

    private mutating func latency() -> UInt64 {
        maxLatency == 0 ? 0 : rng.next() % (maxLatency + 1)
    }

    private mutating func enqueue(_ event: Event, at time: UInt64) {
        queue.append((time, seq, event))
        seq += 1
    }

    /// Delivers to `endpoint` no earlier than anything already sent to it (TCP keeps order).
    private mutating func deliver(_ event: Event, to endpoint: Endpoint) {
        let time = max(now + latency(), lastDelivery[endpoint] ?? 0)
        lastDelivery[endpoint] = time
        enqueue(event, at: time)
    }

    /// Performs a node's actions, as its shell would.
    mutating func apply(_ node: Int, _ actions: [Action]) {
        log[node] += actions
        for action in actions {
            switch action {
            case .dial(let target):
                guard let peer = Int(target.dropFirst(5)), peer < managers.count, alive[peer] else {
                    enqueue(.dialFailed(node: node, address: target), at: now + latency())
                    continue
                }
                let local = Endpoint(node: node, link: LinkID(nextLink))
                let far = Endpoint(node: peer, link: LinkID(nextLink + 1))
                nextLink += 2
                remote[local] = far
                remote[far] = local
                deliver(.linkUp(local, peer: peer, direction: .outbound, dialed: target), to: local)
                deliver(.linkUp(far, peer: node, direction: .inbound, dialed: nil), to: far)
            case .closeLink(let link, let reason):
                let local = Endpoint(node: node, link: link)
                guard let far = remote.removeValue(forKey: local) else { continue }
                remote[far] = nil
                deliver(.linkDown(local, peerLeft: false), to: local)
                deliver(.linkDown(far, peerLeft: reason == .leaving), to: far)
            case .sendPing(let link):
                let local = Endpoint(node: node, link: link)
                guard let far = remote[local] else { continue }
                deliver(.heard(far), to: far)
                deliver(.heard(local), to: local)  // the pong
            case .sendPeerList(let link, let entries):
                guard let far = remote[Endpoint(node: node, link: link)] else { continue }
                deliver(.peerList(far, entries), to: far)
            case .armTimer(let at):
                timers[node] = at
            case .cancelTimer:
                timers[node] = nil
            case .peerConnected, .peerLinkChanged, .peerDisconnected:
                break
            }
        }
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .linkUp(let end, let peer, let direction, let dialed):
            guard alive[end.node] else { return }
            apply(end.node, managers[end.node].linkUp(
                link: end.link, peer: peer, direction: direction, peerAddress: address(peer),
                dialedAddress: dialed, now: now))
        case .linkDown(let end, let peerLeft):
            guard alive[end.node] else { return }
            apply(end.node, managers[end.node].linkDown(link: end.link, now: now, peerLeft: peerLeft))
        case .peerList(let end, let entries):
            guard alive[end.node] else { return }
            managers[end.node].heard(link: end.link, now: now)
            apply(end.node, managers[end.node].peerListReceived(from: end.link, entries: entries, now: now))
        case .heard(let end):
            guard alive[end.node] else { return }
            managers[end.node].heard(link: end.link, now: now)
        case .dialFailed(let node, let target):
            guard alive[node] else { return }
            apply(node, managers[node].dialFailed(address: target, now: now))
        }
    }

    /// Runs events and timers in time order until nothing is left before `horizon`.
    mutating func run(until horizon: UInt64) {
        while true {
            let nextEvent = queue.indices.min { (queue[$0].time, queue[$0].seq) < (queue[$1].time, queue[$1].seq) }
            let nextTimer = timers.indices.filter { timers[$0] != nil && alive[$0] }
                .min { (timers[$0]!, $0) < (timers[$1]!, $1) }
            let eventTime = nextEvent.map { queue[$0].time }
            let timerTime = nextTimer.map { timers[$0]! }
            if let eventTime, let nextEvent, timerTime.map({ eventTime <= $0 }) ?? true {
                guard eventTime <= horizon else { break }
                now = max(now, eventTime)
                handle(queue.remove(at: nextEvent).event)
            } else if let timerTime, let nextTimer {
                guard timerTime <= horizon else { break }
                now = max(now, timerTime)
                timers[nextTimer] = nil
                apply(nextTimer, managers[nextTimer].tick(now: now))
            } else {
                break
            }
        }
        now = max(now, horizon)
    }

    /// Number of open connections (each counted once).
    var openConnections: Int { remote.count / 2 }

    /// Whether `a` and `b` keep the two ends of one open connection.
    func linked(_ a: Int, _ b: Int) -> Bool {
        guard let la = managers[a].link(to: b), let lb = managers[b].link(to: a) else { return false }
        return remote[Endpoint(node: a, link: la)] == Endpoint(node: b, link: lb)
    }

    /// Checks that, per node and peer, `peerConnected` and `peerDisconnected` alternate and end
    /// in the manager's current state. Returns a description of the first violation.
    func eventPairingViolation() -> String? {
        for node in managers.indices {
            var connected: [Int: LinkID] = [:]
            for action in log[node] {
                switch action {
                case .peerConnected(let peer, let link):
                    if connected[peer] != nil { return "node \(node): \(peer) connected twice" }
                    connected[peer] = link
                case .peerLinkChanged(let peer, let from, let to):
                    if connected[peer] != from { return "node \(node): \(peer) changed from a link it was not on" }
                    connected[peer] = to
                case .peerDisconnected(let peer, _):
                    if connected[peer] == nil { return "node \(node): \(peer) disconnected while not connected" }
                    connected[peer] = nil
                default:
                    break
                }
            }
            for (peer, link) in connected where managers[node].link(to: peer) != link {
                return "node \(node): events say \(peer) is on \(link), manager disagrees"
            }
            if connected.count != managers[node].connectedPeerCount {
                return "node \(node): events and manager disagree on the peer count"
            }
        }
        return nil
    }
}
