import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQReactor
import P2PQWire
import Testing

/// A free UDP port on loopback (bound and released), private to this test run.
func freeUDPPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            _ = bind(fd, pointer, length)
            return getsockname(fd, pointer, &length)
        }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

@Suite("Discovery", .serialized)
struct DiscoveryTests {
    @Test("4 nodes without bootstrap addresses form a full mesh by mDNS alone")
    func meshByDiscovery() async throws {
        let key = ClusterKey.generate()  // a fresh cluster: nodes elsewhere on the port are ignored
        let port = freeUDPPort()
        var nodes: [Node] = []
        for _ in 0..<4 {
            var configuration = testConfiguration(key: key)
            configuration.discovery.enabled = true
            configuration.discovery.port = port
            let node = try Node(configuration: configuration)
            try await node.start()
            nodes.append(node)
        }
        let all = Set(nodes.map(\.peerID))
        try await eventually("a full mesh", timeout: .seconds(10)) {
            for node in nodes where await node.connectedPeers() != all.subtracting([node.peerID]) { return false }
            return true
        }
        for node in nodes { await node.stop() }
    }

    @Test("Nodes of another cluster on the same port are not dialed")
    func otherClusterIgnored() async throws {
        let port = freeUDPPort()
        var nodes: [Node] = []
        for key in [ClusterKey.generate(), ClusterKey.generate()] {
            var configuration = testConfiguration(key: key)
            configuration.discovery.enabled = true
            configuration.discovery.port = port
            let node = try Node(configuration: configuration)
            try await node.start()
            nodes.append(node)
        }
        // Both announce at once and again after a second; give them two seconds.
        try await Task.sleep(for: .seconds(2))
        for node in nodes {
            #expect(await node.connectedPeers().isEmpty)
            #expect(await node.peers().isEmpty, "nothing was dialed")
        }
        for node in nodes { await node.stop() }
    }

    @Test("Discovery refuses an interface other than loopback unless allowed")
    func loopbackOnlyByDefault() async throws {
        var configuration = testConfiguration(key: nil)
        configuration.discovery.enabled = true
        configuration.discovery.port = freeUDPPort()
        configuration.discovery.interfaceAddress = "192.0.2.1"
        let node = try Node(configuration: configuration)
        let result: Result<NodeInfo, NodeError> = await { () async -> Result<NodeInfo, NodeError> in
            do throws(NodeError) { return .success(try await node.start()) } catch { return .failure(error) }
        }()
        guard case .failure(.notLoopback) = result else {
            Issue.record("expected notLoopback, got \(result)")
            await node.stop()
            return
        }
    }
}
