import Foundation
import Hummingbird
import NIOCore
import P2PQLink
import P2PQNode

/// The dashboard's routes (docs/operations.md, "Dashboard").
enum DashboardRoute: String {
    /// The page (HTML with inline script and SVG charts).
    case page = "/"
    /// A form POST with `token=<hex>`: sets the cookie.
    case login = "/login"
    /// The ``DashboardSnapshot`` as JSON.
    case json = "/dashboard.json"
    /// Server-Sent Events: one snapshot per interval.
    case stream = "/dashboard/stream"
}

extension OperationsResponder {
    static let cookieName = "p2pq_dashboard"

    /// A browser's request from another site is refused: `Origin` must be this endpoint's own
    /// (or an allowed one) and `Sec-Fetch-Site`, when sent, `same-origin` or `none` (typed in).
    func checkSameOrigin(_ request: Request) throws {
        if let site = request.headers[.init("Sec-Fetch-Site")!], site != "same-origin", site != "none" {
            throw Refusal(status: .forbidden, message: "cross-site requests to the dashboard are refused (Sec-Fetch-Site: \(site.prefix(40)))")
        }
        if let origin = request.headers[.origin] {
            let own = request.head.authority.map { "http://\($0.lowercased())" }
            guard origin.lowercased() == own || configuration.allowedOrigins.contains(origin) else {
                throw Refusal(status: .forbidden, message: "cross-origin requests to the dashboard are refused (origin \(origin.prefix(100)))")
            }
        }
    }

    /// The dashboard's cookie, if the request carries the current one.
    func hasSessionCookie(_ request: Request) -> Bool {
        for header in request.headers[values: .cookie] {
            for pair in header.split(separator: ";") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == Self.cookieName else { continue }
                if endpoint.dashboardSession.matches(Array(parts[1].trimmingCharacters(in: .whitespaces).utf8)) { return true }
            }
        }
        return false
    }

    /// The cookie or a bearer token.
    func authorizeDashboard(_ request: Request) throws {
        if hasSessionCookie(request) { return }
        try authorize(request)
    }

    func tokenIsValid(_ text: Substring) -> Bool {
        var matched = false
        for token in configuration.tokens where token.matches(text.utf8) { matched = true }
        return matched
    }

    func serveDashboard(_ route: DashboardRoute, _ request: Request) async throws -> Response {
        switch route {
        case .page:
            guard request.method == .get else { throw Refusal(status: .methodNotAllowed, message: "use GET") }
            if let token = request.uri.queryParameters["token"] {
                // Given once: it becomes the cookie, and leaves the address bar.
                guard tokenIsValid(token) else { return loginPage(failed: true) }
                return signedIn()
            }
            guard (try? authorizeDashboard(request)) != nil else { return loginPage(failed: false) }
            return Response(status: .ok, headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                .init("Content-Security-Policy")!: DashboardPage.contentSecurityPolicy,
                .init("X-Frame-Options")!: "DENY",
            ], body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
        case .login:
            guard request.method == .post else { throw Refusal(status: .methodNotAllowed, message: "use POST") }
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: 4096)
            } catch {
                throw Refusal(status: .contentTooLarge, message: "a sign-in form is at most 4 KiB", close: true)
            }
            let form = String(buffer: body)
            for pair in form.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2, parts[0] == "token", tokenIsValid(parts[1]) { return signedIn() }
            }
            return loginPage(failed: true)
        case .json:
            guard request.method == .get else { throw Refusal(status: .methodNotAllowed, message: "use GET") }
            try authorizeDashboard(request)
            guard let snapshot = await endpoint.dashboard() else {
                throw Refusal(status: .serviceUnavailable, message: "the node is not running")
            }
            return try json(snapshot)
        case .stream:
            guard request.method == .get else { throw Refusal(status: .methodNotAllowed, message: "use GET") }
            try authorizeDashboard(request)
            return try stream()
        }
    }

    private func signedIn() -> Response {
        Response(status: .seeOther, headers: [
            .location: "/", .cacheControl: "no-store",
            .setCookie: "\(Self.cookieName)=\(endpoint.dashboardSession.text); Path=/; HttpOnly; SameSite=Strict",
        ])
    }

    /// `401` with a form for the token (the dashboard itself is not served).
    private func loginPage(failed: Bool) -> Response {
        endpoint.refusals.refused(401, "dashboard without a valid token or cookie")
        return Response(status: .unauthorized, headers: [
            .contentType: "text/html; charset=utf-8", .cacheControl: "no-store", .wwwAuthenticate: "Bearer",
            .init("Content-Security-Policy")!: DashboardPage.contentSecurityPolicy,
        ], body: .init(byteBuffer: ByteBuffer(string: DashboardPage.login(failed: failed))))
    }

    /// One `snapshot` event per interval until the client leaves, the stream's lifetime ends
    /// (the browser reconnects) or the endpoint stops.
    private func stream() throws -> Response {
        let endpoint = self.endpoint
        let configuration = self.configuration
        guard endpoint.dashboardStreams.withLock({ $0 < configuration.maxDashboardStreams }) else {
            throw Refusal(status: .tooManyRequests, message: "too many dashboard streams open", headers: [.retryAfter: "5"])
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
                        body: ResponseBody { writer in
            endpoint.dashboardStreams.withLock { $0 += 1 }
            defer { endpoint.dashboardStreams.withLock { $0 -= 1 } }
            let clock = ContinuousClock()
            let end = clock.now + configuration.dashboardStreamLifetime
            try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
            while endpoint.isRunning && clock.now < end && !Task.isCancelled {
                guard let snapshot = await endpoint.dashboard() else { break }
                var event = ByteBuffer(string: "event: snapshot\ndata: ")
                event.writeBytes(try encoder.encode(snapshot))
                event.writeString("\n\n")
                try await writer.write(event)
                try await Task.sleep(for: configuration.dashboardInterval)
            }
            try await writer.finish(nil)
        })
    }
}
