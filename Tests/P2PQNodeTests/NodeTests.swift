import Foundation
import Glibc
import P2PQLink
@testable import P2PQNode
import P2PQReactor
import P2PQWire
import Testing

@Suite("Nodes and links", .serialized)
struct NodeTests {
    let key = ClusterKey.generate()

    /// The reason of the next link `node` rejects.
    func firstRejection(seenBy node: Node) async -> String? {
        for await event in node.events {
            if case .linkRejected(_, let reason) = event { return reason }
        }
        return nil
    }

    @Test("5 nodes, each bootstrapped only to the previous one, end as a full mesh")
    func fullMesh() async throws {
        var nodes: [Node] = []
        defer { for node in nodes { Task { await node.stop() } } }
        var previous: String?
        for _ in 0..<5 {
            let node = try Node(configuration: testConfiguration(key: key, bootstrap: previous.map { [$0] } ?? []))
            let info = try await node.start()
            previous = "\(info.listenAddress)"
            nodes.append(node)
        }
        let everyone = Set(nodes.map(\.peerID))
        try await eventually("a full mesh") {
            for node in nodes {
                let peers = await node.connectedPeers()
                if peers != everyone.subtracting([node.peerID]) { return false }
            }
            return true
        }
        // Exactly one link per pair: 4 links on each node.
        for node in nodes {
            #expect(await node.linkCount() == 4)
        }
        for node in nodes { await node.stop() }
        nodes.removeAll()
    }

    @Test("A running node released without stop() stops its loop: no crash, its peer sees the link close")
    func releasedWithoutStop() async throws {
        let a = try Node(configuration: testConfiguration(key: key))
        let info = try await a.start()
        var b: Node? = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        _ = try await b?.start()
        let bID = try #require(b?.peerID)
        try await eventually("linked") { await a.connectedPeers() == [bID] }
        // Queue and timer traffic in flight while the last reference goes.
        try await b?.queue(named: "q").push([1, 2, 3])
        b = nil
        try await eventually("a sees the link close") { await a.connectedPeers().isEmpty }
        // Events for the released node's sockets and timers would have crashed by now.
        try await Task.sleep(for: .milliseconds(500))
        await a.stop()
    }

    @Test("Two nodes that dial each other at the same moment end with one link")
    func simultaneousDial() async throws {
        for _ in 0..<3 {
            let ports = freePorts(2)
            let a = try Node(configuration: testConfiguration(key: key, bootstrap: ["127.0.0.1:\(ports[1])"], port: ports[0]))
            let b = try Node(configuration: testConfiguration(key: key, bootstrap: ["127.0.0.1:\(ports[0])"], port: ports[1]))
            async let startA = a.start()
            async let startB = b.start()
            _ = try await (startA, startB)
            try await eventually("one link each way") {
                let (pa, pb) = (await a.connectedPeers(), await b.connectedPeers())
                let (la, lb) = (await a.linkCount(), await b.linkCount())
                return pa == [b.peerID] && pb == [a.peerID] && la == 1 && lb == 1
            }
            // And it stays that way.
            try await Task.sleep(for: .milliseconds(300))
            #expect(await a.linkCount() == 1)
            #expect(await b.linkCount() == 1)
            await a.stop()
            await b.stop()
        }
    }

    @Test("A node with a wrong cluster key is refused and delivers nothing")
    func wrongKey() async throws {
        let good = try Node(configuration: testConfiguration(key: key))
        let info = try await good.start()
        let received = LockedCounter()
        await good.onCoreForTesting { core in core.messageHandler = { _, _, _ in received.increment() } }
        let intruder = try Node(configuration: testConfiguration(key: ClusterKey.generate(), bootstrap: ["\(info.listenAddress)"]))
        try await intruder.start()
        let rejected = await firstRejection(seenBy: good)
        #expect(rejected?.contains("cluster key") == true, "reason: \(rejected ?? "none")")
        try await Task.sleep(for: .milliseconds(300))
        #expect(await good.connectedPeers().isEmpty)
        #expect(await intruder.connectedPeers().isEmpty)
        #expect(received.value == 0)
        await intruder.stop()
        await good.stop()
    }

    @Test("Nodes forcing AES-GCM mesh and carry queue items; a node forcing ChaCha20-Poly1305 is refused by them")
    func aesGCMLinks() async throws {
        var aes = testConfiguration(key: key)
        aes.linkCipher = .aesGCM
        let a = try Node(configuration: aes)
        let info = try await a.start()
        aes.bootstrap = ["\(info.listenAddress)"]
        let b = try Node(configuration: aes)
        try await b.start()
        try await eventually("the AES-GCM nodes link") { await a.connectedPeers() == [b.peerID] }
        // Items pushed at b reach a consumer at a (through a transfer on the AES-GCM link).
        let queue = a.queue(named: "aes")
        async let popped = queue.pop(max: 3, timeout: .seconds(10))
        try await Task.sleep(for: .milliseconds(100))
        try await b.queue(named: "aes").push([1], [2], [3])
        var got = try await popped
        while got.count < 3 { got += try await queue.pop(max: 3 - got.count, timeout: .seconds(10)) }
        #expect(got.sorted { $0.lexicographicallyPrecedes($1) } == [[1], [2], [3]])

        // Same key, the other cipher forced: refused at the handshake, and both ends say why.
        var chacha = testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"])
        chacha.linkCipher = .chaChaPoly
        let other = try Node(configuration: chacha)
        try await other.start()
        let rejected = await firstRejection(seenBy: other)
        #expect(rejected?.contains("no common link cipher") == true, "reason: \(rejected ?? "none")")
        #expect(await a.connectedPeers() == [b.peerID])
        #expect(await other.connectedPeers().isEmpty)
        await other.stop()
        await b.stop()
        await a.stop()
    }

    @Test("Garbage, a stalled handshake and an oversized frame are cut off; real peers stay")
    func hostileInput() async throws {
        let node = try Node(configuration: testConfiguration(key: key))
        let info = try await node.start()
        let friend = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        try await friend.start()
        try await eventually("the friend connects") { await node.connectedPeers() == [friend.peerID] }

        // Garbage on the port.
        let garbage = try RawClient(port: info.listenAddress.port)
        garbage.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + [UInt8](repeating: 0xFF, count: 300))
        #expect(await garbage.waitForClose(timeout: .seconds(3)) != nil, "garbage was not cut off")

        // Half a handshake, then silence: the handshake timeout (800 ms here) closes it.
        let staller = try RawClient(port: info.listenAddress.port)
        staller.send([0x00, 0x40, 0x01, 0x02])
        let stalled = await staller.waitForClose(timeout: .seconds(4))
        #expect(stalled != nil, "a stalled handshake was not cut off")
        if let stalled { #expect(stalled >= .milliseconds(500), "closed before the handshake timeout: \(stalled)") }

        // A real handshake, then a frame over the limit.
        let liar = try RawClient(port: info.listenAddress.port)
        var session = try LinkSession(role: .initiator, security: .noise(key), identity: .generate())
        var out = ByteArrayOutput()
        try session.start(output: &out)
        liar.send(out.bytes)
        var established = false
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(3)
        while !established && clock.now < deadline {
            guard let bytes = await liar.receive() else { break }
            var reply = ByteArrayOutput()
            try bytes.withUnsafeBytes { try session.receive($0, output: &reply) { event in
                if case .established = event { established = true }
            } }
            liar.send(reply.bytes)
        }
        #expect(established, "the raw client could not complete a handshake")
        var attack = ByteArrayOutput()
        // A message header declaring 2 MiB (over the 1 MiB limit), then some bytes.
        let header: [UInt8] = [0x00, 0x20, 0x00, 0x00, MessageType.ping.rawValue] + [UInt8](repeating: 1, count: 1000)
        try header.withUnsafeBytes { try session.seal($0, into: &attack) }
        liar.send(attack.bytes)
        #expect(await liar.waitForClose(timeout: .seconds(3)) != nil, "an oversized frame was not cut off")

        // The real peer never noticed.
        try await Task.sleep(for: .milliseconds(200))
        #expect(await node.connectedPeers() == [friend.peerID])
        await friend.stop()
        await node.stop()
    }

    @Test("Nodes refuse to listen off loopback without a cluster key")
    func loopbackOnly() async throws {
        var configuration = testConfiguration(key: nil)
        configuration.listenHost = "0.0.0.0"
        let node = try Node(configuration: configuration)
        await #expect(throws: NodeError.self) { try await node.start() }
        var insecure = testConfiguration(key: nil)
        insecure.insecure = true
        insecure.listenHost = "0.0.0.0"
        await #expect(throws: NodeError.self) { try await Node(configuration: insecure).start() }
    }

    @Test("Insecure nodes link with each other on loopback")
    func insecureMode() async throws {
        var first = testConfiguration(key: nil)
        first.insecure = true
        let a = try Node(configuration: first)
        let info = try await a.start()
        var second = testConfiguration(key: nil, bootstrap: ["\(info.listenAddress)"])
        second.insecure = true
        let b = try Node(configuration: second)
        try await b.start()
        try await eventually("insecure link") { await a.connectedPeers() == [b.peerID] }
        await b.stop()
        try await eventually("b seen as left") { await a.connectedPeers().isEmpty }
        await a.stop()
    }

    @Test("A stopping node is seen as left")
    func gracefulLeave() async throws {
        let a = try Node(configuration: testConfiguration(key: key))
        let info = try await a.start()
        let b = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        try await b.start()
        try await eventually("link") { await a.connectedPeers() == [b.peerID] }
        await b.stop()
        var left: Bool?
        for await event in a.events {
            if case .peerDisconnected(let peer, let didLeave) = event, peer == b.peerID {
                left = didLeave
                break
            }
        }
        #expect(left == true)
        await a.stop()
    }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
