import Foundation
import Glibc
import P2PQLink
import P2PQNode
@testable import P2PQOperations
import Testing

@Suite("Operations endpoint (Hummingbird): routes, tokens, browsers, limits", .serialized)
struct EndpointTests {
    @Test("Routes: /metrics open on loopback; /status and queue routes need the bearer token; push, pop, errors")
    func routesAndTokens() async throws {
        let key = ClusterKey.generate()
        try await withNode(key: key) { node in
            let token = OperationsToken.derived(from: key)
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])

            let metrics = try #require(try await request(port, "GET", "/metrics"))
            #expect(metrics.status == 200)
            #expect(metrics.text.contains("p2pq_items_pushed_total"))
            #expect(try await request(port, "GET", "/status")?.status == 401)
            #expect(try await request(port, "GET", "/status")?.header("WWW-Authenticate") == "Bearer")
            #expect(try await request(port, "GET", "/status", token: .generate())?.status == 401)
            #expect(try await request(port, "GET", "/status", headers: ["Authorization": "Basic \(token.text)"])?.status == 401)
            #expect(try await request(port, "POST", "/queue/r/push", body: Array("x\n".utf8))?.status == 401)
            #expect(try await request(port, "POST", "/queue/r/pop")?.status == 401)
            #expect(await node.queue(named: "r").size().local == 0, "an unauthorized push got in")

            #expect(try await request(port, "POST", "/queue/r/push", token: token, body: Array("a\nb\r\nc\n".utf8))?.status == 200)
            #expect(try await request(port, "POST", "/queue/r/push?format=raw", token: token, body: [0, 10, 255])?.status == 200)
            #expect(await node.queue(named: "r").size().local == 4)
            let status = try #require(try await request(port, "GET", "/status", token: token))
            #expect(status.status == 200)
            let decoded = try JSONDecoder().decode(NodeStatus.self, from: Data(status.body))
            #expect(decoded.queues.first { $0.name == "r" }?.localCount == 4)
            let popped = try #require(try await request(port, "POST", "/queue/r/pop?max=3", token: token))
            #expect(try JSONDecoder().decode(QueuePopAnswer.self, from: Data(popped.body)).items == ["a", "b", "c"])
            let binary = try #require(try await request(port, "POST", "/queue/r/pop?encoding=base64", token: token))
            #expect(try JSONDecoder().decode(QueuePopAnswer.self, from: Data(binary.body)).payloads == [[0, 10, 255]])
            let empty = try #require(try await request(port, "POST", "/queue/r/pop?timeout=50", token: token))
            #expect(try JSONDecoder().decode(QueuePopAnswer.self, from: Data(empty.body)).items.isEmpty)
            #expect(try await request(port, "POST", "/queue/r/pop?max=0", token: token)?.status == 400)
            #expect(try await request(port, "POST", "/queue/r/pop?timeout=99999", token: token)?.status == 400)
            #expect(try await request(port, "POST", "/queue/r/push", token: token)?.status == 400)
            #expect(try await request(port, "POST", "/queue/r/push?format=xml", token: token, body: [1])?.status == 400)
            #expect(try await request(port, "GET", "/queue/r/pop", token: token)?.status == 405)
            #expect(try await request(port, "POST", "/metrics")?.status == 405)
            #expect(try await request(port, "GET", "/nothing-here")?.status == 404)
            await node.queue(named: "r").close()
            #expect(try await request(port, "POST", "/queue/r/push", token: token, body: Array("x\n".utf8))?.status == 409)
            await endpoint.stop()
        }
    }

    @Test("Issue 20.1: the query strings that crashed the old server get answers; the node keeps serving")
    func queryParserRegression() async throws {
        try await withNode { node in
            let (endpoint, port) = try await startEndpoint(node, tokens: [.development])
            #expect(try await request(port, "GET", "/metrics?x=1&=")?.status == 200)
            #expect(try await request(port, "POST", "/queue/q/pop?=", token: .development)?.status == 200)
            for target in ["/metrics?=", "/metrics?&&&=&", "/metrics?%", "/metrics?x=%zz&%=%", "/queue/q/pop?max=&timeout=%"] {
                let method = target.hasPrefix("/queue") ? "POST" : "GET"
                #expect(try await request(port, method, target, token: .development) != nil, "\(target)")
            }
            #expect(try await request(port, "GET", "/status", token: .development)?.status == 200)
            await endpoint.stop()
        }
    }

    @Test("Browsers are refused: Origin 403 unless allowed (no CORS headers), Host must be an address, localhost or allowed")
    func browsersRefused() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) { $0.allowedOrigins = ["http://ok.example"] }
            #expect(try await request(port, "GET", "/metrics", headers: ["Origin": "http://evil.example"])?.status == 403)
            #expect(try await request(port, "POST", "/queue/q/push", token: token, headers: ["Origin": "null"], body: [1])?.status == 403)
            let allowed = try #require(try await request(port, "GET", "/metrics", headers: ["Origin": "http://ok.example"]))
            #expect(allowed.status == 200)
            #expect(!allowed.head.lowercased().contains("access-control-"), "CORS headers sent:\n\(allowed.head)")
            // DNS rebinding: a foreign name pointed at 127.0.0.1.
            #expect(try await request(port, "GET", "/metrics", host: "evil.example:\(port)")?.status == 403)
            #expect(try await request(port, "GET", "/metrics", host: "localhost:\(port)")?.status == 200)
            #expect(try await request(port, "GET", "/metrics", host: "[::1]:\(port)")?.status == 200)
            #expect(await node.queue(named: "q").size().local == 0)
            await endpoint.stop()

            let (open, openPort) = try await startEndpoint(node, tokens: [token]) { $0.allowedHosts = ["queue.internal"] }
            #expect(try await request(openPort, "GET", "/metrics", host: "queue.internal")?.status == 200)
            #expect(try await request(openPort, "GET", "/metrics", host: "other.internal")?.status == 403)
            await open.stop()
        }
    }

    @Test("Off loopback: no token refuses to start; /metrics needs the token unless metricsOpen")
    func offLoopback() async throws {
        try await withNode { node in
            #expect(throws: OperationsError.self) {
                try OperationsEndpoint(node: node, configuration: OperationsConfiguration(host: "0.0.0.0", port: 0, tokens: []))
            }
            let token = OperationsToken.generate()
            let (endpoint, port) = try await startEndpoint(node, tokens: [token], host: "0.0.0.0")
            #expect(try await request(port, "GET", "/metrics")?.status == 401)
            #expect(try await request(port, "GET", "/metrics", token: token)?.status == 200)
            await endpoint.stop()
            let (open, openPort) = try await startEndpoint(node, tokens: [token], host: "0.0.0.0") { $0.metricsOpen = true }
            #expect(try await request(openPort, "GET", "/metrics")?.status == 200)
            #expect(try await request(openPort, "GET", "/status")?.status == 401)
            await open.stop()
        }
    }

    @Test("Token files: made 0600, loaded; a cluster key file gives the derived token; comparison needs every byte")
    func tokenFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let token = OperationsToken.generate()
        let path = directory.appendingPathComponent("token").path
        try token.save(path: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try OperationsToken.load(path: path) == token)
        #expect(throws: IdentityError.self) { try token.save(path: path) }
        let key = ClusterKey.generate()
        let keyPath = directory.appendingPathComponent("key").path
        try key.save(path: keyPath)
        #expect(try OperationsToken.load(path: keyPath) == .derived(from: key))
        #expect(OperationsToken.derived(from: key) != .derived(from: .generate()))
        #expect(token.matches(Array(token.text.utf8)))
        #expect(!token.matches(Array(token.text.utf8.dropLast())))
        #expect(!token.matches(Array(token.text.utf8) + [0x30]))
        #expect(!token.matches([]))
        #expect("\(token)".contains(token.text) == false)
    }
}
