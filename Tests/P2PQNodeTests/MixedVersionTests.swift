import Foundation
import P2PQLink
@testable import P2PQNode
import Testing

@Suite("Protocol versions 1 and 2 in one cluster", .serialized)
struct MixedVersionTests {
    let key = ClusterKey.generate()

    func start(version1: Bool, aes: Bool, bootstrap: NodeInfo?) async throws -> (Node, NodeInfo) {
        var configuration = testConfiguration(key: key, bootstrap: bootstrap.map { ["\($0.listenAddress)"] } ?? [])
        if version1 { configuration.protocolVersions = 1...1 }
        configuration.aesInstructions = aes
        let node = try Node(configuration: configuration)
        return (node, try await node.start())
    }

    @Test("Version 1 and version 2 nodes (with and without AES instructions) mesh, and items pushed at one are popped at another across versions")
    func mixedCluster() async throws {
        // b (version 1) dials a (version 2), c (version 2) dials b: both directions of a
        // mixed-version handshake; peer exchange then adds the others, d dials c.
        let (a, aInfo) = try await start(version1: false, aes: true, bootstrap: nil)
        let (b, bInfo) = try await start(version1: true, aes: true, bootstrap: aInfo)
        let (c, cInfo) = try await start(version1: false, aes: false, bootstrap: bInfo)
        let (d, _) = try await start(version1: false, aes: true, bootstrap: cInfo)
        let nodes = [a, b, c, d]
        defer { for node in nodes { Task { await node.stop() } } }
        let everyone = Set(nodes.map(\.peerID))
        try await eventually("a full mesh across versions") {
            for node in nodes where await node.connectedPeers() != everyone.subtracting([node.peerID]) { return false }
            return true
        }
        for (index, (from, to)) in [(a, b), (b, a), (b, c), (c, b), (d, a), (a, d)].enumerated() {
            let name = "mixed-\(index)"
            let queue = to.queue(named: name)
            async let popped = queue.pop(max: 3, timeout: .seconds(10))
            try await Task.sleep(for: .milliseconds(50))
            try await from.queue(named: name).push([UInt8(index), 1], [UInt8(index), 2], [UInt8(index), 3])
            var got = try await popped
            while got.count < 3 {
                let more = try await queue.pop(max: 3 - got.count, timeout: .seconds(10))
                if more.isEmpty { break }
                got += more
            }
            #expect(got.sorted { $0.lexicographicallyPrecedes($1) } == [[UInt8(index), 1], [UInt8(index), 2], [UInt8(index), 3]], "\(name)")
        }
        // Nothing was refused on the way (a version 1 node refuses a hello of version 2).
        for node in nodes { #expect(await node.connectedPeers() == everyone.subtracting([node.peerID])) }
    }
}
