import P2PQMembership
import P2PQTestSupport
import P2PQWire
import Testing

let ms: UInt64 = 1_000_000
let second: UInt64 = 1_000_000_000

/// A deterministic PeerID: 32 copies of `n`'s low byte, then patched with `n`'s high byte.
func peer(_ n: Int) -> PeerID {
    var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: 32)
    bytes[0] = UInt8(truncatingIfNeeded: n >> 8)
    bytes[31] = 0xA5
    return PeerID(bytes: bytes)!
}

/// An in-memory network of memberships on a simulated clock.
///
/// A node can be *killed* (its links are gone: sends to it are undeliverable at once) or
/// *stopped* (silent: messages to it vanish, its timers do not run), and can be made *slow*
/// (everything it receives is processed late).
struct Cluster {
    struct Node {
        var membership: MembershipMachine
        var timer: UInt64?
    }

    struct InFlight {
        var from: PeerID
        var to: PeerID
        var message: MembershipMessage
    }

    struct Event: Equatable {
        var at: UInt64
        var observer: PeerID
        var event: MembershipEvent
    }

    var nodes: [PeerID: Node] = [:]
    var order: [PeerID] = []
    var now: UInt64 = 0
    var latency: UInt64 = 1 * ms
    var killed: Set<PeerID> = []
    var stopped: Set<PeerID> = []
    var slow: [PeerID: UInt64] = [:]
    /// Messages in flight, by delivery time then send order.
    var inFlight = EventQueue<InFlight>()
    /// Pairs whose links are cut (a partition): sends between them are undeliverable.
    var cuts: Set<[PeerID]> = []
    var events: [Event] = []
    /// Every message actually sent, in order.
    var sent: [(from: PeerID, to: PeerID, message: MembershipMessage)] = []

    init(size: Int, configuration: MembershipConfiguration = MembershipConfiguration(), seed: UInt64 = 1,
         fullMesh: Bool = true) {
        for index in 0..<size {
            let id = peer(index)
            order.append(id)
            nodes[id] = Node(membership: MembershipMachine(localPeer: id, incarnation: 100, configuration: configuration,
                                                    seed: seed &+ UInt64(index) &* 7919))
        }
        for id in order {
            let directives = nodes[id]!.membership.start(now: now)
            perform(id, directives)
        }
        if fullMesh {
            for a in order {
                for b in order where a != b { linkUp(a, b) }
            }
        }
    }

    mutating func linkUp(_ a: PeerID, _ b: PeerID) {
        perform(a, nodes[a]!.membership.linkUp(b, incarnation: nodes[b]!.membership.incarnation, now: now))
    }

    mutating func perform(_ id: PeerID, _ directives: [MembershipAction]) {
        var work = directives
        var index = 0
        while index < work.count {
            let directive = work[index]
            index += 1
            switch directive {
            case .armTimer(let at):
                nodes[id]!.timer = at
            case .event(let event):
                events.append(Event(at: now, observer: id, event: event))
            case .send(let message, let to):
                if killed.contains(to) || killed.contains(id) || nodes[to] == nil || cuts.contains([id, to].sorted()) {
                    work += nodes[id]!.membership.undeliverable(message, to: to, now: now)
                    continue
                }
                sent.append((id, to, message))
                inFlight.schedule(InFlight(from: id, to: to, message: message), at: now + latency + (slow[to] ?? 0))
            }
        }
    }

    /// Runs timers and deliveries in time order until `end` (bounded in steps).
    mutating func run(until end: UInt64) {
        var steps = 0
        while steps < 2_000_000 {
            steps += 1
            var nextTimer: (UInt64, PeerID)?
            for id in order where !stopped.contains(id) && !killed.contains(id) {
                if let at = nodes[id]!.timer, nextTimer == nil || at < nextTimer!.0 { nextTimer = (at, id) }
            }
            let messageAt = inFlight.nextTime ?? .max
            let timerAt = nextTimer?.0 ?? .max
            let at = min(messageAt, timerAt)
            guard at <= end else { break }
            now = max(now, at)
            if messageAt <= timerAt, let flight = inFlight.pop()?.event {
                guard !stopped.contains(flight.to), !killed.contains(flight.to) else { continue }
                perform(flight.to, nodes[flight.to]!.membership.received(flight.message, from: flight.from, now: now))
            } else if let (_, id) = nextTimer {
                nodes[id]!.timer = nil
                perform(id, nodes[id]!.membership.tick(now: now))
            }
        }
        now = max(now, end)
    }

    /// Kills `id`: its links close, and every other node hears `linkDown`.
    mutating func kill(_ id: PeerID) {
        killed.insert(id)
        inFlight.removeAll { $0.to == id || $0.from == id }
        for other in order where other != id && !killed.contains(other) {
            perform(other, nodes[other]!.membership.linkDown(id, now: now))
        }
    }

    /// Cuts every link between `side` and `other` (both ends hear `linkDown`); messages already
    /// in flight between them are lost.
    mutating func partition(_ side: [PeerID], from other: [PeerID]) {
        for a in side {
            for b in other {
                cuts.insert([a, b].sorted())
                inFlight.removeAll { ($0.from == a && $0.to == b) || ($0.from == b && $0.to == a) }
                perform(a, nodes[a]!.membership.linkDown(b, now: now))
                perform(b, nodes[b]!.membership.linkDown(a, now: now))
            }
        }
    }

    /// Ends every partition: the cut links come up again from both ends (as redials do).
    mutating func heal() {
        let pairs = cuts.sorted { $0[0] < $1[0] || ($0[0] == $1[0] && $0[1] < $1[1]) }
        cuts = []
        for pair in pairs {
            linkUp(pair[0], pair[1])
            linkUp(pair[1], pair[0])
        }
    }

    func state(of id: PeerID, at observer: PeerID) -> MemberState? {
        nodes[observer]!.membership.state(of: id)
    }

    func firstEvent(_ event: MembershipEvent, at observer: PeerID) -> UInt64? {
        events.first { $0.observer == observer && $0.event == event }?.at
    }

    func events(at observer: PeerID) -> [MembershipEvent] {
        events.filter { $0.observer == observer }.map(\.event)
    }
}
