// Only this import of the project on purpose: an application depends on the one product
// P2PQNode, and every type of the public API must come with `import P2PQNode` (this file does
// not compile if one does not). Foundation is imported to check that nothing P2PQNode brings
// clashes with it (swift-metrics' Timer would make `Timer` ambiguous).
import Foundation
import P2PQNode
import Testing

@Suite("import P2PQNode alone")
struct SingleImportTests {
    @Test("One import names every type the API takes or returns: batches, keys, counters, errors, addresses, logger")
    func everyAPITypeIsVisible() async throws {
        var configuration = NodeConfiguration()
        configuration.clusterKey = ClusterKey.generate()
        configuration.discovery.enabled = false
        configuration.listenHost = "127.0.0.1"
        var logger = Logger(label: "single-import")
        logger.logLevel = .critical
        configuration.logger = logger
        configuration.reactor.backend = ReactorBackendChoice.automatic
        let node = try Node(configuration: configuration)
        let info: NodeInfo = try await node.start()
        let address: SocketAddress = info.listenAddress
        let peer: PeerID = info.peerID
        #expect(address.port > 0 && peer == node.peerID)

        let queue = node.queue(named: "single-import")
        var batch = ItemBatch(capacity: 2, bytes: 8)
        batch.append([1, 2, 3, 4])
        batch.append([5, 6, 7, 8])
        try await queue.push(batch)
        let payloads: ItemPayloads = try await queue.popPayloads(max: 2, timeout: .seconds(5))
        #expect(payloads.count == 2)
        let counters: QueueCounters? = await queue.counters()
        #expect(counters != nil)

        let rpc = try await RemoteCall(node: node)
        let fail = rpc.registerInline("fail") { (_: Int) throws -> Int in throw SingleImportFailure() }
        try await rpc.process()
        await #expect(throws: RemoteCallError.self) { try await fail(1) }
        let both: (caller: CallerCounters, executor: ExecutorCounters)? = await rpc.counters()
        #expect(both != nil)
        let members: [MemberStatus] = await node.members()
        #expect(members.isEmpty)
        let encoded = try CompactEncoder().encode(42)
        #expect(try CompactDecoder().decode(Int.self, from: encoded) == 42)
        let _: any Service = node
        let _: Timer.Type = Timer.self
        await node.stop()
    }
}

private struct SingleImportFailure: Error {}
