import Foundation
import Hummingbird
import P2PQLink
import P2PQNode
import NIOCore
import Synchronization

/// What `POST /queue/<name>/pop` answers (JSON).
public struct QueuePopAnswer: Sendable, Codable, Equatable {
    /// The queue popped from.
    public var queue: String
    /// `utf8` (each item as text, invalid sequences replaced) or `base64`.
    public var encoding: String
    /// The items, in the order they left the queue; empty when the timeout passed first.
    public var items: [String]
    /// With `lease`: each item's lease token (decimal text), for `POST /queue/<name>/ack` or `nack`.
    public var tokens: [String]?
    /// With `lease`: how many times each item has been handed out, this time included.
    public var deliveryCounts: [Int]?

    public init(queue: String, encoding: String, items: [String], tokens: [String]? = nil, deliveryCounts: [Int]? = nil) {
        self.queue = queue
        self.encoding = encoding
        self.items = items
        self.tokens = tokens
        self.deliveryCounts = deliveryCounts
    }

    /// The items' bytes.
    public var payloads: [[UInt8]]? {
        if encoding == "base64" {
            var out: [[UInt8]] = []
            for item in items {
                guard let data = Data(base64Encoded: item) else { return nil }
                out.append(Array(data))
            }
            return out
        }
        return items.map { Array($0.utf8) }
    }
}

/// An answer the checks or a route decided on; thrown to leave a route early.
struct Refusal: Error {
    var status: HTTPResponse.Status
    var message: String
    var headers: HTTPFields = [:]
    /// Close the connection after the answer (the request may not have been read whole).
    var close = false
}

/// The endpoint's routes and checks. Runs on Hummingbird's threads; the node is reached only
/// through its public API.
struct OperationsResponder: HTTPResponder {
    typealias Context = OperationsContext
    let endpoint: OperationsEndpoint

    var configuration: OperationsConfiguration { endpoint.configuration }

    func respond(to request: Request, context: Context) async throws -> Response {
        do {
            return try await route(request, context)
        } catch let refusal as Refusal {
            if refusal.status.code != 404 { endpoint.refusals.refused(refusal.status.code, refusal.message) }
            var headers = refusal.headers
            headers[.contentType] = "text/plain; charset=utf-8"
            if refusal.close { headers[.connection] = "close" }
            return Response(status: refusal.status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: refusal.message + "\n")))
        }
    }

    private func route(_ request: Request, _ context: Context) async throws -> Response {
        let path = request.uri.path
        if let dashboard = DashboardRoute(rawValue: path) {
            // The dashboard is for browsers: same-origin requests are served, others refused.
            try checkHost(request)
            try checkSameOrigin(request)
            return try await serveDashboard(dashboard, request)
        }
        try checkBrowserAndHost(request)
        switch path {
        case "/metrics":
            guard request.method == .get else { throw Refusal(status: .methodNotAllowed, message: "use GET") }
            if !(configuration.isLoopback || configuration.metricsOpen) { try authorize(request) }
            guard let text = await endpoint.node.metricsText() else {
                throw Refusal(status: .notFound, message: "this node reports metrics through the application's metrics factory")
            }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: text)))
        case "/status":
            guard request.method == .get else { throw Refusal(status: .methodNotAllowed, message: "use GET") }
            try authorize(request)
            guard let status = await endpoint.node.status() else {
                throw Refusal(status: .serviceUnavailable, message: "the node is not running")
            }
            return try json(status)
        default:
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            // "", "queue", name, verb
            guard parts.count == 4, parts[0].isEmpty, parts[1] == "queue", ["push", "pop", "ack", "nack"].contains(parts[3]) else {
                throw Refusal(status: .notFound, message: "no route \(request.method) \(path)")
            }
            guard request.method == .post else { throw Refusal(status: .methodNotAllowed, message: "use POST") }
            try authorize(request)
            guard let name = String(parts[2]).removingPercentEncoding, (1...255).contains(name.utf8.count) else {
                throw Refusal(status: .badRequest, message: "a queue name has 1 to 255 UTF-8 bytes")
            }
            switch parts[3] {
            case "push": return try await push(name, request)
            case "pop": return try await pop(name, request, context)
            default: return try await settle(name, request, ack: parts[3] == "ack")
            }
        }
    }

    // MARK: Checks

    /// Browsers are not served unless an origin is allowed (a page must not drive the queue of
    /// a node on its visitor's machine), and the Host must name this endpoint (DNS rebinding).
    private func checkBrowserAndHost(_ request: Request) throws {
        if let origin = request.headers[.origin], !configuration.allowedOrigins.contains(origin) {
            throw Refusal(status: .forbidden, message: "requests from browsers are refused (origin \(origin.prefix(100)) not allowed)")
        }
        try checkHost(request)
    }

    /// The Host must name this endpoint (DNS rebinding).
    func checkHost(_ request: Request) throws {
        guard let authority = request.head.authority else { return }  // HTTP/1.0 without Host
        // DNS rebinding points a name the attacker owns at this address; an IP literal or
        // localhost in Host cannot come from that, a foreign name can.
        let host = Self.hostName(authority)
        let allowed = configuration.allowedHosts
        guard host == "localhost" || host == configuration.host.lowercased() || Self.isIPLiteral(host)
              || allowed.contains("*") || allowed.contains(host) else {
            throw Refusal(status: .forbidden, message: "Host \(authority.prefix(100)) is not this endpoint's address")
        }
    }

    /// The host of a Host header, lower case, without port and IPv6 brackets.
    static func hostName(_ authority: String) -> String {
        var host = Substring(authority.lowercased())
        if host.hasPrefix("[") {
            if let close = host.firstIndex(of: "]") { host = host[host.index(after: host.startIndex)..<close] }
        } else if let colon = host.lastIndex(of: ":") {
            host = host[..<colon]
        }
        return String(host)
    }

    static func isIPLiteral(_ host: String) -> Bool {
        if host.contains(":") { return host.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." } }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { part in part.count <= 3 && UInt8(part) != nil }
    }

    func authorize(_ request: Request) throws {
        let unauthorized = Refusal(status: .unauthorized, message: "this route needs Authorization: Bearer <token>",
                                   headers: [.wwwAuthenticate: "Bearer"])
        guard let header = request.headers[.authorization] else { throw unauthorized }
        let bytes = Array(header.utf8)
        let prefix = Array("bearer ".utf8)
        guard bytes.count > prefix.count, bytes.prefix(prefix.count).map({ $0 | 0x20 }) == prefix else { throw unauthorized }
        let presented = bytes.dropFirst(prefix.count)
        // Every configured token is compared in full (no early exit on the first match).
        var matched = false
        for token in configuration.tokens where token.matches(presented) { matched = true }
        guard matched else { throw unauthorized }
    }

    // MARK: Queue routes

    /// The request body, within the size and time limits.
    private func body(of request: Request, _ stream: RequestBody) async throws -> [UInt8] {
        let limit = configuration.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw Refusal(status: .contentTooLarge, message: "body over \(limit) bytes", close: true)
        }
        let deadline = configuration.bodyTimeout
        return try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            group.addTask {
                var bytes: [UInt8] = []
                for try await var chunk in stream {
                    guard bytes.count + chunk.readableBytes <= limit else {
                        throw Refusal(status: .contentTooLarge, message: "body over \(limit) bytes", close: true)
                    }
                    bytes += chunk.readBytes(length: chunk.readableBytes) ?? []
                }
                return bytes
            }
            group.addTask {
                try await Task.sleep(for: deadline)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let bytes = first else {
                throw Refusal(status: .requestTimeout, message: "the body did not arrive within \(deadline)", close: true)
            }
            return bytes
        }
    }

    /// `POST /queue/<name>/push[?format=lines|raw]`. A push into a full queue waits up to
    /// `pushTimeout`, then is withdrawn and answered 503 with Retry-After; a client that leaves
    /// while it waits withdraws it too.
    private func push(_ name: String, _ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let format = query["format"].map(String.init) ?? "lines"
        guard format == "lines" || format == "raw" else {
            throw Refusal(status: .badRequest, message: "unknown format '\(format.prefix(100))': use lines or raw")
        }
        let queue = endpoint.node.queue(named: name)
        let timeout = configuration.pushTimeout
        return try await request.body.consumeWithCancellationOnInboundClose { stream in
            let body = try await self.body(of: request, stream)
            let items: [[UInt8]]
            if format == "raw" {
                items = [body]
            } else {
                var lines = body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
                    Array(line.last == UInt8(ascii: "\r") ? line.dropLast() : line)
                }
                if body.isEmpty || body.last == UInt8(ascii: "\n") { lines.removeLast() }
                items = lines
            }
            guard !items.isEmpty else { throw Refusal(status: .badRequest, message: "no items in the body") }
            do throws(QueueError) {
                try await queue.push(contentsOf: items, timeout: timeout)
            } catch {
                throw Self.refusal(error, "push")
            }
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: "pushed \(items.count)\n")))
        }
    }

    /// `POST /queue/<name>/pop?max=N&timeout=ms[&encoding=utf8|base64][&lease=ms]`. A waiting
    /// pop whose client closes the connection is withdrawn at once: its items go to the next
    /// consumer. With `lease` the items are leased (tokens and delivery counts in the answer;
    /// `ack` or `nack` them); without, they are taken under an internal lease that is acked
    /// once the answer is written, and nacked (the items go back) if the client is gone first.
    private func pop(_ name: String, _ request: Request, _ context: Context) async throws -> Response {
        let query = request.uri.queryParameters
        guard let max = Int(query["max"] ?? "1"), (1...OperationsConfiguration.maxPopItems).contains(max) else {
            throw Refusal(status: .badRequest, message: "max must be between 1 and \(OperationsConfiguration.maxPopItems)")
        }
        guard let timeout = Int(query["timeout"] ?? "0"), (0...OperationsConfiguration.maxPopTimeoutMilliseconds).contains(timeout) else {
            throw Refusal(status: .badRequest, message: "timeout must be between 0 and \(OperationsConfiguration.maxPopTimeoutMilliseconds) ms")
        }
        let encoding = query["encoding"].map(String.init) ?? "utf8"
        guard encoding == "utf8" || encoding == "base64" else {
            throw Refusal(status: .badRequest, message: "unknown encoding '\(encoding.prefix(100))': use utf8 or base64")
        }
        var lease: Int?
        if let text = query["lease"] {
            guard let value = Int(text), (1...OperationsConfiguration.maxLeaseMilliseconds).contains(value) else {
                throw Refusal(status: .badRequest, message: "lease must be between 1 and \(OperationsConfiguration.maxLeaseMilliseconds) ms")
            }
            lease = value
        }
        let queue = endpoint.node.queue(named: name)
        // The tokens of what the pop took, so that they go back if no answer carries them.
        let settlement = LeaseSettlement(queue: queue)
        let items: [LeasedItem]
        do {
            // Hummingbird does not cancel a handler whose client went away; this does, and the
            // cancelled pop withdraws its waiter before any item is handed to it. Items that
            // arrive as the client leaves are nacked below (the value may be dropped then).
            items = try await request.body.consumeWithCancellationOnInboundClose { _ in
                let items: [LeasedItem]
                do throws(QueueError) {
                    items = try await queue.pop(max: max, lease: .milliseconds(lease ?? OperationsConfiguration.internalLeaseMilliseconds),
                                                timeout: .milliseconds(timeout))
                } catch .timeout {
                    return []
                } catch {
                    throw Self.refusal(error, "pop")
                }
                settlement.hold(items.map(\.token))
                try Task.checkCancellation()
                return items
            }
        } catch {
            await settlement.nack()
            throw error
        }
        let texts = items.map { encoding == "base64" ? Data($0.bytes).base64EncodedString() : String(decoding: $0.bytes, as: UTF8.self) }
        if lease != nil {
            settlement.handedOver()
            return try json(QueuePopAnswer(queue: name, encoding: encoding, items: texts, tokens: items.map(\.token.description),
                                           deliveryCounts: items.map(\.deliveryCount)))
        }
        // The plain pop's items are consumed only once the answer is written.
        let data = try jsonData(QueuePopAnswer(queue: name, encoding: encoding, items: texts))
        let channel = context.channel
        return Response(status: .ok, headers: [.contentType: "application/json", .contentLength: String(data.count)],
                        body: ResponseBody(contentLength: data.count) { writer in
            do {
                try await writer.write(ByteBuffer(bytes: data))
                try await writer.finish(nil)
            } catch {
                await settlement.nack()
                throw error
            }
            // The writer returns once the answer is queued on the channel, maybe before the loop
            // wrote it or saw the client leave. The kernel knows whether the client got it
            // (``AnswerDelivery``); until it does, ask again.
            var written = false
            for _ in 0..<AnswerDelivery.maxChecks {
                let verdict = (try? await channel.eventLoop.flatSubmit { () -> EventLoopFuture<AnswerDelivery> in
                    guard channel.isActive else { return channel.eventLoop.makeSucceededFuture(.lost) }
                    guard let socket = channel as? any SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(.delivered) }
                    return socket.getTCPInfo().map { AnswerDelivery(state: $0.tcpi_state, unackedSegments: $0.tcpi_unacked, probes: $0.tcpi_probes) }
                }.get()) ?? .lost
                if verdict == .pending {
                    try? await Task.sleep(for: AnswerDelivery.checkInterval)
                    continue
                }
                written = verdict == .delivered
                break
            }
            if written { await settlement.ack() } else { await settlement.nack() }
        })
    }

    /// `POST /queue/<name>/ack` and `/nack`: the body holds lease tokens (decimal), separated
    /// by white space or commas. Unknown tokens (the lease ended, acked already) are answered
    /// 410 naming them; the others are applied all the same.
    private func settle(_ name: String, _ request: Request, ack: Bool) async throws -> Response {
        let what = ack ? "ack" : "nack"
        let queue = endpoint.node.queue(named: name)
        return try await request.body.consumeWithCancellationOnInboundClose { stream in
            let body = try await self.body(of: request, stream)
            var tokens: [LeaseToken] = []
            for word in body.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\n")
                                                     || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }) {
                guard word.count <= 20, let value = UInt64(String(decoding: word, as: UTF8.self)) else {
                    throw Refusal(status: .badRequest, message: "a lease token is a decimal number, not '\(String(decoding: word.prefix(40), as: UTF8.self))'")
                }
                tokens.append(LeaseToken(value))
            }
            guard !tokens.isEmpty else { throw Refusal(status: .badRequest, message: "no lease tokens in the body") }
            do throws(QueueError) {
                if ack { try await queue.ack(tokens: tokens) } else { try await queue.nack(tokens: tokens) }
            } catch .unknownLease(let unknown) {
                throw Refusal(status: .gone, message: "\(what): \(QueueError.unknownLease(unknown)); the other \(tokens.count - unknown.count) applied")
            } catch {
                throw Self.refusal(error, what)
            }
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: "\(ack ? "acked" : "nacked") \(tokens.count)\n")))
        }
    }

    func json(_ value: some Encodable) throws -> Response {
        let data = try jsonData(value)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    func jsonData(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(value)
    }

    static func refusal(_ error: QueueError, _ what: String) -> Refusal {
        switch error {
        case .closed: return Refusal(status: .conflict, message: "\(what) failed: \(error)")
        case .itemTooLarge, .batchTooLarge: return Refusal(status: .contentTooLarge, message: "\(what) failed: \(error)")
        case .tooManyWaiters, .tooManyQueues: return Refusal(status: .tooManyRequests, message: "\(what) failed: \(error)", headers: [.retryAfter: "1"])
        case .timeout:
            return Refusal(status: .serviceUnavailable, message: "\(what) failed: the queue stayed full; nothing was pushed, retry later",
                          headers: [.retryAfter: "1"])
        case .nodeStopped, .cancelled, .noLivePeer:
            return Refusal(status: .serviceUnavailable, message: "\(what) failed: \(error)", headers: [.retryAfter: "1"])
        case .unknownLease: return Refusal(status: .gone, message: "\(what) failed: \(error)")
        case .invalidLease: return Refusal(status: .badRequest, message: "\(what) failed: \(error)")
        }
    }
}

/// Hummingbird's basic context plus the connection, so that a pop can tell whether its answer
/// reached the socket.
struct OperationsContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Whether a plain pop's answer reached its client, read off the server socket's TCP state
/// after the answer was written. A client that closes its side once it has read the answer (as
/// curl does) leaves the socket in CLOSE_WAIT: that is delivery when the client acknowledged
/// every segment sent, not a departure. A reset (CLOSE) or a closed channel means the answer
/// cannot arrive. Unacknowledged segments in CLOSE_WAIT are pending until acked or reset; if
/// that takes longer than `maxChecks` × `checkInterval`, the items go back (a duplicate at
/// worst, never a loss).
enum AnswerDelivery: Equatable, Sendable {
    case delivered, lost, pending

    static let maxChecks = 200
    static let checkInterval = Duration.milliseconds(10)

    /// `state` is Linux's `tcpi_state`; `probes` counts zero-window probes (a client that
    /// stopped reading, whose unsent bytes are not counted as unacknowledged segments).
    init(state: UInt8, unackedSegments: UInt32, probes: UInt8) {
        switch state {
        case 1:  // ESTABLISHED: the client is there; it may still vanish (docs/reliability.md)
            self = .delivered
        case 8:  // CLOSE_WAIT: the client closed its side
            self = unackedSegments == 0 && probes == 0 ? .delivered : .pending
        default:  // CLOSE (reset) and everything after a close
            self = .lost
        }
    }
}

/// The leased items of one HTTP pop until their answer is settled: acked once written, nacked
/// if it cannot be (the client is gone). Whatever is still held when it goes away (the server
/// dropped the answer unwritten) is nacked then, so an item waits for no lease to end.
final class LeaseSettlement: Sendable {
    private enum State: Sendable {
        case open([LeaseToken])
        case settled
    }
    private let state = Mutex<State>(.open([]))
    let queue: QueueHandle

    init(queue: QueueHandle) {
        self.queue = queue
    }

    func hold(_ tokens: [LeaseToken]) {
        state.withLock { state in
            if case .open(let held) = state { state = .open(held + tokens) }
        }
    }

    /// The tokens went to the client (a leased pop): theirs to settle.
    func handedOver() { _ = take() }

    func ack() async {
        let tokens = take()
        if !tokens.isEmpty { try? await queue.ack(tokens: tokens) }
    }

    func nack() async {
        let tokens = take()
        if !tokens.isEmpty { try? await queue.nack(tokens: tokens) }
    }

    private func take() -> [LeaseToken] {
        state.withLock { state in
            defer { state = .settled }
            if case .open(let held) = state { return held }
            return []
        }
    }

    deinit {
        let tokens = take()
        guard !tokens.isEmpty else { return }
        let queue = self.queue
        Task { try? await queue.nack(tokens: tokens) }
    }
}
