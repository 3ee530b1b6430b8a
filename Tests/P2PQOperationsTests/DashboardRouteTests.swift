import Foundation
import P2PQLink
import P2PQNode
@testable import P2PQOperations
import Testing

@Suite("Dashboard routes: token once, then a same-origin cookie; cross-origin refused; the live stream", .serialized)
struct DashboardRouteTests {
    /// The cookie a sign-in set (`name=value`), from its `Set-Cookie`.
    func cookie(_ answer: RawAnswer?) -> String? {
        answer?.header("Set-Cookie")?.split(separator: ";").first.map(String.init)
    }

    @Test("The page: 401 without a token (a sign-in form, not the page); ?token= or the form sets an HttpOnly SameSite=Strict cookie that serves it")
    func pageNeedsTokenThenCookie() async throws {
        let key = ClusterKey.generate()
        try await withNode(key: key) { node in
            let token = OperationsToken.derived(from: key)
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])

            let anonymous = try #require(try await request(port, "GET", "/"))
            #expect(anonymous.status == 401)
            #expect(anonymous.text.contains("<form"))
            #expect(!anonymous.text.contains("EventSource"), "the dashboard was served without a token")
            #expect(try await request(port, "GET", "/?token=\(OperationsToken.generate().text)")?.status == 401)
            #expect(try await request(port, "GET", "/?token=nonsense")?.status == 401)
            #expect(try await request(port, "GET", "/", headers: ["Cookie": "p2pq_dashboard=\(token.text)"])?.status == 401,
                    "a cookie holding the token itself is not the session")

            let signIn = try #require(try await request(port, "GET", "/?token=\(token.text)"))
            #expect(signIn.status == 303)
            #expect(signIn.header("Location") == "/")
            let setCookie = try #require(signIn.header("Set-Cookie"))
            #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && setCookie.contains("Path=/"))
            #expect(!setCookie.contains(token.text), "the token itself went into the cookie")
            let session = try #require(cookie(signIn))

            let page = try #require(try await request(port, "GET", "/", headers: ["Cookie": "other=1; \(session)"]))
            #expect(page.status == 200)
            #expect(page.header("Content-Type")?.hasPrefix("text/html") == true)
            #expect(page.text.contains("EventSource(\"/dashboard/stream\")"))
            #expect(page.header("Content-Security-Policy")?.contains("connect-src 'self'") == true)
            #expect(try await request(port, "GET", "/", token: token)?.status == 200, "a bearer token serves the page too")

            let form = try #require(try await request(
                port, "POST", "/login", headers: ["Content-Type": "application/x-www-form-urlencoded", "Origin": "http://127.0.0.1:\(port)"],
                body: Array("token=\(token.text)".utf8)))
            #expect(form.status == 303)
            #expect(cookie(form) == session)
            #expect(try await request(port, "POST", "/login", body: Array("token=\(OperationsToken.generate().text)".utf8))?.status == 401)
            #expect(try await request(port, "POST", "/login", body: [UInt8](repeating: 0x61, count: 5000))?.status == 413)

            // The JSON: cookie or bearer; nothing without.
            #expect(try await request(port, "GET", "/dashboard.json")?.status == 401)
            let json = try #require(try await request(port, "GET", "/dashboard.json", headers: ["Cookie": session]))
            #expect(json.status == 200)
            let snapshot = try JSONDecoder().decode(DashboardSnapshot.self, from: Data(json.body))
            #expect(snapshot.peerID == node.peerID.description)
            #expect(snapshot.members.first?.state == "self")
            #expect(try await request(port, "GET", "/dashboard.json", token: token)?.status == 200)
            #expect(try await request(port, "GET", "/dashboard/stream")?.status == 401)
            #expect(try await request(port, "POST", "/dashboard.json", token: token)?.status == 405)
            await endpoint.stop()
        }
    }

    @Test("Cross-origin requests are refused with the cookie too: a foreign Origin, Sec-Fetch-Site cross-site or same-site; same-origin ones are served")
    func crossOriginRefused() async throws {
        let key = ClusterKey.generate()
        try await withNode(key: key) { node in
            let token = OperationsToken.derived(from: key)
            let (endpoint, port) = try await startEndpoint(node, tokens: [token])
            let session = try #require(cookie(try await request(port, "GET", "/?token=\(token.text)")))
            for headers in [["Origin": "http://evil.example"], ["Origin": "http://127.0.0.1:\(port &+ 1)"], ["Sec-Fetch-Site": "cross-site"],
                            ["Sec-Fetch-Site": "same-site"]] {
                for path in ["/", "/dashboard.json", "/dashboard/stream"] {
                    let answer = try await request(port, "GET", path, headers: headers.merging(["Cookie": session]) { $1 })
                    #expect(answer?.status == 403, "\(path) with \(headers)")
                }
                #expect(try await request(port, "POST", "/login", headers: headers, body: Array("token=\(token.text)".utf8))?.status == 403)
            }
            #expect(try await request(port, "GET", "/dashboard.json", headers: [
                "Cookie": session, "Origin": "http://127.0.0.1:\(port)", "Sec-Fetch-Site": "same-origin",
            ])?.status == 200)
            #expect(try await request(port, "GET", "/", headers: ["Cookie": session, "Sec-Fetch-Site": "none"])?.status == 200)
            // A rebinding name in Host is refused before anything else.
            #expect(try await request(port, "GET", "/", headers: ["Cookie": session], host: "evil.example:\(port)")?.status == 403)
            await endpoint.stop()
        }
    }

    @Test("The stream sends a snapshot per interval as Server-Sent Events and ends with its lifetime; intervals under 100 ms are refused")
    func streamSendsSnapshots() async throws {
        let key = ClusterKey.generate()
        try await withNode(key: key) { node in
            let token = OperationsToken.derived(from: key)
            #expect(throws: OperationsError.self) {
                var configuration = OperationsConfiguration(tokens: [token])
                configuration.dashboardInterval = .milliseconds(50)
                _ = try OperationsEndpoint(node: node, configuration: configuration)
            }
            let (endpoint, port) = try await startEndpoint(node, tokens: [token]) {
                $0.dashboardInterval = .milliseconds(200)
                $0.dashboardStreamLifetime = .milliseconds(1100)
            }
            try await node.queue(named: "seen").push(contentsOf: [[1], [2], [3]])
            let answer = try #require(try await request(port, "GET", "/dashboard/stream", token: token))
            #expect(answer.status == 200)
            #expect(answer.header("Content-Type") == "text/event-stream")
            let events = String(decoding: dechunked(answer.body), as: UTF8.self).components(separatedBy: "\n\n").filter { $0.hasPrefix("event: snapshot\ndata: ") }
            #expect((3...7).contains(events.count), "\(events.count) snapshots in 1.1 s at 200 ms")
            let last = try #require(events.last)
            let snapshot = try JSONDecoder().decode(DashboardSnapshot.self, from: Data(last.dropFirst("event: snapshot\ndata: ".count).utf8))
            #expect(snapshot.peerID == node.peerID.description)
            #expect(endpoint.dashboardStreams.withLock { $0 } == 0, "the ended stream still counts as open")
            await endpoint.stop()
        }
    }
}

/// The body of a chunked answer, without the chunk framing.
func dechunked(_ body: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var index = 0
    while index < body.count {
        guard let lineEnd = (index..<body.count - 1).first(where: { body[$0] == 13 && body[$0 + 1] == 10 }),
              let size = Int(String(decoding: body[index..<lineEnd], as: UTF8.self), radix: 16), size > 0,
              lineEnd + 2 + size <= body.count else { break }
        out += body[(lineEnd + 2)..<(lineEnd + 2 + size)]
        index = lineEnd + 2 + size + 2
    }
    return out
}
