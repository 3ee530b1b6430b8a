import Foundation
import P2PQConnectionManager
import P2PQLink
import P2PQNodeMachine
import P2PQNoise
import P2PQQueue
import P2PQRemoteCall
import P2PQSimulation
import P2PQTestSupport
import P2PQWire
import Testing

/// Node machines whose links are real: every byte goes through a `LinkSession` (the Noise
/// handshake from its first byte, with seeded ephemeral keys, then sealed records), in memory,
/// with a fixed latency. The machines keep the link stages and the admission; this harness only
/// moves bytes, seals what a turn sends, closes connections, and keeps the timers, as the shell
/// does. Every action is hashed. The "echo" task finishes 1 ms after it starts.
struct HandshakeMesh {
    typealias Machine = NodeMachine<String>
    typealias Action = NodeAction<String>

    private enum Event {
        case timer(node: Int, NodeTimer, at: UInt64)
        /// The dialer's connection is made: its session writes the first handshake message.
        case connected(node: Int, link: LinkID)
        case bytes(node: Int, link: LinkID, [UInt8])
        case closed(node: Int, link: LinkID, LinkMachine.ConnectionEnd)
        case flushCalls(node: Int)
        case finished(node: Int, TaskID, CallOutcome)
    }

    /// One end of a connection: its session, where the machine keeps its stages, and the
    /// other end.
    private struct Connection {
        var session: LinkSession
        var handle: LinkHandle
        var peer: Int
        var peerLink: LinkID
        var inbound: Bool
        var closing = false
    }

    static let latency = simulatedMillisecond
    static let wallOffset: UInt64 = 1_700_000_000 * simulatedSecond
    static let clusterKey = ClusterKey(bytes: Array(repeating: 0x2C, count: 32))!

    private(set) var machines: [Machine]
    let peers: [PeerID]
    private(set) var now: UInt64 = 0
    private(set) var hash = TraceHash()
    private(set) var trace: [(time: UInt64, node: Int, action: Action)] = []
    private(set) var completed: [Int: [UInt64: Result<[UInt8], RemoteCallError>]] = [:]
    private(set) var delivered: [Int: [[UInt8]]] = [:]
    private(set) var ran: [Int: [CallTask]] = [:]
    /// Links whose hellos went through, by node.
    private(set) var ready: [Int: Int] = [:]
    private var identities: [NodeIdentity]
    private var keys: [HandshakeKeySource]
    private var events = EventQueue<Event>()
    private var deadlines: [[NodeTimer: UInt64]]
    private var connections: [[LinkID: Connection]]
    private var nextLink: [UInt64]

    init(size: Int, seed: UInt64) {
        var seeds = SplitMix64(seed: seed)
        let identities = (0..<size).map { n in
            // Fixed static keys: the peer ids are the same in every run.
            // swiftlint:disable:next force_try
            NodeIdentity(keyPair: try! NoiseKeyPair(privateKey: Array(repeating: UInt8(n + 1), count: 32)))
        }
        self.identities = identities
        peers = identities.map(\.peerID)
        keys = (0..<size).map { _ in .seeded(seeds.next()) }
        let features = QueueWire.featureOwnershipHandover | QueueWire.featureReplicas | WireProtocol.featureOperationsAddress
        machines = (0..<size).map { n in
            Machine(configuration: NodeMachineConfiguration(
                localPeer: identities[n].peerID, incarnation: UInt64(n + 1) * 1000, seed: seeds.next(),
                connection: ConnectionConfiguration(baseBackoff: 100 * ms, maxBackoff: second, keepaliveInterval: 300 * ms,
                                                    keepaliveTimeout: second, maxPeers: 64),
                links: LinkStagesConfiguration(handshakeTimeout: second, handshakeTimeoutDescription: "1 s",
                                               helloFeatures: features)))
        }
        deadlines = Array(repeating: [:], count: size)
        connections = Array(repeating: [:], count: size)
        nextLink = Array(repeating: 1, count: size)
        for n in 0..<size {
            let (attached, actions) = machines[n].attachCalls(queue: "p2pq.calls", caller: CallerConfiguration(),
                                                               executor: ExecutorConfiguration(maxConcurrentCalls: 2),
                                                               now: now)
            precondition(attached)
            perform(actions, at: n)
            if n > 0 {
                machines[n].registerCallFunction("echo")
                perform(machines[n].setCallProcessing(true, now: now), at: n)
            }
            perform(machines[n].start(advertising: "n\(n):7000", bootstrap: n == 0 ? [] : ["n0:7000"], now: now), at: n)
        }
    }

    private var wallClock: UInt64 { now &+ Self.wallOffset }

    // MARK: The API

    mutating func callEcho(_ arguments: [[UInt8]], at n: Int) {
        let requests = arguments.enumerated().map { index, bytes in
            NodeCallRequest(function: "echo", arguments: bytes, timeout: 10 * second, token: UInt64(index + 1))
        }
        perform(machines[n].call(requests, now: now, wallClock: wallClock), at: n)
    }

    mutating func push(_ items: [[UInt8]], at n: Int, into queue: String) {
        guard let (_, actions) = machines[n].push(items, into: queue, now: now) else { return }
        perform(actions, at: n)
    }

    mutating func pop(_ queue: String, at n: Int, max: Int, waiter: UInt64) {
        guard let (items, actions) = machines[n].pop(queue, max: max, waiter: WaiterID(waiter), now: now) else { return }
        delivered[n, default: []].append(contentsOf: items.map { Array($0.bytes) })
        perform(actions, at: n)
    }

    mutating func stop(_ n: Int) {
        perform(machines[n].stop(now: now), at: n)
    }

    mutating func run(until end: UInt64) {
        while let next = events.nextTime, next <= end, let (time, event) = events.pop() {
            now = time
            handle(event)
        }
        now = end
    }

    // MARK: Events

    private mutating func handle(_ event: Event) {
        switch event {
        case .timer(let node, let timer, let at):
            guard deadlines[node][timer] == at else { return }
            deadlines[node][timer] = nil
            perform(machines[node].tick(timer, now: now), at: node)
        case .connected(let node, let link):
            guard var connection = connections[node][link] else { return }
            var output = ByteArrayOutput()
            do {
                try connection.session.start(output: &output)
            } catch {
                connections[node][link] = connection
                return perform(machines[node].linkFailed(link, reason: "\(error)", now: now), at: node)
            }
            connections[node][link] = connection
            transmit(output.bytes, from: node, on: link)
        case .bytes(let node, let link, let bytes):
            receive(bytes, at: node, on: link)
        case .closed(let node, let link, let end):
            guard connections[node].removeValue(forKey: link) != nil else { return }
            perform(machines[node].linkClosed(link, end: end, description: "\(end)", now: now), at: node)
        case .flushCalls(let node):
            perform(machines[node].flushCalls(now: now, wallClock: wallClock), at: node)
        case .finished(let node, let task, let outcome):
            perform(machines[node].callsFinished([(task, outcome)], now: now), at: node)
        }
    }

    /// Feeds `bytes` to the session of `node`'s `link`; what the session reports goes to the
    /// machine at once, what the machine answers is performed once the session is done (as
    /// the shell stages its sends for the end of the turn).
    private mutating func receive(_ bytes: [UInt8], at node: Int, on link: LinkID) {
        guard var connection = connections[node][link] else { return }
        let handle = connection.handle, remoteHost = "n\(connection.peer)"
        let stalled = connection.inbound && connection.session.handshakeMessagesReceived == 0
        var output = ByteArrayOutput()
        var answered: [Action] = []
        var failure: String?
        do {
            try bytes.withUnsafeBytes { raw in
                try connection.session.receive(raw, output: &output) { event in
                    switch event {
                    case .established(let remote, let version):
                        answered += machines[node].linkEstablished(link, peer: remote, version: version,
                                                                   remoteHost: remoteHost, now: now)
                    case .message(let type, let body):
                        switch machines[node].received(type, body, on: handle, now: now) {
                        case .handled(let actions): answered += actions
                        case .deliver(let from): answered += deliver(type, body, from: from, at: node, on: link)
                        }
                    }
                }
            }
        } catch {
            failure = "\(error)"
        }
        if stalled && connection.session.handshakeMessagesReceived > 0 {
            answered += machines[node].handshakeProgressed(link, now: now)
        }
        connections[node][link] = connection
        transmit(output.bytes, from: node, on: link)
        if let failure { answered += machines[node].linkFailed(link, reason: failure, now: now) }
        perform(answered, at: node)
    }

    /// A queue or call message for the machine (the shell's part of delivery).
    private mutating func deliver(_ type: MessageType, _ body: UnsafeRawBufferPointer, from: PeerID, at node: Int,
                                  on link: LinkID) -> [Action] {
        if MessageType.queueRange.contains(type.rawValue), let message = try? QueueMessage.decode(type: type, body: body) {
            return machines[node].received(message, from: from, now: now)
        }
        if MessageType.remoteCallRange.contains(type.rawValue), let message = try? RemoteCallMessage.decode(type: type, body: body) {
            return machines[node].received(message, from: from, now: now, wallClock: wallClock)
        }
        return machines[node].linkFailed(link, reason: "bad \(type) message", now: now)
    }

    /// Seals `message` on `node`'s `link` and sends the record; false if the link cannot carry it.
    private mutating func send(_ message: some WireMessage, from node: Int, on link: LinkID) -> Bool {
        guard var connection = connections[node][link], !connection.closing,
              machines[node].canSend(on: connection.handle) else { return false }
        var plaintext: [UInt8] = []
        var output = ByteArrayOutput()
        do {
            try MessageEncoder.encode(message, into: &plaintext)
            try plaintext.withUnsafeBytes { raw in try connection.session.seal(raw, into: &output) }
        } catch {
            return false
        }
        connections[node][link] = connection
        transmit(output.bytes, from: node, on: link)
        return true
    }

    private mutating func transmit(_ bytes: [UInt8], from node: Int, on link: LinkID) {
        guard !bytes.isEmpty, let connection = connections[node][link] else { return }
        hash.add(bytes: bytes)  // the wire itself: handshake messages and records
        events.schedule(.bytes(node: connection.peer, link: connection.peerLink, bytes), at: now + Self.latency)
    }

    /// Closes `node`'s end of `link`: the peer sees the close after what was sent before it.
    private mutating func close(_ link: LinkID, at node: Int) {
        guard var connection = connections[node][link], !connection.closing else { return }
        connection.closing = true
        connections[node][link] = connection
        events.schedule(.closed(node: connection.peer, link: connection.peerLink, .peerClosed), at: now + Self.latency)
        events.schedule(.closed(node: node, link: link, .other), at: now)
    }

    private func link(of node: Int, to peer: PeerID) -> LinkID? { machines[node].link(to: peer) }

    private mutating func perform(_ actions: [Action], at node: Int) {
        for action in actions {
            record(action, at: node)
            switch action {
            case .dial(let address):
                guard let other = Int(address.dropFirst().prefix { $0 != ":" }), other < machines.count, other != node else {
                    perform(machines[node].dialFailed(address, now: now), at: node)
                    continue
                }
                let mine = LinkID(nextLink[node]), theirs = LinkID(nextLink[other])
                nextLink[node] += 1
                nextLink[other] += 1
                perform(machines[node].linkOpened(mine, dialing: address, now: now), at: node)
                guard let handle = machines[node].handle(of: mine) else { continue }
                connections[node][mine] = Connection(session: session(.initiator, node), handle: handle, peer: other,
                                                     peerLink: theirs, inbound: false)
                // The acceptor's admission decides; a refused connection closes under the dialer.
                let accepted = machines[other].linkAccepted(theirs, source: "n\(node)", now: now)
                if let handle = machines[other].handle(of: theirs) {
                    connections[other][theirs] = Connection(session: session(.responder, other), handle: handle, peer: node,
                                                            peerLink: mine, inbound: true)
                    events.schedule(.connected(node: node, link: mine), at: now + Self.latency)
                } else {
                    events.schedule(.closed(node: node, link: mine, .peerClosed), at: now + Self.latency)
                }
                perform(accepted, at: other)
            case .sendLinkMessage(let link, let message):
                _ = send(message, from: node, on: link)
            case .send(let message, let to, let link):
                if !send(message, from: node, on: link) {
                    perform(machines[node].undeliverable(message, to: to, now: now), at: node)
                }
            case .queue(_, .send(let message, let to)):
                guard let link = link(of: node, to: to), send(message, from: node, on: link) else {
                    perform(machines[node].sendFailed(message, to: to, now: now), at: node)
                    continue
                }
            case .sendCall(let message, let to):
                guard let link = link(of: node, to: to), send(message, from: node, on: link) else {
                    perform(machines[node].callMessageUndeliverable(message, to: to, now: now), at: node)
                    continue
                }
            case .closeConnection(let link, _, _, _):
                close(link, at: node)
            case .linkReady:
                ready[node, default: 0] += 1
            case .armTimer(let timer, let at):
                deadlines[node][timer] = at
                events.schedule(.timer(node: node, timer, at: at), at: max(at, now))
            case .cancelTimer(let timer):
                deadlines[node][timer] = nil
            case .queue(let name, .armTimer(let at)):
                deadlines[node][.queue(name)] = at
                events.schedule(.timer(node: node, .queue(name), at: at), at: max(at, now))
            case .queue("q", .deliver(_, let items)):
                delivered[node, default: []].append(contentsOf: items.map { Array($0.bytes) })
            case .completeCalls(let ended):
                for call in ended { completed[node, default: [:]][call.token] = call.result }
            case .runTasks(let tasks):
                ran[node, default: []].append(contentsOf: tasks)
                for task in tasks {
                    let outcome: CallOutcome = task.function == "echo" ? .success(task.arguments) : .unknownFunction
                    events.schedule(.finished(node: node, task.id, outcome), at: now + simulatedMillisecond)
                }
            case .flushCallsAtEndOfTurn:
                events.schedule(.flushCalls(node: node), at: now)
            case .admitLink, .linkNote, .dialFailedNote, .admissionReport, .queue, .deadLettered, .peerConnected,
                 .peerMovedLink, .peerDisconnected, .member, .cancelTask, .callItemDiscarded:
                break  // in the trace
            case .closeLink, .sendPing, .sendPeerList:
                Issue.record("a link action for a link without stages: \(action)")
            }
        }
    }

    /// A session with ephemeral keys of its own, split from the node's seeded source.
    private mutating func session(_ role: LinkSession.Role, _ node: Int) -> LinkSession {
        // swiftlint:disable:next force_try
        try! LinkSession(role: role, security: .noise(Self.clusterKey), identity: identities[node],
                         handshakeKeys: keys[node].split())
    }

    private func number(_ peer: PeerID) -> Int { peers.firstIndex(of: peer) ?? -1 }

    /// Adds `action` to the trace and the hash (as the simulator hashes it; the records on the
    /// wire are hashed where they are sent).
    private mutating func record(_ action: Action, at node: Int) {
        trace.append((now, node, action))
        hash.add(now)
        hash.add(node)
        let peers = self.peers  // not self: hash is being modified
        hash.add(action) { peers.firstIndex(of: $0) ?? -1 }
    }
}

/// The node machine from the first handshake byte: real sessions, the link stages and the
/// admission inside the machine, to a popped item and returned calls; the same in every run
/// and in every process.
@Suite("NodeMachine: links from the handshake, in memory")
struct NodeHandshakeTests {
    static let hashPrefix = "node-handshake-determinism-hash: "
    static let items = (0..<20).map { [UInt8(truncatingIfNeeded: $0), 0x48] }
    static let arguments = (0..<12).map { [UInt8(truncatingIfNeeded: $0), 0x4B] }

    /// Three nodes link up through their handshakes and hellos (0–3 s); node 0 pushes items
    /// into "q" that node 1 pops, and calls "echo", executed by nodes 1 and 2 (3–6 s).
    static func scenario(seed: UInt64 = 21) -> HandshakeMesh {
        var mesh = HandshakeMesh(size: 3, seed: seed)
        mesh.run(until: 3 * second)
        mesh.pop("q", at: 1, max: 100, waiter: 1)
        mesh.push(items, at: 0, into: "q")
        mesh.callEcho(arguments, at: 0)
        mesh.run(until: 6 * second)
        return mesh
    }

    @Test("Handshakes and hellos bring the links up; items reach a waiting pop; every call returns its echo")
    func fromTheHandshake() {
        let mesh = Self.scenario()
        for n in 0..<3 {
            for other in 0..<3 where other != n {
                #expect(mesh.machines[n].link(to: mesh.peers[other]) != nil, "node \(n) has no link to \(other)")
            }
        }
        #expect((mesh.ready[0] ?? 0) >= 2)
        #expect(Set(mesh.delivered[1] ?? []) == Set(Self.items))
        let results = mesh.completed[0] ?? [:]
        #expect(results.count == Self.arguments.count)
        for (index, bytes) in Self.arguments.enumerated() {
            #expect(results[UInt64(index + 1)] == .success(bytes), "call \(index + 1)")
        }
        #expect(mesh.ran[0] == nil)
        // Each end of each link sent its hello through the stages, with the configured features
        // and the advertised address; node 0 told the others about each other in peer lists.
        let hellos = mesh.trace.compactMap { entry -> Hello? in
            if case .sendLinkMessage(_, .hello(let hello)) = entry.action { hello } else { nil }
        }
        #expect(hellos.count >= 6)
        #expect(hellos.allSatisfy { $0.features & QueueWire.featureReplicas != 0 && $0.listenPort == 7000 })
        #expect(mesh.trace.contains { entry in
            if entry.node == 0, case .sendLinkMessage(_, .peers) = entry.action { true } else { false }
        })
    }

    @Test("A stopping node says goodbye on its links: its peers record that it left")
    func goodbyes() {
        var mesh = Self.scenario()
        mesh.stop(2)
        mesh.run(until: 8 * second)
        let goodbyes = mesh.trace.filter { entry in
            if entry.node == 2, case .sendLinkMessage(_, .goodbye(.leaving, _)) = entry.action { true } else { false }
        }
        #expect(goodbyes.count == 2)
        for n in 0..<2 {
            #expect(mesh.machines[n].link(to: mesh.peers[2]) == nil)
            #expect(mesh.trace.contains { entry in
                if entry.node == n, case .peerDisconnected(let peer, .peerLeft) = entry.action { peer == mesh.peers[2] } else { false }
            }, "node \(n) did not see node 2 leave")
        }
    }

    @Test("Admission: a stalled handshake is evicted for a newer one from its source, a progressing one is not, and one past the limit is refused")
    func admission() {
        var admission = HandshakeAdmissionConfiguration()
        admission.maxPerSource = 1
        var node = NodeMachine<String>(configuration: NodeMachineConfiguration(
            localPeer: peer(1), incarnation: 1, seed: 1, links: LinkStagesConfiguration(admission: admission)))
        _ = node.start(advertising: "n1:7000", bootstrap: [], now: 0)
        let first = node.linkAccepted(LinkID(1), source: "h", now: ms)
        #expect(first.contains(.admitLink(LinkID(1))))
        #expect(first.contains(.armTimer(.link(LinkID(1)), at: ms + 10 * second)))
        let second = node.linkAccepted(LinkID(2), source: "h", now: 2 * ms)
        #expect(second.contains(.admitLink(LinkID(2))))
        #expect(second.contains { action in
            if case .closeConnection(LinkID(1), .dropped, let reason, .debug) = action { reason.contains("newer connection") } else { false }
        })
        _ = node.handshakeProgressed(LinkID(2), now: 3 * ms)
        let third = node.linkAccepted(LinkID(3), source: "h", now: 4 * ms)
        #expect(!third.contains(.admitLink(LinkID(3))))
        #expect(node.handle(of: LinkID(3)) == nil)
        #expect(node.handshakeTotals.refused == 1 && node.handshakeTotals.evicted == 1)
        // Another source is admitted; a failed inbound handshake is counted and closed loudly.
        #expect(node.linkAccepted(LinkID(4), source: "g", now: 5 * ms).contains(.admitLink(LinkID(4))))
        let failed = node.linkFailed(LinkID(4), reason: "bad record", now: 6 * ms)
        #expect(failed.contains(.closeConnection(LinkID(4), how: .failed(duringHandshake: true), reason: "bad record", level: .notice)))
        #expect(node.handshakeTotals.failed == 1)
    }

    @Test("Run twice from one seed in this process: the same actions and bytes, in the same order")
    func sameInThisProcess() {
        let first = Self.scenario()
        let second = Self.scenario()
        #expect(first.trace.count > 300)
        #expect(first.hash == second.hash)
        #expect(Self.scenario(seed: 22).hash != first.hash, "the seed changes nothing")
    }

    @Test("Run in two other processes (their own hash seeds): the same actions and bytes as here")
    func sameAcrossProcesses() throws {
        guard !DeterminismChild.isChild else { return }
        let here = Self.scenario().hash.description
        for lines in try DeterminismChild.hashes(printedBy: "NodeHandshakeTests/childPrintsHash", prefix: Self.hashPrefix) {
            #expect(lines == [here], "this process \(here), the child printed \(lines)")
        }
    }

    @Test("(child) prints the scenario's hash", .enabled(if: DeterminismChild.isChild))
    func childPrintsHash() {
        print(Self.hashPrefix + Self.scenario().hash.description)
    }
}
