@testable import P2PQNode
import P2PQQueue
import P2PQWire
import Testing

private func encode(_ n: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(n).bigEndian, Array.init) }
private func decode(_ bytes: [UInt8]) -> Int { Int(bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) }

@Suite("Graceful stop: items a holder passed on", .serialized)
struct DrainHandOnNodeTests {
    let key = ClusterKey.generate()

    @Test("An owner stops after its holder passed its items on (custody news still batched): the node holding them becomes their owner")
    func passedOnGetsOwner() async throws {
        // Notices wait an hour: the holder's custody news is still pending when the owner stops.
        let nodes = try await startMesh(3, key: key) { configuration in
            configuration.queue.confirmDelay = 3600 * 1_000_000_000
            configuration.queue.confirmBatch = 1 << 30
            // The stop waits for the 100 notices' acks: not a race against the suite's load.
            configuration.drainTimeout = .seconds(10)
        }
        let (owner, holder, third) = (nodes[0], nodes[1], nodes[2])
        let queues = nodes.map { $0.queue(named: "c") }
        for queue in queues { _ = await queue.size() }
        let total = 100
        try await queues[0].push(contentsOf: (0..<total).map(encode))
        // The holder takes them all, then the third node takes them from the holder.
        let (holderID, thirdID) = (holder.peerID, third.peerID)
        await owner.onCoreForTesting { core in
            core.queues.receiveForTesting(.stealRequest(queue: "c", requestID: 1, maxItems: UInt32(total), thiefRate: 100), from: holderID)
        }
        try await eventually("the holder acknowledged them") { await queues[0].counters()?.transferredOut == total }
        await holder.onCoreForTesting { core in
            core.queues.receiveForTesting(.stealRequest(queue: "c", requestID: 1, maxItems: UInt32(total), thiefRate: 100), from: thirdID)
        }
        try await eventually("the third node acknowledged them") { await queues[1].counters()?.transferredOut == total }
        #expect(await queues[2].size().local == total)
        let report = await owner.stop()
        #expect(report.ownedHeldElsewhere == 0 && !report.timedOut, "\(report)")
        #expect(await queues[2].counters()?.ownershipAdopted == total)
        var popped: [Int] = []
        while popped.count < total, let items = try? await queues[2].pop(max: total, timeout: .seconds(1)), !items.isEmpty {
            popped += items.map(decode)
        }
        #expect(popped == Array(0..<total))
        for node in nodes[1...] { await node.stop() }
    }
}
