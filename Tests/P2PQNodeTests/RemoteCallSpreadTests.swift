import P2PQLink
@testable import P2PQNode
import P2PQRemoteCall
import Synchronization
import Testing

/// Calls run per node.
private final class PerNode: Sendable {
    private let counts: Mutex<[Int]>
    init(_ nodes: Int) { counts = Mutex(Array(repeating: 0, count: nodes)) }
    func add(_ node: Int) { counts.withLock { $0[node] += 1 } }
    var all: [Int] { counts.withLock { $0 } }
}

@Suite("Remote calls spread over every executor", .serialized)
struct RemoteCallSpreadTests {
    @Test("200 short calls from a submit-only node run on 4 executors, each within ±25 % of the mean, every one sent straight to its executor, also when the caller attached after the executors offered credit")
    func shortCallsSpreadOverFourExecutors() async throws {
        let nodes = try await startMesh(5, key: ClusterKey.generate())
        let counts = PerNode(4)
        // The executors first: they offer credit to every linked node at once, before the
        // caller has remote calls attached (it keeps that credit for when it does).
        for index in 1...4 {
            let rpc = try await RemoteCall(node: nodes[index], maxConcurrentCalls: 4)
            rpc.register("work") { (n: Int) async throws -> Int in
                counts.add(index - 1)
                try await Task.sleep(for: .milliseconds(2))
                return n
            }
            try await rpc.process()
        }
        try await Task.sleep(for: .milliseconds(100))
        let caller = try await RemoteCall(node: nodes[0], maxConcurrentCalls: 4)
        let work = caller.function("work", arguments: Int.self, result: Int.self)
        // As `p2pq pi` makes them: one task per call, all in flight at once.
        let results = await withTaskGroup(of: (Int, Int?).self) { group in
            for n in 0..<200 { group.addTask { (n, try? await work(n)) } }
            var all = Array(repeating: -1, count: 200)
            for await (n, value) in group { all[n] = value ?? -1 }
            return all
        }
        #expect(results == Array(0..<200))
        let perNode = counts.all
        #expect(perNode.reduce(0, +) == 200)
        #expect(perNode.allSatisfy { $0 >= 37 && $0 <= 63 }, "calls per executor: \(perNode)")
        // Every call went in one hop on credit, none through the queue (in-process nodes
        // also spread queued calls, but separate processes did not: `p2pq pi`).
        let counters = try #require(await caller.counters()).caller
        #expect(counters.direct == 200 && counters.pushes == 200, "\(counters)")
        for node in nodes { await node.stop() }
    }
}
