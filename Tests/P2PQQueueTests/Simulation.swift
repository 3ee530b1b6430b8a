import P2PQQueue
import P2PQTestSupport
import P2PQWire

let ms: UInt64 = 1_000_000
let second: UInt64 = 1_000_000_000

func peer(_ n: Int) -> PeerID {
    PeerID(bytes: [UInt8](repeating: 0xA0, count: 24) + withUnsafeBytes(of: UInt64(n).bigEndian, Array.init))!
}

/// Payload carrying an integer, so tests can check each item arrives exactly once.
func payload(_ n: Int, size: Int = 8) -> [UInt8] {
    var bytes = withUnsafeBytes(of: UInt64(n).bigEndian, Array.init)
    if size > 8 { bytes += [UInt8](repeating: 0x5A, count: size - 8) }
    return bytes
}

func number(_ payload: [UInt8]) -> Int {
    Int(payload.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
}

func number(_ payload: ItemPayload) -> Int {
    number(payload.bytes)
}

/// Every message goes through the real encoder and decoder.
func wireRoundTrip(_ message: QueueMessage, maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws -> QueueMessage {
    var bytes: [UInt8] = []
    try message.encode(into: &bytes, maxFrameSize: maxFrameSize)
    let raw = try MessageDecoder.decodeAll(bytes, maxFrameSize: maxFrameSize)
    precondition(raw.count == 1)
    return try QueueMessage.decode(raw[0])
}

/// A deterministic cluster of queue machines on an in-memory network with a simulated clock.
///
/// Links are FIFO with a fixed latency; a cut link drops what is in flight. Consumers pop one
/// item at a time and are busy `taskTime` per item.
struct Simulation {
    struct Consumer {
        var busy = false
        var waiter: WaiterID?
        var taskTime: UInt64
    }

    private enum EventKind {
        case message(from: PeerID, to: PeerID, type: MessageType, body: [UInt8], epoch: Int)
        case timer(PeerID, at: UInt64)
        case consumerFree(PeerID, Int)
    }

    private struct Pair: Hashable {
        var a: PeerID
        var b: PeerID
        init(_ x: PeerID, _ y: PeerID) { (a, b) = x < y ? (x, y) : (y, x) }
    }

    var now: UInt64 = 0
    var latency: UInt64 = 1 * ms
    var machines: [PeerID: QueueMachine] = [:]
    var order: [PeerID] = []
    var consumers: [PeerID: [Consumer]] = [:]
    /// Popped items by node, in pop order.
    var popped: [PeerID: [Int]] = [:]
    /// When each node popped its first item.
    var firstPop: [PeerID: UInt64] = [:]
    var lastPopTime: UInt64 = 0
    var failures: [(PeerID, WaiterID, PopFailure)] = []
    var spaceSignals: [PeerID: Int] = [:]
    /// Path of each item (by payload number) through transfers: the receivers in order.
    var paths: [Int: [PeerID]] = [:]
    var messagesSent: [MessageType: Int] = [:]
    var decodeErrors: [WireError] = []
    private var pushes = 0
    /// Nodes that stopped (killed): they process nothing.
    var killed: Set<PeerID> = []
    /// Messages of these types are dropped instead of delivered.
    var dropTypes: Set<MessageType> = []
    var debug = false
    /// Links tell each side that the other keeps replicas (replication on).
    var keepsReplicas = false
    /// Every message (as its wire bytes), delivery and timer, in order.
    var trace = TraceHash()

    func debugLog(_ message: QueueMessage, from: PeerID, to: PeerID) {
        let f = order.firstIndex(of: from)!, t = order.firstIndex(of: to)!
        switch message {
        case .transfer(_, _, let kind, _, let items): print("\(now / 1_000_000)ms \(f)->\(t) transfer \(kind) \(items.count)")
        case .stealRequest(_, _, let max, let rate): print("\(now / 1_000_000)ms \(f)->\(t) steal \(max) rate \(rate)")
        case .stealEmpty: print("\(now / 1_000_000)ms \(f)->\(t) empty")
        case .stats(_, let s): print("\(now / 1_000_000)ms \(f)->\(t) stats len \(s.length) wait \(s.waiting) rate \(s.serviceRate)")
        default: break
        }
    }

    /// Pending events, by time then scheduling order.
    private var events = EventQueue<EventKind>()
    private var links: [Pair: Int] = [:]  // link epoch while up
    private var epochs: [Pair: Int] = [:]
    private var armed: [PeerID: UInt64] = [:]
    private var waiterOwner: [WaiterID: (PeerID, Int)] = [:]
    private var nextWaiter: UInt64 = 1

    init(nodes: Int, configuration: QueueConfiguration = QueueConfiguration(), name: String = "jobs") {
        for index in 0..<nodes {
            let id = peer(index)
            order.append(id)
            machines[id] = QueueMachine(name: name, localPeer: id, configuration: configuration)
            consumers[id] = []
            popped[id] = []
            perform(id, machines[id]!.start(now: 0))
        }
    }

    func node(_ index: Int) -> PeerID { order[index] }

    var totalPopped: Int { popped.values.reduce(0) { $0 + $1.count } }

    // MARK: Links

    mutating func connect(_ x: PeerID, _ y: PeerID) {
        let pair = Pair(x, y)
        guard links[pair] == nil else { return }
        let epoch = (epochs[pair] ?? 0) + 1
        epochs[pair] = epoch
        links[pair] = epoch
        perform(x, machines[x]!.peerConnected(y, keepsReplicas: keepsReplicas, now: now))
        perform(y, machines[y]!.peerConnected(x, keepsReplicas: keepsReplicas, now: now))
    }

    mutating func connectAll() {
        for i in order.indices { for j in order.indices where i < j { connect(order[i], order[j]) } }
    }

    /// Cuts the link; whatever is in flight on it is lost.
    mutating func cut(_ x: PeerID, _ y: PeerID) {
        let pair = Pair(x, y)
        guard links.removeValue(forKey: pair) != nil else { return }
        if !killed.contains(x) { perform(x, machines[x]!.peerDisconnected(y, now: now)) }
        if !killed.contains(y) { perform(y, machines[y]!.peerDisconnected(x, now: now)) }
    }

    /// Kills a node: its links drop, then membership declares it dead everywhere.
    mutating func kill(_ victim: PeerID) {
        killed.insert(victim)
        for other in order where other != victim {
            cut(victim, other)
        }
        for other in order where other != victim && !killed.contains(other) {
            perform(other, machines[other]!.peerDied(victim, now: now))
        }
    }

    // MARK: Producers and consumers

    @discardableResult
    /// Pushes alternate between one batch (a run of items in one buffer) and an array per item
    /// (runs of one item), so both shapes travel.
    mutating func push(_ numbers: Range<Int>, at node: PeerID, size: Int = 8) -> PushOutcome {
        let payloads = numbers.map { payload($0, size: size) }
        pushes += 1
        let (outcome, actions) = pushes % 2 == 0
            ? machines[node]!.push(ItemBatch(payloads), now: now)
            : machines[node]!.push(payloads, now: now)
        perform(node, actions)
        return outcome
    }

    /// Adds consumers at `node`; each starts popping at once.
    mutating func addConsumers(_ count: Int, at node: PeerID, taskTime: UInt64) {
        for _ in 0..<count {
            consumers[node]!.append(Consumer(taskTime: taskTime))
            consume(node, consumers[node]!.count - 1)
        }
    }

    private mutating func consume(_ node: PeerID, _ index: Int) {
        guard !killed.contains(node) else { return }
        let waiter = WaiterID(nextWaiter)
        nextWaiter += 1
        let (items, actions) = machines[node]!.pop(max: 1, waiter: waiter, now: now)
        if items.isEmpty {
            consumers[node]![index].waiter = waiter
            waiterOwner[waiter] = (node, index)
        } else {
            got(items, at: node, consumer: index)
        }
        perform(node, actions)
    }

    private mutating func got(_ items: ItemPayloads, at node: PeerID, consumer index: Int) {
        trace.add(now)
        trace.add(order.firstIndex(of: node) ?? -1)
        for item in items {
            popped[node]!.append(number(item))
            trace.add(bytes: item.bytes)
        }
        if firstPop[node] == nil { firstPop[node] = now }
        lastPopTime = now
        consumers[node]![index].busy = true
        consumers[node]![index].waiter = nil
        schedule(now + consumers[node]![index].taskTime * UInt64(items.count), .consumerFree(node, index))
    }

    // MARK: Actions

    mutating func perform(_ node: PeerID, _ actions: [QueueAction]) {
        for action in actions {
            switch action {
            case .send(let message, let to):
                messagesSent[message.messageType, default: 0] += 1
                guard let epoch = links[Pair(node, to)], !killed.contains(to) else {
                    perform(node, machines[node]!.sendFailed(message, to: to, now: now))
                    continue
                }
                var bytes: [UInt8] = []
                do {
                    try message.encode(into: &bytes)
                } catch {
                    decodeErrors.append(error)
                    continue
                }
                schedule(now + latency, .message(from: node, to: to, type: message.messageType,
                                                 body: Array(bytes.dropFirst(5)), epoch: epoch))
            case .deliver(let waiter, let items):
                guard let (owner, index) = waiterOwner.removeValue(forKey: waiter) else {
                    fatalError("delivery to unknown \(waiter)")
                }
                precondition(owner == node)
                got(items, at: node, consumer: index)
            case .fail(let waiter, let failure):
                waiterOwner[waiter] = nil
                failures.append((node, waiter, failure))
            case .spaceAvailable:
                spaceSignals[node, default: 0] += 1
            case .deliverLeased, .deadLetter:
                break  // the simulation's consumers use plain pops
            case .armTimer(let at):
                armed[node] = at
                schedule(at, .timer(node, at: at))
            }
        }
    }

    private mutating func schedule(_ time: UInt64, _ kind: EventKind) {
        events.schedule(kind, at: time)
    }

    // MARK: Running

    /// Runs events up to `time` (bounded in count), then sets the clock to `time`.
    mutating func run(until time: UInt64, maxEvents: Int = 5_000_000) {
        var processed = 0
        while processed < maxEvents, let next = events.nextTime, next <= time {
            processed += 1
            let (at, kind) = events.pop()!
            now = Swift.max(now, at)
            handle(kind)
        }
        precondition(processed < maxEvents, "simulation did not settle")
        now = Swift.max(now, time)
    }

    /// Runs until `done` holds (checked after each event) or `limit` passes; true if it held.
    mutating func run(for limit: UInt64, until done: (Simulation) -> Bool) -> Bool {
        let end = now + limit
        var processed = 0
        while processed < 20_000_000, let next = events.nextTime, next <= end {
            if done(self) { return true }
            processed += 1
            let (at, kind) = events.pop()!
            now = Swift.max(now, at)
            handle(kind)
        }
        return done(self)
    }

    private mutating func handle(_ kind: EventKind) {
        switch kind {
        case .message(let from, let to, let type, let body, let epoch):
            guard !killed.contains(to), links[Pair(from, to)] == epoch, !dropTypes.contains(type) else { return }
            trace.add(now)
            trace.add(order.firstIndex(of: from) ?? -1)
            trace.add(order.firstIndex(of: to) ?? -1)
            trace.add(bytes: [type.rawValue])
            trace.add(bytes: body)
            let message: QueueMessage
            do {
                message = try QueueMessage.decode(type: type, body: body)
            } catch {
                decodeErrors.append(error)
                return
            }
            if debug { debugLog(message, from: from, to: to) }
            if case .transfer(_, _, _, _, let items) = message {
                for item in items { paths[number(item.payload), default: []].append(to) }
            }
            perform(to, machines[to]!.received(message, from: from, now: now))
        case .timer(let node, let at):
            guard !killed.contains(node), armed[node] == at else { return }
            armed[node] = nil
            trace.add(now)
            trace.add(order.firstIndex(of: node) ?? -1)
            perform(node, machines[node]!.tick(now: now))
        case .consumerFree(let node, let index):
            guard !killed.contains(node) else { return }
            consumers[node]![index].busy = false
            consume(node, index)
        }
    }
}
