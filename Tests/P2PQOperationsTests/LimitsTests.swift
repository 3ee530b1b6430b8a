import Foundation
import Glibc
import P2PQLink
import P2PQNode
@testable import P2PQOperations
import P2PQTestSupport
import Testing

@Suite("Operations endpoint: limits, abandoned waiters, hostile requests", .serialized)
struct LimitsTests {
    @Test("Issue 20.3: 64 idle and 16 half-sent connections do not stop a real client; a stalled one is closed")
    func idleConnections() async throws {
        try await withNode { node in
            let (endpoint, port) = try await startEndpoint(node, tokens: [.development]) { $0.idleTimeout = .seconds(1) }
            var idle: [RawConnection] = []
            defer { idle.forEach { $0.close() } }
            for _ in 0..<64 { idle.append(try RawConnection(port: port)) }
            for _ in 0..<16 {
                let slow = try RawConnection(port: port)
                slow.send("GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                idle.append(slow)
            }
            let answer = try await request(port, "GET", "/status", token: .development)
            #expect(answer?.status == 200)
            // The header deadline closes a connection that never finishes its request.
            let started = ContinuousClock.now
            let stalled = await idle.last!.readAll()
            #expect(ContinuousClock.now - started < .seconds(4), "the half-sent request was not cut off")
            #expect(RawConnection.parse(stalled)?.status != 200)
            await endpoint.stop()
        }
    }

    @Test("600 idle connections from one address keep only their share; a client from another address is served at once")
    func connectionsPerSource() async throws {
        try await withNode { node in
            // A long idle timeout: only the per-source limit can keep room for the real client.
            let (endpoint, port) = try await startEndpoint(node, tokens: [.development]) {
                $0.idleTimeout = .seconds(60)
                $0.maxConnections = 256
                $0.maxConnectionsPerSource = 64
            }
            var idle: [RawConnection] = []
            defer { idle.forEach { $0.close() } }
            for _ in 0..<600 { idle.append(try RawConnection(port: port, receiveTimeout: 1, source: "127.0.0.2")) }
            let started = ContinuousClock.now
            let answer = try await request(port, "GET", "/status", token: .development)
            #expect(answer?.status == 200)
            #expect(ContinuousClock.now - started < .seconds(5), "the real client waited \(ContinuousClock.now - started)")
            // The server closed what was over the share and kept the share open.
            try await Task.sleep(for: .milliseconds(200))
            let open = idle.filter { $0.isOpen() }.count
            #expect(open == 64, "\(open) of 600 connections from one address are open, not its share of 64")
            await endpoint.stop()
        }
    }

    @Test("Size and time limits: body over the limit 413, oversized headers refused, a body that stalls 408")
    func sizeAndTimeLimits() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) {
                $0.maxBodyBytes = 1024
                $0.maxHeaderBytes = 2048
                $0.bodyTimeout = .seconds(1)
            }
            #expect(try await request(port, "POST", "/queue/q/push", token: token, body: [UInt8](repeating: 65, count: 2000))?.status == 413)
            let huge = try await request(port, "GET", "/status", token: token, headers: ["X-Big": String(repeating: "a", count: 8192)])
            #expect(huge == nil || huge!.status == 400 || huge!.status == 431)
            // Content-Length promises 100 bytes, 10 arrive.
            let slow = try RawConnection(port: port, receiveTimeout: 10)
            defer { slow.close() }
            slow.send("POST /queue/q/push HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token.text)\r\nContent-Length: 100\r\n\r\n0123456789")
            let started = ContinuousClock.now
            let answer = RawConnection.parse(await slow.readAll())
            #expect(answer == nil || answer!.status == 408)
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(await node.queue(named: "q").size().local == 0)
            #expect(try await request(port, "GET", "/status", token: token)?.status == 200)
            await endpoint.stop()
        }
    }

    @Test("Issue 19.8: a waiting HTTP pop whose client leaves is withdrawn; the next pop gets every item pushed after")
    func abandonedPop() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            let queue = node.queue(named: "w")
            let waiting = try RawConnection(port: port)
            waiting.send("POST /queue/w/pop?max=10&timeout=20000 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token.text)\r\nContent-Length: 0\r\n\r\n")
            try await eventually("the pop waits") { await waitingConsumers(node, "w") == 1 }
            try await Task.sleep(for: .seconds(1))
            waiting.close()
            try await eventually("the abandoned pop is withdrawn", timeout: .seconds(2)) { await waitingConsumers(node, "w") == 0 }
            try await queue.push(Array("1".utf8), Array("2".utf8), Array("3".utf8))
            let answer = try #require(try await request(port, "POST", "/queue/w/pop?max=10&timeout=2000", token: token))
            let items = try JSONDecoder().decode(QueuePopAnswer.self, from: Data(answer.body)).items
            #expect(items == ["1", "2", "3"], "items lost to the abandoned pop")
            #expect(await node.status()?.counters["p2pq_items_popped_total"] == 3)
            await endpoint.stop()
        }
    }

    @Test("Issue 19.9: a push into a full queue gets 503 with Retry-After at its deadline; abandoned pushes free their memory")
    func abandonedPush() async throws {
        try await withNode(maxQueueItems: 1) { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) { $0.pushTimeout = .milliseconds(500) }
            let queue = node.queue(named: "full")
            try await queue.push(Array("first".utf8))
            let refused = try #require(try await request(port, "POST", "/queue/full/push", token: token, body: Array("late\n".utf8)))
            #expect(refused.status == 503)
            #expect(refused.header("Retry-After") == "1")
            #expect(await noWaitingPushes(queue))
            // Clients that leave while their push waits: each is withdrawn at once.
            // On an endpoint whose push deadline is far away, only the client's leaving can
            // withdraw them.
            await endpoint.stop()
            let (patient, patientPort) = try await startEndpoint(node, tokens: [token]) { $0.pushTimeout = .seconds(60) }
            let payload = [UInt8](repeating: 66, count: 512 << 10)
            var clients: [RawConnection] = []
            for _ in 0..<3 {
                let client = try RawConnection(port: patientPort)
                client.send(Array("POST /queue/full/push?format=raw HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token.text)\r\nContent-Length: \(payload.count)\r\n\r\n".utf8) + payload)
                clients.append(client)
            }
            try await eventually("the pushes wait") { await queue.waitingPushes().count == 3 }
            #expect(await queue.waitingPushes().bytes == 3 * payload.count)
            clients.forEach { $0.close() }
            try await eventually("the abandoned pushes are withdrawn", timeout: .seconds(2)) { await noWaitingPushes(queue) }
            // None of them enters the queue later: only the first item is there.
            #expect(try await queue.pop(max: 10, timeout: .milliseconds(100)) == [Array("first".utf8)])
            await #expect(throws: QueueError.timeout) { try await queue.pop(timeout: .milliseconds(300)) }
            await patient.stop()
        }
    }

    @Test("Issue 19.9, API: a waiting push is withdrawn when its task is cancelled (cancelled) or its timeout passes (timeout)")
    func pushCancellationAPI() async throws {
        try await withNode(maxQueueItems: 1) { node in
            let queue = node.queue(named: "api")
            try await queue.push([1])
            let task = Task { () -> QueueError? in
                do throws(QueueError) {
                    try await queue.push([2])
                    return nil
                } catch {
                    return error
                }
            }
            try await eventually("the push waits") { await queue.waitingPushes().count == 1 }
            task.cancel()
            try await eventually("the cancelled push is withdrawn", timeout: .seconds(2)) { await noWaitingPushes(queue) }
            let outcome = await task.value
            #expect(outcome == .cancelled)
            await #expect(throws: QueueError.timeout) { try await queue.push([3], timeout: .milliseconds(200)) }
            #expect(await noWaitingPushes(queue))
            #expect(try await queue.pop(max: 10, timeout: .zero) == [[1]])
            // Room again: a push goes straight in.
            try await queue.push([4], timeout: .milliseconds(200))
            #expect(try await queue.pop(timeout: .zero) == [4])
        }
    }

    @Test("Hostile requests (bad queries, lengths, methods, huge headers, invalid UTF-8): no crash, the node keeps serving")
    func hostileRequests() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) {
                $0.idleTimeout = .seconds(1)
                $0.bodyTimeout = .seconds(1)
                $0.maxBodyBytes = 4096
            }
            var generator = SplitMix64(seed: 20_01)
            let methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "G\u{0}T", "", "POST POST", "\u{FF}"]
            let paths = ["/metrics", "/status", "/queue/q/push", "/queue/q/pop", "/queue//pop", "/queue/%FF%FE/push", "/queue/a/b/pop",
                         "*", "http://evil/queue/q/pop", "/../../etc/passwd", "/queue/\(String(repeating: "n", count: 300))/pop", ""]
            let queries = ["", "?", "?=", "?&", "?x=1&=", "?max=-1", "?max=99999999999999999999", "?timeout=1e9", "?%", "?%zz=%",
                           "?encoding=\u{0}", "?format=raw&format=lines", "?max=2&timeout=10&encoding=base64"]
            let lengths = ["0", "-1", "abc", "99999999999999999999", "5, 6", "4096", "4097", " 3", "0x10"]
            var answers: [Int: Int] = [:]  // status (0: closed without one) -> count
            for round in 0..<200 {
                var bytes = Array("\(methods[generator.next(methods.count)]) \(paths[generator.next(paths.count)])\(queries[generator.next(queries.count)]) HTTP/1.1\r\n".utf8)
                if generator.next(3) == 0 { bytes[generator.next(bytes.count)] = UInt8(generator.next(256)) }  // invalid UTF-8 and control bytes
                bytes += Array("Host: 127.0.0.1\r\nConnection: close\r\n".utf8)
                if generator.next(2) == 0 { bytes += Array("Authorization: Bearer \(token.text)\r\n".utf8) }
                switch generator.next(6) {
                case 0: bytes += Array("Content-Length: \(lengths[generator.next(lengths.count)])\r\n".utf8)
                case 1: bytes += Array("Transfer-Encoding: chunked\r\n".utf8)
                case 2: bytes += Array("X-Big: \(String(repeating: "x", count: 20_000 + generator.next(70_000)))\r\n".utf8)
                case 3: bytes += [0xC3, 0x28, 0x3A, 0x20, 0xFF, 0xFE, 13, 10]
                case 4: bytes += Array("Content-Length: 3\r\nContent-Length: 7\r\n".utf8)
                default: break
                }
                bytes += [13, 10]
                if generator.next(4) == 0 { bytes += (0..<generator.next(64)).map { _ in UInt8(generator.next(256)) } }
                let connection = try RawConnection(port: port, receiveTimeout: 5)
                connection.send(bytes)
                answers[RawConnection.parse(await connection.readAll())?.status ?? 0, default: 0] += 1
                connection.close()
                if round % 50 == 49 {
                    #expect(try await request(port, "GET", "/status", token: token)?.status == 200, "round \(round)")
                }
            }
            #expect(try await request(port, "GET", "/status", token: token)?.status == 200)
            #expect(await node.status() != nil)
            // The generator reached the parser's refusals, the token check and the routes.
            #expect([400, 401, 404].allSatisfy { answers[$0, default: 0] > 0 }, "answers: \(answers)")
            #expect(answers.keys.contains { (200..<300).contains($0) }, "answers: \(answers)")
            await endpoint.stop()
        }
    }
}

private func noWaitingPushes(_ queue: QueueHandle) async -> Bool {
    let waiting = await queue.waitingPushes()
    return waiting.count == 0 && waiting.bytes == 0
}

private func waitingConsumers(_ node: Node, _ name: String) async -> Int {
    await node.status()?.queues.first { $0.name == name }?.waitingConsumers ?? -1
}

private extension SplitMix64 {
    /// A number below `bound` (0 for a bound under 1), by remainder: the requests need no
    /// uniformity, only a replay from the seed.
    mutating func next(_ bound: Int) -> Int { Int(next() % UInt64(max(1, bound))) }
}
