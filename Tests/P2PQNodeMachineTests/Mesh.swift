import P2PQConnectionManager
import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQTestSupport
import P2PQWire

let ms: UInt64 = 1_000_000
let second: UInt64 = 1_000_000_000

/// A deterministic PeerID for node `n`.
func peer(_ n: Int) -> PeerID {
    var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: 32)
    bytes[0] = UInt8(truncatingIfNeeded: n >> 8)
    bytes[31] = 0x5A
    return PeerID(bytes: bytes)!
}

/// Node machines on a virtual clock and an in-memory network of links: a dial reaches the
/// node at the address unless the two are partitioned; membership and queue messages, pings
/// and closes travel with a fixed latency; a partition drops everything between its sides, so links
/// across it end by their keepalive timeouts, as over a cut cable. Every action each machine
/// returns is recorded, in order.
struct Mesh {
    typealias Machine = NodeMachine<String>
    typealias Action = NodeAction<String>

    private enum Event {
        case timer(node: Int, NodeTimer, at: UInt64)
        case linkUp(node: Int, link: LinkID, peer: Int, direction: LinkDirection, dialed: String?)
        case dialFailed(node: Int, address: String)
        case message(node: Int, link: LinkID, from: Int, MembershipMessage)
        case queueMessage(node: Int, link: LinkID, from: Int, QueueMessage)
        case heard(node: Int, link: LinkID)
        case linkDown(node: Int, link: LinkID, peerLeft: Bool)
        case peerList(node: Int, link: LinkID, [PeerListEntry<PeerID, String>])
    }

    /// One end of a link: which node and link it leads to.
    private struct End {
        var peer: Int
        var peerLink: LinkID
        var up = false
    }

    private(set) var machines: [Machine]
    private(set) var now: UInt64 = 0
    /// Every action, by node, in the order returned.
    private(set) var trace: [(time: UInt64, node: Int, action: Action)] = []
    let latency: UInt64
    private var events = EventQueue<Event>()
    private var deadlines: [[NodeTimer: UInt64]]
    private var ends: [[LinkID: End]]
    private var nextLink: [UInt64]
    /// Pairs (lower index first) that cannot reach each other.
    private var cut: Set<[Int]> = []

    static func address(_ n: Int) -> String { "n\(n)" }

    /// `size` nodes; node 0 dials nobody, every other node bootstraps from node 0.
    init(size: Int, seed: UInt64, latency: UInt64 = 1 * ms) {
        self.latency = latency
        var seeds = SplitMix64(seed: seed)
        let membership = MembershipConfiguration()
        let connection = ConnectionConfiguration(baseBackoff: 100 * ms, maxBackoff: 1 * second,
                                                 keepaliveInterval: 300 * ms, keepaliveTimeout: 1 * second, maxPeers: 16)
        machines = (0..<size).map { n in
            Machine(configuration: NodeMachineConfiguration(localPeer: peer(n), incarnation: UInt64(n + 1) * 1000,
                                                             seed: seeds.next(), connection: connection, membership: membership))
        }
        deadlines = Array(repeating: [:], count: size)
        ends = Array(repeating: [:], count: size)
        nextLink = Array(repeating: 1, count: size)
        for n in 0..<size {
            let actions = machines[n].start(advertising: Self.address(n), bootstrap: n == 0 ? [] : [Self.address(0)], now: now)
            perform(actions, at: n)
        }
    }

    func index(of id: PeerID) -> Int? { machines.firstIndex { $0.localPeer == id } }

    /// Cuts every link between `side` and the other nodes.
    mutating func partition(_ side: Set<Int>) {
        for a in side { for b in 0..<machines.count where !side.contains(b) { cut.insert([min(a, b), max(a, b)]) } }
    }

    mutating func heal() { cut.removeAll() }

    private func isCut(_ a: Int, _ b: Int) -> Bool { cut.contains([min(a, b), max(a, b)]) }

    mutating func run(until end: UInt64) {
        while let next = events.nextTime, next <= end, let (time, event) = events.pop() {
            now = time
            handle(event)
        }
        now = end
    }

    private mutating func handle(_ event: Event) {
        switch event {
        case .timer(let node, let timer, let at):
            guard deadlines[node][timer] == at else { return }  // re-armed or cancelled since
            deadlines[node][timer] = nil
            perform(machines[node].tick(timer, now: now), at: node)
        case .linkUp(let node, let link, let other, let direction, let dialed):
            guard var end = ends[node][link] else { return }
            end.up = true
            ends[node][link] = end
            let actions = machines[node].linkUp(link, peer: peer(other), direction: direction,
                                                incarnation: machines[other].configuration.incarnation,
                                                features: QueueWire.featureOwnershipHandover | QueueWire.featureReplicas,
                                                peerAddress: Self.address(other), dialedAddress: dialed, now: now)
            perform(actions, at: node)
        case .dialFailed(let node, let address):
            perform(machines[node].dialFailed(address, now: now), at: node)
        case .message(let node, let link, let from, let message):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peer(from), now: now), at: node)
        case .queueMessage(let node, let link, let from, let message):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peer(from), now: now), at: node)
        case .heard(let node, let link):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
        case .peerList(let node, let link, let entries):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].peerListReceived(entries, on: link, now: now), at: node)
        case .linkDown(let node, let link, let peerLeft):
            guard let end = ends[node].removeValue(forKey: link) else { return }
            if end.up { perform(machines[node].linkDown(link, peerLeft: peerLeft, now: now), at: node) }
        }
    }

    private mutating func perform(_ actions: [Action], at node: Int) {
        for action in actions {
            trace.append((now, node, action))
            switch action {
            case .dial(let address):
                guard let other = Int(address.dropFirst()), other < machines.count, other != node, !isCut(node, other) else {
                    events.schedule(.dialFailed(node: node, address: address), at: now + latency)
                    continue
                }
                let mine = LinkID(nextLink[node]), theirs = LinkID(nextLink[other])
                nextLink[node] += 1
                nextLink[other] += 1
                ends[node][mine] = End(peer: other, peerLink: theirs)
                ends[other][theirs] = End(peer: node, peerLink: mine)
                // The handshake and hellos take a round trip and a half.
                events.schedule(.linkUp(node: other, link: theirs, peer: node, direction: .inbound, dialed: nil),
                                at: now + 2 * latency)
                events.schedule(.linkUp(node: node, link: mine, peer: other, direction: .outbound, dialed: address),
                                at: now + 3 * latency)
            case .closeLink(let link, let reason):
                guard let end = ends[node][link] else { continue }
                events.schedule(.linkDown(node: node, link: link, peerLeft: false), at: now)
                if !isCut(node, end.peer) {
                    events.schedule(.linkDown(node: end.peer, link: end.peerLink, peerLeft: reason == .leaving),
                                    at: now + latency)
                }
            case .sendPing(let link, _):
                guard let end = ends[node][link], end.up, !isCut(node, end.peer) else { continue }
                events.schedule(.heard(node: end.peer, link: end.peerLink), at: now + latency)
                events.schedule(.heard(node: node, link: link), at: now + 2 * latency)  // the pong
            case .sendPeerList(let link, let entries):
                guard let end = ends[node][link], end.up, !isCut(node, end.peer) else { continue }
                events.schedule(.peerList(node: end.peer, link: end.peerLink, entries), at: now + latency)
            case .send(let message, let to, let link):
                guard let other = index(of: to), let end = ends[node][link], end.up else {
                    perform(machines[node].undeliverable(message, to: to, now: now), at: node)
                    continue
                }
                guard !isCut(node, other) else { continue }
                events.schedule(.message(node: other, link: end.peerLink, from: node, message), at: now + latency)
            case .armTimer(let timer, let at):
                deadlines[node][timer] = at
                events.schedule(.timer(node: node, timer, at: at), at: max(at, now))
            case .cancelTimer(let timer):
                deadlines[node][timer] = nil
            case .queue(_, .send(let message, let to)):
                guard let other = index(of: to), let link = machines[node].link(to: to), let end = ends[node][link], end.up
                else {
                    perform(machines[node].sendFailed(message, to: to, now: now), at: node)
                    continue
                }
                guard !isCut(node, other) else { continue }
                events.schedule(.queueMessage(node: other, link: end.peerLink, from: node, message), at: now + latency)
            case .queue(let name, .armTimer(let at)):
                deadlines[node][.queue(name)] = at
                events.schedule(.timer(node: node, .queue(name), at: at), at: max(at, now))
            case .queue(let name, .deliver(_, let items)):
                delivered[node, default: [:]][name, default: []].append(contentsOf: items.map { Array($0.bytes) })
            case .queue, .deadLettered, .peerConnected, .peerMovedLink, .peerDisconnected, .member, .calls:
                break  // recorded in the trace
            }
        }
    }

    /// Items handed to waiting pops, by node and queue, in order.
    private(set) var delivered: [Int: [String: [[UInt8]]]] = [:]

    /// Node `n` pushes `items` into `queue`.
    mutating func push(_ items: [[UInt8]], at n: Int, into queue: String) -> PushOutcome? {
        guard let (outcome, actions) = machines[n].push(items, into: queue, now: now) else { return nil }
        perform(actions, at: n)
        return outcome
    }

    /// Node `n` pops up to `max` items of `queue`, waiting as `waiter` if none is here; returns
    /// those popped at once (later ones are in ``delivered``).
    mutating func pop(_ queue: String, at n: Int, max: Int, waiter: UInt64) -> [[UInt8]] {
        guard let (items, actions) = machines[n].pop(queue, max: max, waiter: WaiterID(waiter), now: now) else { return [] }
        perform(actions, at: n)
        return items.map { Array($0.bytes) }
    }

    /// A hash of every action of every node, in order: queue messages as their wire bytes (a
    /// description could show a dictionary, whose order differs between processes), the rest
    /// as described.
    var traceHash: TraceHash {
        var hash = TraceHash()
        for (time, node, action) in trace {
            hash.add(time)
            hash.add(node)
            if case .queue(let name, .send(let message, let to)) = action, let bytes = try? Self.encoded(message) {
                hash.add(bytes: Array(name.utf8))
                hash.add(bytes: Array("\(to)".utf8))
                hash.add(bytes: bytes)
            } else {
                hash.add(bytes: Array("\(action)".utf8))
            }
        }
        return hash
    }

    private static func encoded(_ message: QueueMessage) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try MessageEncoder.encode(message, into: &bytes)
        return bytes
    }

    /// The actions of `node` that `matches` selects.
    func actions(of node: Int, where matches: (Action) -> Bool) -> [Action] {
        trace.filter { $0.node == node && matches($0.action) }.map(\.action)
    }

    /// When `node` first returned an action that `matches` selects.
    func firstTime(of node: Int, where matches: (Action) -> Bool) -> UInt64? {
        trace.first { $0.node == node && matches($0.action) }?.time
    }

    /// Node `n` stops gracefully (``NodeMachine/stop(now:)``).
    mutating func stop(_ n: Int) {
        perform(machines[n].stop(now: now), at: n)
    }
}
