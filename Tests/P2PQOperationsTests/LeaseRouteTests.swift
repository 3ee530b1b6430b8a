import Foundation
import Glibc
import P2PQLink
import P2PQNode
@testable import P2PQOperations
import Testing

private func leasedCount(_ node: Node, _ name: String) async -> Int {
    await node.queue(named: name).leasedCount()
}

private func waitingConsumers(_ node: Node, _ name: String) async -> Int {
    await node.status()?.queues.first { $0.name == name }?.waitingConsumers ?? -1
}

private func popAnswer(_ answer: RawAnswer?) throws -> QueuePopAnswer {
    let answer = try #require(answer)
    #expect(answer.status == 200, "\(answer.status): \(answer.text)")
    return try JSONDecoder().decode(QueuePopAnswer.self, from: Data(answer.body))
}

/// docs/operations.md, "Queue routes": leases over HTTP.
@Suite("Operations endpoint: leased pops, ack and nack", .serialized)
struct LeaseRouteTests {
    @Test("pop?lease returns tokens and delivery counts; ack consumes, nack gives back; unknown tokens 410, bad input 400")
    func leaseRoutes() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            try await node.queue(named: "l").push(Array("a".utf8), Array("b".utf8))

            let first = try popAnswer(try await request(port, "POST", "/queue/l/pop?max=2&lease=30000", token: token))
            #expect(first.items == ["a", "b"])
            #expect(first.deliveryCounts == [1, 1])
            let tokens = try #require(first.tokens)
            #expect(tokens.count == 2)
            #expect(await leasedCount(node, "l") == 2)
            #expect(await node.status()?.queues.first { $0.name == "l" }?.leased == 2)

            // Needs the bearer token like the other queue routes.
            #expect(try await request(port, "POST", "/queue/l/ack", body: Array(tokens[0].utf8))?.status == 401)
            let acked = try #require(try await request(port, "POST", "/queue/l/ack", token: token, body: Array(tokens[0].utf8)))
            #expect(acked.status == 200 && acked.text == "acked 1\n")
            // Acked already: 410, naming it.
            let again = try #require(try await request(port, "POST", "/queue/l/ack", token: token, body: Array(tokens[0].utf8)))
            #expect(again.status == 410 && again.text.contains(tokens[0]))
            let nacked = try #require(try await request(port, "POST", "/queue/l/nack", token: token, body: Array(tokens[1].utf8)))
            #expect(nacked.status == 200)
            let second = try popAnswer(try await request(port, "POST", "/queue/l/pop?max=2&lease=30000", token: token))
            #expect(second.items == ["b"] && second.deliveryCounts == [2])

            // A lease that ended: its token is refused, its item delivered again.
            let giveBack = try await request(port, "POST", "/queue/l/nack", token: token, body: Array((second.tokens ?? []).joined(separator: ",").utf8))
            #expect(giveBack?.status == 200)
            let short = try popAnswer(try await request(port, "POST", "/queue/l/pop?lease=50", token: token))
            #expect(short.items == ["b"] && short.deliveryCounts == [3])
            try await Task.sleep(for: .milliseconds(300))
            let expired = try #require(try await request(port, "POST", "/queue/l/ack", token: token, body: Array((short.tokens ?? []).joined().utf8)))
            #expect(expired.status == 410, "\(expired.status) \(expired.text)")
            let third = try popAnswer(try await request(port, "POST", "/queue/l/pop?lease=1000", token: token))
            #expect(third.items == ["b"] && third.deliveryCounts == [4])

            for bad in ["lease=0", "lease=-5", "lease=x", "lease=43200001"] {
                #expect(try await request(port, "POST", "/queue/l/pop?\(bad)", token: token)?.status == 400, "\(bad)")
            }
            #expect(try await request(port, "POST", "/queue/l/ack", token: token, body: Array("12ab".utf8))?.status == 400)
            #expect(try await request(port, "POST", "/queue/l/ack", token: token, body: [])?.status == 400)
            #expect(try await request(port, "POST", "/queue/l/ack", token: token, body: Array(String(repeating: "9", count: 30).utf8))?.status == 400)
            #expect(try await request(port, "GET", "/queue/l/ack", token: token)?.status == 405)
            await endpoint.stop()
        }
    }

    @Test("Issue 19.8, the race: plain HTTP pops whose clients reset the connection as the items arrive lose nothing")
    func popAnsweredAsClientCloses() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            let queue = node.queue(named: "r")
            let rounds = 40
            var left: [String] = []
            for round in 0..<rounds {
                let client = try RawConnection(port: port)
                client.send("POST /queue/r/pop?max=10&timeout=5000 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token.text)\r\nContent-Length: 0\r\n\r\n")
                try await eventually("the pop of round \(round) waits") { await waitingConsumers(node, "r") == 1 }
                // An abortive close (RST): whatever the server writes after it cannot arrive.
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                client.close()
                // A connection made after the reset reaches the server's kernel after it (one
                // loopback path, in order): the answer to the pop cannot reach the client, and
                // the server's socket knows it, whether or not the endpoint has noticed yet.
                try RawConnection(port: port).close()
                try await queue.push(Array("\(round)".utf8))
                try await eventually("round \(round) settles") {
                    let waiting = await waitingConsumers(node, "r")
                    let leased = await leasedCount(node, "r")
                    return waiting == 0 && leased == 0
                }
                // The item is back (or was never taken): take it out, so the next pop waits.
                while let items = try? await queue.pop(max: 1000, timeout: .zero) {
                    left += items.map { String(decoding: $0, as: UTF8.self) }
                }
            }
            #expect(Set(left) == Set((0..<rounds).map(String.init)), "lost \(rounds - left.count) of \(rounds)")
            await endpoint.stop()
        }
    }

    @Test("Plain HTTP pops by clients that close their side once they have read the answer (as curl does) deliver each item once")
    func popByClientsThatCloseAfterReading() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            let queue = node.queue(named: "c")
            let count = 200
            try await queue.push(contentsOf: (0..<count).map { Array("\($0)".utf8) })
            var delivered: [String] = []
            for _ in 0..<count {
                let client = try RawConnection(port: port)
                // Keep-alive, as curl asks: the server does not close; the client does, with a
                // FIN, as soon as it has the whole answer.
                client.send("POST /queue/c/pop?max=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token.text)\r\nContent-Length: 0\r\n\r\n")
                let bytes = await client.readAnswer()
                client.close()
                delivered += try popAnswer(RawConnection.parse(bytes)).items
            }
            try await eventually("every pop is settled") { await leasedCount(node, "c") == 0 }
            var again: [String] = []
            while let items = try? await queue.pop(max: 1000, timeout: .zero) {
                again += items.map { String(decoding: $0, as: UTF8.self) }
            }
            #expect(delivered.count == count && Set(delivered).count == count, "\(delivered.count) delivered, \(Set(delivered).count) distinct")
            #expect(again.isEmpty, "\(again.count) items delivered once came back: \(again.prefix(10))")
            await endpoint.stop()
        }
    }

    @Test("The TCP states an answer can find the connection in")
    func answerDeliveryStates() {
        #expect(AnswerDelivery(state: 1, unackedSegments: 3, probes: 0) == .delivered)   // ESTABLISHED
        #expect(AnswerDelivery(state: 8, unackedSegments: 0, probes: 0) == .delivered)   // CLOSE_WAIT, all acked
        #expect(AnswerDelivery(state: 8, unackedSegments: 2, probes: 0) == .pending)     // CLOSE_WAIT, in flight
        #expect(AnswerDelivery(state: 8, unackedSegments: 0, probes: 1) == .pending)     // not reading
        #expect(AnswerDelivery(state: 7, unackedSegments: 0, probes: 0) == .lost)        // CLOSE: reset
        #expect(AnswerDelivery(state: 9, unackedSegments: 0, probes: 0) == .lost)        // LAST_ACK
    }

    @Test("A plain HTTP pop whose answer is written consumes its items (acked, nothing left leased)")
    func plainPopAcksWhenWritten() async throws {
        try await withNode { node in
            let token = OperationsToken.development
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            try await node.queue(named: "p").push(Array("x".utf8))
            let answer = try popAnswer(try await request(port, "POST", "/queue/p/pop", token: token))
            #expect(answer.items == ["x"] && answer.tokens == nil)
            try await eventually("the pop is acked") { await leasedCount(node, "p") == 0 }
            let counters = try #require(await node.queue(named: "p").counters())
            #expect(counters.acknowledged == 1 && counters.popped == 1)
            #expect(await node.queue(named: "p").size().local == 0)
            await endpoint.stop()
        }
    }
}
