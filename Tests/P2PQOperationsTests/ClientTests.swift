import Foundation
import Glibc
import P2PQLink
import P2PQNode
import P2PQOperations
import Synchronization
import Testing

/// A TCP socket bound to a free loopback port, listening or not (a bound port that does not
/// listen refuses connections), and that port.
private func loopbackSocket(listening: Bool) throws -> (Int32, UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard bind(fd, pointer, length) == 0, !listening || listen(fd, 8) == 0 else { return -1 }
            return getsockname(fd, pointer, &length)
        }
    }
    guard fd >= 0, bound == 0 else { throw POSIXError(.EADDRNOTAVAIL) }
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A loopback listener that answers each connection with `reply` (after reading the request
/// head, or nothing at all when `readFirst` is false), then closes it; nil keeps it open
/// without a word until the listener is closed.
private final class ScriptedServer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let reply: [UInt8]?
    /// Connections whose client had closed 200 ms after the answer was sent.
    let closedByClient = Atomic<Int>(0)

    init(reply: [UInt8]?) throws {
        self.reply = reply
        (fd, port) = try loopbackSocket(listening: true)
        Thread.detachNewThread { [self] in serve() }
    }

    private func serve() {
        var held: [Int32] = []
        while true {
            let client = accept(fd, nil, nil)
            guard client >= 0 else { break }
            guard let reply else {
                held.append(client)
                continue
            }
            var buffer = [UInt8](repeating: 0, count: 65_536)
            _ = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            var offset = 0
            while offset < reply.count {
                let n = reply[offset...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                offset += n
            }
            usleep(200_000)
            var byte: UInt8 = 0
            if recv(client, &byte, 1, Int32(MSG_DONTWAIT)) == 0 { closedByClient.add(1, ordering: .relaxed) }
            Glibc.close(client)
        }
        // Closed here, not in close(): a number closed there could be reused by another
        // test's listener before this thread's next accept, which would then take its clients.
        for client in held { Glibc.close(client) }
        Glibc.close(fd)
    }

    /// Stops the listener: its accept thread wakes, closes the held connections and the
    /// listener, and ends.
    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
    }
}

@Suite("OperationsClient: answers, deadlines, early closes, size bounds, bad URLs")
struct ClientTests {
    @Test("A push and a pop through a real endpoint; the token is sent; 401 without it")
    func roundTrip() async throws {
        let key = ClusterKey.generate()
        try await withNode(key: key) { node in
            let token = OperationsToken.derived(from: key)
            // The server reads a new connection's request only once a task on the cooperative
            // pool serves it; the whole suite's start can keep that pool busy past the default
            // 10 s idle timeout, which then closes the connection unread.
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) { $0.idleTimeout = .seconds(60) }
            let base = "http://127.0.0.1:\(port)"
            let bearer = [("Authorization", "Bearer \(token.text)")]
            let pushed = try await OperationsClient.send(base + "/queue/c/push", method: "POST", headers: bearer, body: Array("a\nb\n".utf8))
            #expect(pushed.status == 200)
            let popped = try await OperationsClient.send(base + "/queue/c/pop?max=5", method: "POST", headers: bearer)
            #expect(try JSONDecoder().decode(QueuePopAnswer.self, from: Data(popped.body)).items == ["a", "b"])
            #expect(popped.header("content-type")?.contains("json") == true)
            let refused = try await OperationsClient.send(base + "/status")
            #expect(refused.status == 401)
            #expect(refused.header("WWW-Authenticate") == "Bearer")
            await endpoint.stop()
        }
    }

    @Test("A server that never answers: timedOut at the deadline, not a hang")
    func silentServer() async throws {
        let server = try ScriptedServer(reply: nil)
        defer { server.close() }
        do {
            let answer = try await OperationsClient.send("http://127.0.0.1:\(server.port)/status", timeout: .milliseconds(300))
            Issue.record("a silent server answered: \(answer.status)")
        } catch {
            guard case .timedOut = error else { Issue.record("expected timedOut, got \(error)"); return }
        }
    }

    @Test("A server that closes mid-answer: closedEarly; a complete answer without a length is read to the close")
    func earlyClose() async throws {
        let truncated = try ScriptedServer(reply: Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".utf8))
        defer { truncated.close() }
        do {
            let answer = try await OperationsClient.send("http://127.0.0.1:\(truncated.port)/")
            Issue.record("a truncated answer was accepted: \(answer.text)")
        } catch {
            guard case .closedEarly = error else { Issue.record("expected closedEarly, got \(error)"); return }
        }
        let unsized = try ScriptedServer(reply: Array("HTTP/1.1 200 OK\r\n\r\nall of it".utf8))
        defer { unsized.close() }
        #expect(try await OperationsClient.send("http://127.0.0.1:\(unsized.port)/").text == "all of it")
    }

    @Test("An answer larger than the bound fails with tooLarge")
    func tooLarge() async throws {
        let server = try ScriptedServer(reply: Array("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".utf8) + [UInt8](repeating: 65, count: 5000))
        defer { server.close() }
        do {
            _ = try await OperationsClient.send("http://127.0.0.1:\(server.port)/", maxResponseBytes: 1000)
            Issue.record("an answer over the bound was accepted")
        } catch {
            guard case .tooLarge(1000) = error else { Issue.record("expected tooLarge, got \(error)"); return }
        }
    }

    @Test("A closed port is unreachable; URLs that are not http://host are refused before connecting")
    func unreachableAndBadURLs() async throws {
        // A port bound and not listening refuses connections, and stays ours while the test
        // runs: a closed listener's port may be taken by another test's listener meanwhile.
        let (holder, port) = try loopbackSocket(listening: false)
        defer { Glibc.close(holder) }
        do {
            _ = try await OperationsClient.send("http://127.0.0.1:\(port)/", timeout: .seconds(2))
            Issue.record("a closed port answered")
        } catch {
            guard case .unreachable = error else { Issue.record("expected unreachable, got \(error)"); return }
        }
        for url in ["https://127.0.0.1:1/", "127.0.0.1:1/status", "http:///status", "not a url"] {
            do {
                _ = try await OperationsClient.send(url)
                Issue.record("\(url) was accepted")
            } catch {
                guard case .badURL = error else { Issue.record("\(url): expected badURL, got \(error)"); continue }
            }
        }
    }

    @Test("After a complete answer the client leaves the close to the server (a plain pop's check that its answer got through must not see the client gone)")
    func serverCloses() async throws {
        let server = try ScriptedServer(reply: Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8))
        defer { server.close() }
        #expect(try await OperationsClient.send("http://127.0.0.1:\(server.port)/").text == "ok")
        try await Task.sleep(for: .milliseconds(400))
        #expect(server.closedByClient.load(ordering: .relaxed) == 0)
    }
}
