import Foundation
import P2PQLink
import P2PQNode
import Synchronization

/// With ``OperationsConfiguration/dashboardPull``: every few seconds, each member that told
/// this node its operations address is asked for its own `/dashboard.json` (with this
/// endpoint's first token), so that the dashboard shows its queues, flows and calls as it
/// measures them, not only what it gossips. Bounded: one request per member per round, a
/// timeout, a body limit, and answers older than a few rounds are dropped.
final class DashboardPuller: Sendable {
    struct Pulled: Sendable {
        var snapshot: DashboardSnapshot
        var at: ContinuousClock.Instant
    }
    private let pulled = Mutex<[String: Pulled]>([:])
    private let task = Mutex<Task<Void, Never>?>(nil)
    let interval: Duration
    let token: OperationsToken?
    static let maxBody = 4 << 20
    static let maxMembers = 64

    init(interval: Duration, token: OperationsToken?) {
        self.interval = interval
        self.token = token
    }

    func start(node: Node) {
        let started = Task { [self] in
            while !Task.isCancelled {
                await round(node: node)
                try? await Task.sleep(for: interval)
            }
        }
        task.withLock { $0 = started }
    }

    func stop() async {
        let running = task.withLock { task in
            defer { task = nil }
            return task
        }
        running?.cancel()
        await running?.value
    }

    private func round(node: Node) async {
        guard let own = await node.dashboard() else { return }
        let targets = own.members.filter { $0.state == "alive" || $0.state == "suspect" }
            .compactMap { member in member.operations.map { (member.peerID, $0) } }.prefix(Self.maxMembers)
        await withTaskGroup(of: (String, DashboardSnapshot?).self) { group in
            for (peer, address) in targets {
                group.addTask { [self] in (peer, await fetch(address)) }
            }
            for await (peer, snapshot) in group {
                // Only a member's own word about itself is kept.
                guard let snapshot, snapshot.peerID == peer else { continue }
                pulled.withLock { $0[peer] = Pulled(snapshot: snapshot, at: .now) }
            }
        }
        let stale = ContinuousClock.now - interval * 3
        let current = Set(targets.map(\.0))
        pulled.withLock { $0 = $0.filter { current.contains($0.key) && $0.value.at > stale } }
    }

    private func fetch(_ address: String) async -> DashboardSnapshot? {
        let headers = token.map { [("Authorization", "Bearer \($0.text)")] } ?? []
        guard let response = try? await OperationsClient.send("http://\(address)/dashboard.json", headers: headers,
                                                              timeout: max(.seconds(1), interval), maxResponseBytes: Self.maxBody),
              response.status == 200 else { return nil }
        let data = Data(response.body)
        return try? JSONDecoder().decode(DashboardSnapshot.self, from: data)
    }

    /// `own` with each pulled member's queue lines, flows to and from it and calls, as it measured
    /// them (aligned to `own`'s sample times, to the nearest second).
    func merged(_ own: DashboardSnapshot) -> DashboardSnapshot {
        let pulled = self.pulled.withLock { $0 }
        guard !pulled.isEmpty else { return own }
        var out = own
        let slots = own.times.map { Int($0.rounded()) }
        func align<T>(_ values: [T?], _ times: [Double]) -> [T?] {
            var bySecond: [Int: T] = [:]
            for (time, value) in zip(times, values) { if let value { bySecond[Int(time.rounded())] = value } }
            return slots.map { bySecond[$0] ?? bySecond[$0 - 1] ?? bySecond[$0 + 1] }
        }
        for (peer, entry) in pulled.sorted(by: { $0.key < $1.key }) {
            let theirs = entry.snapshot
            for queue in theirs.queues where queue.peerID == peer {
                out.queues.removeAll { $0.peerID == peer && $0.queue == queue.queue }
                var line = queue
                line.lengths = align(queue.lengths, theirs.times)
                line.pops = align(queue.pops, theirs.times)
                out.queues.append(line)
            }
            // Its transfers both ways: a node without an endpoint (a producer embedded in an
            // application) is seen through the members it sent to.
            for flow in theirs.flows where flow.from == peer || flow.to == peer {
                out.flows.removeAll { $0.from == flow.from && $0.to == flow.to }
                var aligned = flow
                aligned.series = align(flow.series, theirs.times)
                out.flows.append(aligned)
            }
            for calls in theirs.calls where calls.peerID == peer {
                var aligned = calls
                aligned.executed = align(calls.executed, theirs.times)
                out.calls.append(aligned)
            }
        }
        out.queues.sort { ($0.queue, $0.peerID) < ($1.queue, $1.peerID) }
        out.flows.sort { ($0.from, $0.to) < ($1.from, $1.to) }
        out.pulled = pulled.keys.sorted()
        return out
    }
}
