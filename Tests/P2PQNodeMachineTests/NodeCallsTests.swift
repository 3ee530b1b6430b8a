import Foundation
import P2PQConnectionManager
import P2PQMembership
import P2PQNodeMachine
import P2PQQueue
import P2PQRemoteCall
import P2PQSimulation
import P2PQTestSupport
import P2PQWire
import Testing

/// Node machines with remote calls attached, wired in memory: every action is performed with a
/// fixed latency and hashed. The shell's part that runs a task is simulated: an "echo" task
/// finishes 1 ms after it starts with its arguments as its result. Every node but node 0
/// executes calls.
struct CallMesh {
    typealias Machine = NodeMachine<String>
    typealias Action = NodeAction<String>

    private enum Event {
        case timer(node: Int, NodeTimer, at: UInt64)
        case linkUp(node: Int, link: LinkID, peer: Int, direction: LinkDirection, dialed: String?)
        case dialFailed(node: Int, address: String)
        case membership(node: Int, link: LinkID, from: Int, MembershipMessage)
        case queue(node: Int, link: LinkID, from: Int, QueueMessage)
        case call(node: Int, link: LinkID, from: Int, RemoteCallMessage)
        case heard(node: Int, link: LinkID)
        case peerList(node: Int, link: LinkID, [PeerListEntry<PeerID, String>])
        case flushCalls(node: Int)
        case finished(node: Int, TaskID, CallOutcome)
    }

    static let latency = simulatedMillisecond
    /// The wall clock is the monotonic clock plus this (any fixed value).
    static let wallOffset: UInt64 = 1_700_000_000 * simulatedSecond

    private(set) var machines: [Machine]
    private(set) var now: UInt64 = 0
    private(set) var hash = TraceHash()
    /// Every action, by node, in order.
    private(set) var trace: [(time: UInt64, node: Int, action: Action)] = []
    /// Calls completed, by node and token.
    private(set) var completed: [Int: [UInt64: Result<[UInt8], RemoteCallError>]] = [:]
    /// Items handed to waiting pops of queue "q", by node.
    private(set) var delivered: [Int: [[UInt8]]] = [:]
    /// Tasks run, by node.
    private(set) var ran: [Int: [CallTask]] = [:]
    private var events = EventQueue<Event>()
    private var deadlines: [[NodeTimer: UInt64]]
    private var ends: [[LinkID: (peer: Int, peerLink: LinkID)]]
    private var nextLink: [UInt64]
    /// Nodes whose hellos announce remote-call runs (``WireProtocol/featureCallRuns``).
    private let callRunNodes: Set<Int>
    /// Nodes whose hellos announce result runs (``WireProtocol/featureResultRuns``).
    private let resultRunNodes: Set<Int>

    init(size: Int, seed: UInt64, grantsCredit: Bool = true, caller: CallerConfiguration = CallerConfiguration(),
         callRunNodes: Set<Int> = [], resultRunNodes: Set<Int> = []) {
        self.callRunNodes = callRunNodes
        self.resultRunNodes = resultRunNodes
        var seeds = SplitMix64(seed: seed)
        machines = (0..<size).map { n in
            Machine(configuration: NodeMachineConfiguration(
                localPeer: peer(n), incarnation: UInt64(n + 1) * 1000, seed: seeds.next(),
                connection: ConnectionConfiguration(baseBackoff: 100 * ms, maxBackoff: second, keepaliveInterval: 300 * ms,
                                                    keepaliveTimeout: second, maxPeers: 64)))
        }
        deadlines = Array(repeating: [:], count: size)
        ends = Array(repeating: [:], count: size)
        nextLink = Array(repeating: 1, count: size)
        for n in 0..<size {
            let (attached, actions) = machines[n].attachCalls(queue: "p2pq.calls", caller: caller,
                                                               executor: ExecutorConfiguration(maxConcurrentCalls: 2, grantsCredit: grantsCredit),
                                                               now: now)
            precondition(attached)
            perform(actions, at: n)
            if n > 0 {
                machines[n].registerCallFunction("echo")
                perform(machines[n].setCallProcessing(true, now: now), at: n)
            }
            perform(machines[n].start(advertising: "n\(n)", bootstrap: n == 0 ? [] : ["n0"], now: now), at: n)
        }
    }

    private var wallClock: UInt64 { now &+ Self.wallOffset }

    // MARK: The API

    /// Node `n` calls "echo" with each of `arguments`, the calls named by tokens 1, 2, ….
    mutating func callEcho(_ arguments: [[UInt8]], at n: Int) {
        let requests = arguments.enumerated().map { index, bytes in
            NodeCallRequest(function: "echo", arguments: bytes, timeout: 10 * second, token: UInt64(index + 1))
        }
        perform(machines[n].call(requests, now: now, wallClock: wallClock), at: n)
    }

    /// Node `n` calls "echo" once with `arguments`, the call named by `token`.
    mutating func callEcho(_ arguments: [UInt8], token: UInt64, at n: Int) {
        let request = NodeCallRequest(function: "echo", arguments: arguments, timeout: 10 * second, token: token)
        perform(machines[n].call(request, now: now, wallClock: wallClock), at: n)
    }

    /// Node `n` handles a remote-call message from `peer`, whatever links it keeps.
    mutating func receive(_ message: RemoteCallMessage, from peer: PeerID, at n: Int) {
        perform(machines[n].received(message, from: peer, now: now, wallClock: wallClock), at: n)
    }

    mutating func push(_ items: [[UInt8]], at n: Int, into queue: String) -> PushOutcome? {
        guard let (outcome, actions) = machines[n].push(items, into: queue, now: now) else { return nil }
        perform(actions, at: n)
        return outcome
    }

    mutating func pop(_ queue: String, at n: Int, max: Int, waiter: UInt64) -> [[UInt8]] {
        guard let (items, actions) = machines[n].pop(queue, max: max, waiter: WaiterID(waiter), now: now) else { return [] }
        perform(actions, at: n)
        return items.map { Array($0.bytes) }
    }

    /// Handles every event due until `end`.
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
            guard deadlines[node][timer] == at else { return }  // re-armed or cancelled since
            deadlines[node][timer] = nil
            perform(machines[node].tick(timer, now: now), at: node)
        case .linkUp(let node, let link, let other, let direction, let dialed):
            guard ends[node][link] != nil else { return }
            perform(machines[node].linkUp(link, peer: peer(other), direction: direction, incarnation: UInt64(other + 1) * 1000,
                                          features: QueueWire.featureOwnershipHandover
                                              | (callRunNodes.contains(other) ? WireProtocol.featureCallRuns : 0)
                                              | (resultRunNodes.contains(other) ? WireProtocol.featureResultRuns : 0),
                                          peerAddress: "n\(other)",
                                          dialedAddress: dialed, now: now), at: node)
        case .dialFailed(let node, let address):
            perform(machines[node].dialFailed(address, now: now), at: node)
        case .membership(let node, let link, let from, let message):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peer(from), now: now), at: node)
        case .queue(let node, let link, let from, let message):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peer(from), now: now), at: node)
        case .call(let node, let link, let from, let message):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].received(message, from: peer(from), now: now, wallClock: wallClock), at: node)
        case .heard(let node, let link):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
        case .peerList(let node, let link, let entries):
            guard ends[node][link] != nil else { return }
            machines[node].heard(link, now: now)
            perform(machines[node].peerListReceived(entries, on: link, now: now), at: node)
        case .flushCalls(let node):
            perform(machines[node].flushCalls(now: now, wallClock: wallClock), at: node)
        case .finished(let node, let task, let outcome):
            perform(machines[node].callsFinished([(task, outcome)], now: now), at: node)
        }
    }

    /// The link `node` keeps to `to`, with the other end's ID.
    private func end(of node: Int, to other: Int) -> (link: LinkID, peerLink: LinkID)? {
        guard let link = machines[node].link(to: peer(other)), let end = ends[node][link] else { return nil }
        return (link, end.peerLink)
    }

    private mutating func perform(_ actions: [Action], at node: Int) {
        let latency = Self.latency
        for action in actions {
            record(action, at: node)
            switch action {
            case .dial(let address):
                guard let other = Int(address.dropFirst()), other < machines.count, other != node else {
                    events.schedule(.dialFailed(node: node, address: address), at: now + latency)
                    continue
                }
                let mine = LinkID(nextLink[node]), theirs = LinkID(nextLink[other])
                nextLink[node] += 1
                nextLink[other] += 1
                ends[node][mine] = (other, theirs)
                ends[other][theirs] = (node, mine)
                events.schedule(.linkUp(node: other, link: theirs, peer: node, direction: .inbound, dialed: nil), at: now + 2 * latency)
                events.schedule(.linkUp(node: node, link: mine, peer: other, direction: .outbound, dialed: address),
                                at: now + 3 * latency)
            case .closeLink(let link, _):
                ends[node][link] = nil
            case .sendPing(let link, _):
                guard let end = ends[node][link] else { continue }
                events.schedule(.heard(node: end.peer, link: end.peerLink), at: now + latency)
                events.schedule(.heard(node: node, link: link), at: now + 2 * latency)  // the pong
            case .sendPeerList(let link, let entries):
                guard let end = ends[node][link] else { continue }
                events.schedule(.peerList(node: end.peer, link: end.peerLink, entries), at: now + latency)
            case .send(let message, let to, let link):
                guard let end = ends[node][link] else {
                    perform(machines[node].undeliverable(message, to: to, now: now), at: node)
                    continue
                }
                events.schedule(.membership(node: end.peer, link: end.peerLink, from: node, message), at: now + latency)
            case .armTimer(let timer, let at):
                deadlines[node][timer] = at
                events.schedule(.timer(node: node, timer, at: at), at: max(at, now))
            case .cancelTimer(let timer):
                deadlines[node][timer] = nil
            case .queue(_, .send(let message, let to)):
                guard let other = number(to), let (_, peerLink) = end(of: node, to: other) else {
                    perform(machines[node].sendFailed(message, to: to, now: now), at: node)
                    continue
                }
                events.schedule(.queue(node: other, link: peerLink, from: node, message), at: now + latency)
            case .queue(let name, .armTimer(let at)):
                deadlines[node][.queue(name)] = at
                events.schedule(.timer(node: node, .queue(name), at: at), at: max(at, now))
            case .queue("q", .deliver(_, let items)):
                delivered[node, default: []].append(contentsOf: items.map { Array($0.bytes) })
            case .sendCall(let message, let to):
                guard let other = number(to), let (_, peerLink) = end(of: node, to: other) else {
                    perform(machines[node].callMessageUndeliverable(message, to: to, now: now), at: node)
                    continue
                }
                events.schedule(.call(node: other, link: peerLink, from: node, message), at: now + latency)
            case .completeCalls(let ended):
                for call in ended { completed[node, default: [:]][call.token] = call.result }
            case .runTasks(let tasks):
                ran[node, default: []].append(contentsOf: tasks)
                for task in tasks {
                    let outcome: CallOutcome = task.function == "echo" ? .success(task.arguments) : .unknownFunction
                    events.schedule(.finished(node: node, task.id, outcome), at: now + simulatedMillisecond)
                }
            case .flushCallsAtEndOfTurn:
                // After the events already due now: the end of this "turn".
                events.schedule(.flushCalls(node: node), at: now)
            case .queue, .deadLettered, .peerConnected, .peerMovedLink, .peerDisconnected, .member, .cancelTask,
                 .callItemDiscarded:
                break  // in the trace
            case .admitLink, .sendLinkMessage, .closeConnection, .linkNote, .linkReady, .dialFailedNote, .admissionReport:
                break  // these links have no stages in the machine
            }
        }
    }

    private func number(_ peer: PeerID) -> Int? {
        (0..<machines.count).first { P2PQNodeMachineTests.peer($0) == peer }
    }

    /// Adds `action` to the trace and the hash: messages as their wire bytes, items as their
    /// bytes (a description could show a dictionary, whose order differs between processes).
    private mutating func record(_ action: Action, at node: Int) {
        trace.append((now, node, action))
        hash.add(now)
        hash.add(node)
        switch action {
        case .send(let message, let to, let link):
            hash.add(1)
            hash.add(number(to) ?? -1)
            hash.add(link.rawValue)
            if let bytes = try? message.encoded() { hash.add(bytes: bytes) }
        case .queue(let name, .send(let message, let to)):
            hash.add(2)
            hash.add(bytes: name.utf8)
            hash.add(number(to) ?? -1)
            var bytes: [UInt8] = []
            if (try? MessageEncoder.encode(message, into: &bytes)) != nil { hash.add(bytes: bytes) }
        case .queue(let name, .deliver(let waiter, let items)):
            hash.add(3)
            hash.add(bytes: name.utf8)
            hash.add(waiter.rawValue)
            for item in items { hash.add(bytes: item.bytes) }
        case .sendCall(let message, let to):
            hash.add(4)
            hash.add(number(to) ?? -1)
            if let bytes = try? message.encoded() { hash.add(bytes: bytes) }
        case .runTasks(let tasks):
            hash.add(5)
            for task in tasks {
                hash.add(task.id.rawValue)
                hash.add(task.call.sequence)
                hash.add(bytes: task.arguments)
            }
        case .completeCalls(let ended):
            hash.add(6)
            for call in ended {
                hash.add(call.token)
                hash.add(bytes: "\(call.result)".utf8)
            }
        case .peerConnected(let peer, let link):
            hash.add(7)
            hash.add(number(peer) ?? -1)
            hash.add(link.rawValue)
        case .sendPeerList(let link, let entries):
            hash.add(8)
            hash.add(link.rawValue)
            for entry in entries {
                hash.add(number(entry.peer) ?? -1)
                hash.add(bytes: entry.address.utf8)
            }
        case .member(let event):
            hash.add(9)
            switch event {
            case .joined(let peer), .restarted(let peer), .suspect(let peer), .alive(let peer), .dead(let peer), .left(let peer):
                hash.add(bytes: "\(event)".prefix(6).utf8)
                hash.add(number(peer) ?? -1)
            case .refutedDeath:
                hash.add(bytes: "refuted".utf8)
            }
        case .peerDisconnected(let peer, let reason):
            hash.add(10)
            hash.add(number(peer) ?? -1)
            hash.add(bytes: "\(reason)".utf8)
        case .armTimer(let timer, let at):
            hash.add(11)
            hash.add(bytes: "\(timer)".utf8)
            hash.add(at)
        case .queue(let name, .armTimer(let at)):
            hash.add(12)
            hash.add(bytes: name.utf8)
            hash.add(at)
        case .dial, .closeLink, .sendPing, .cancelTimer, .peerMovedLink, .queue, .deadLettered, .cancelTask,
             .callItemDiscarded, .flushCallsAtEndOfTurn, .admitLink, .sendLinkMessage, .closeConnection, .linkNote,
             .linkReady, .dialFailedNote, .admissionReport:
            hash.add(bytes: "\(action)".utf8)
        }
    }
}

/// Node machines with their caller and executor go from link-up to a popped item and returned
/// calls, the same way in every run and every process.
@Suite("NodeMachine: remote calls as parts of the node machine")
struct NodeCallsTests {
    static let hashPrefix = "node-calls-determinism-hash: "
    static let items = (0..<40).map { [UInt8(truncatingIfNeeded: $0), 0x51] }
    static let arguments = (0..<30).map { [UInt8(truncatingIfNeeded: $0), 0xEC] }

    /// Three nodes link up (0–3 s); node 0 pushes items into "q" that node 1 pops, and calls
    /// "echo" 30 times, executed by nodes 1 and 2 (3–6 s).
    static func scenario(seed: UInt64 = 11) -> CallMesh {
        var mesh = CallMesh(size: 3, seed: seed)
        mesh.run(until: 3 * second)
        _ = mesh.pop("q", at: 1, max: 100, waiter: 1)
        _ = mesh.push(items, at: 0, into: "q")
        mesh.callEcho(arguments, at: 0)
        mesh.run(until: 6 * second)
        return mesh
    }

    @Test("Linked peers are offered credit; items reach a waiting pop; every call returns its echo, run by a peer")
    func popsAndCalls() {
        let mesh = Self.scenario()
        // Each link up reaches the executors: they offer credit to every linked node.
        for n in 1..<3 {
            let credited = Set(mesh.trace.compactMap { entry -> PeerID? in
                guard entry.node == n, case .sendCall(.credit, let to) = entry.action else { return nil }
                return to
            })
            #expect(credited.contains(peer(0)), "node \(n) credited \(credited)")
        }
        #expect(Set(mesh.delivered[1] ?? []) == Set(Self.items))
        let results = mesh.completed[0] ?? [:]
        #expect(results.count == Self.arguments.count)
        for (index, bytes) in Self.arguments.enumerated() {
            #expect(results[UInt64(index + 1)] == .success(bytes), "call \(index + 1): \(String(describing: results[UInt64(index + 1)]))")
        }
        // Node 0 does not execute: its calls ran at its peers, each once.
        #expect(mesh.ran[0] == nil)
        let ran = (mesh.ran[1] ?? []) + (mesh.ran[2] ?? [])
        #expect(ran.count == Self.arguments.count)
        #expect(Set(ran.map(\.arguments)) == Set(Self.arguments))
        #expect(mesh.machines[0].callsInFlight == 0)
    }

    @Test("Direct calls go as runs to a peer whose hello has the call-runs bit, as single items to one without it")
    func runsOnlyToPeersThatKnowThem() {
        var mesh = CallMesh(size: 3, seed: 11, callRunNodes: [1])
        mesh.run(until: 3 * second)
        mesh.callEcho(Self.arguments, at: 0)
        mesh.run(until: 6 * second)
        var runsTo: [Int: Int] = [:], itemsTo: [Int: Int] = [:]
        for entry in mesh.trace where entry.node == 0 {
            guard case .sendCall(let message, let to) = entry.action, let n = (0..<3).first(where: { peer($0) == to }) else { continue }
            switch message {
            case .directRun(let run): runsTo[n, default: 0] += run.count
            case .direct(let items): itemsTo[n, default: 0] += items.count
            default: break
            }
        }
        #expect(runsTo.keys.sorted() == [1] && itemsTo.keys.sorted() == [2], "runs \(runsTo), items \(itemsTo)")
        #expect((runsTo[1] ?? 0) + (itemsTo[2] ?? 0) == Self.arguments.count)
        let results = mesh.completed[0] ?? [:]
        for (index, bytes) in Self.arguments.enumerated() {
            #expect(results[UInt64(index + 1)] == .success(bytes), "call \(index + 1)")
        }
        #expect(mesh.machines[0].callsInFlight == 0)
    }

    @Test("Results of consecutive calls go back as result runs to a caller whose hello has the result-runs bit, as entries to one without it")
    func resultRunsOnlyToCallersThatKnowThem() {
        for callerKnowsRuns in [true, false] {
            var mesh = CallMesh(size: 3, seed: 11, callRunNodes: [0, 1, 2], resultRunNodes: callerKnowsRuns ? [0] : [])
            mesh.run(until: 3 * second)
            mesh.callEcho(Self.arguments, at: 0)
            mesh.run(until: 6 * second)
            var inRuns = 0, asEntries = 0
            for entry in mesh.trace where entry.node != 0 {
                guard case .sendCall(let message, let to) = entry.action, to == peer(0) else { continue }
                switch message {
                case .resultRun(let run):
                    inRuns += run.outcomes.count
                    #expect(run.outcomes.count >= 2, "a run of one result")
                case .results(let entries): asEntries += entries.count
                default: break
                }
            }
            if callerKnowsRuns {
                // Each executor ran one block of consecutive calls: all of their results are runs.
                #expect(inRuns == Self.arguments.count && asEntries == 0, "runs \(inRuns), entries \(asEntries)")
            } else {
                #expect(inRuns == 0 && asEntries == Self.arguments.count, "runs \(inRuns), entries \(asEntries)")
            }
            let results = mesh.completed[0] ?? [:]
            for (index, bytes) in Self.arguments.enumerated() {
                #expect(results[UInt64(index + 1)] == .success(bytes), "call \(index + 1), caller knows runs: \(callerKnowsRuns)")
            }
            #expect(mesh.machines[0].callsInFlight == 0)
            #expect(mesh.machines[0].caller.counters.refusedResults == 0)
        }
    }

    @Test("Without credit, a call's item goes through the call queue to a peer's waiting executor")
    func callsThroughTheQueue() {
        var mesh = CallMesh(size: 2, seed: 3, grantsCredit: false)
        mesh.run(until: 3 * second)
        mesh.callEcho([[7, 7], [8, 8]], at: 0)
        mesh.run(until: 6 * second)
        #expect(mesh.completed[0]?[1] == .success([7, 7]))
        #expect(mesh.completed[0]?[2] == .success([8, 8]))
        #expect(mesh.ran[1]?.count == 2)
        #expect(mesh.machines[0].caller.counters.pushes == 2)
        #expect(mesh.machines[0].caller.counters.direct == 0)
        // The executor's waiting pops stay inside the machine: no delivery reaches the shell.
        #expect(!mesh.trace.contains { if case .queue("p2pq.calls", .deliver) = $0.action { true } else { false } })
    }

    @Test("Calls beyond the caller's outstanding limit wait for room and then return, batched or one by one")
    func parkedForTheOutstandingLimit() {
        var limited = CallerConfiguration()
        limited.maxOutstandingCalls = 3
        var mesh = CallMesh(size: 2, seed: 5, caller: limited)
        mesh.run(until: 3 * second)
        mesh.callEcho(Self.arguments, at: 0)  // tokens 1...30, one batch
        for index in 0..<5 { mesh.callEcho([UInt8(index), 0x5A], token: UInt64(100 + index), at: 0) }
        #expect(mesh.machines[0].callsInFlight == 35)
        #expect(mesh.machines[0].caller.counters.refused > 0, "the limit was never reached")
        mesh.run(until: 20 * second)
        let results = mesh.completed[0] ?? [:]
        for (index, bytes) in Self.arguments.enumerated() {
            #expect(results[UInt64(index + 1)] == .success(bytes), "call \(index + 1): \(String(describing: results[UInt64(index + 1)]))")
        }
        for index in 0..<5 {
            #expect(results[UInt64(100 + index)] == .success([UInt8(index), 0x5A]), "call \(100 + index)")
        }
        #expect(results.count == 35)
        #expect(mesh.machines[0].callsInFlight == 0)
        #expect(mesh.ran[1]?.count == 35, "each call ran once")
    }

    @Test("Credit from a peer with no link (it came on a link being closed) is ignored: no call is sent there")
    func creditWithoutLink() {
        var mesh = CallMesh(size: 2, seed: 8)
        mesh.run(until: 3 * second)
        let stranger = peer(7)
        #expect(mesh.machines[0].link(to: stranger) == nil)
        mesh.receive(.credit(1000), from: stranger, at: 0)
        mesh.callEcho(Self.arguments, at: 0)
        mesh.run(until: 6 * second)
        let toStranger = mesh.trace.filter { entry in
            if entry.node == 0, case .sendCall(_, let to) = entry.action { to == stranger } else { false }
        }
        #expect(toStranger.isEmpty, "\(toStranger.count) messages to a peer with no link")
        #expect(mesh.machines[0].caller.counters.retries == 0)
        #expect(mesh.completed[0]?.count == Self.arguments.count)
    }

    @Test("Run twice from one seed in this process: the same actions, in the same order")
    func sameInThisProcess() {
        let first = Self.scenario()
        let second = Self.scenario()
        #expect(first.trace.count > 500)
        #expect(first.hash == second.hash)
        #expect(Self.scenario(seed: 12).hash != first.hash, "the seed changes nothing")
    }

    @Test("Run in two other processes (their own hash seeds): the same trace as here")
    func sameAcrossProcesses() throws {
        guard !DeterminismChild.isChild else { return }
        let here = Self.scenario().hash.description
        for lines in try DeterminismChild.hashes(printedBy: "NodeCallsTests/childPrintsHash", prefix: Self.hashPrefix) {
            #expect(lines == [here], "this process \(here), the child printed \(lines)")
        }
    }

    /// What the child processes run.
    @Test("(child) prints the scenario's hash", .enabled(if: DeterminismChild.isChild))
    func childPrintsHash() {
        print(Self.hashPrefix + Self.scenario().hash.description)
    }
}
