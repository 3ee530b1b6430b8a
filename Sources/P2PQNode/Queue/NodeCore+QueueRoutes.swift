import Foundation

/// What `POST /queue/<name>/pop` answers (JSON).
public struct QueuePopAnswer: Sendable, Codable, Equatable {
    /// The queue popped from.
    public var queue: String
    /// `utf8` (each item as text, invalid sequences replaced) or `base64`.
    public var encoding: String
    /// The items, in the order they left the queue; empty when the timeout passed first.
    public var items: [String]

    public init(queue: String, encoding: String, items: [String]) {
        self.queue = queue
        self.encoding = encoding
        self.items = items
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

/// The operations endpoint's queue routes (see docs/operations.md, "Queue routes").
///
/// - `POST /queue/<name>/push[?format=lines|raw]`: `lines` (the default) pushes each line of
///   the body as one item (a final newline does not make an empty item; `\r\n` is accepted);
///   `raw` pushes the whole body as one item. The push waits while the queue is full, up to the
///   endpoint's request deadline. Answers `200 pushed <n>`.
/// - `POST /queue/<name>/pop?max=N&timeout=ms[&encoding=utf8|base64]`: up to `max` items
///   (default 1, at most 65,536), waiting up to `timeout` milliseconds (default 0, at most
///   25,000) for the first. Answers a ``QueuePopAnswer``; an empty list when the timeout passed.
///   Popped items are gone from the queue once answered: a client that drops the connection
///   drops them (at-least-once holds up to the node, not up to the HTTP client).
extension NodeCore {
    static let maxRoutePop = 65_536
    static let maxRouteTimeoutMilliseconds = 25_000

    /// The node's queues for status output.
    func queueStatuses() -> [NodeStatus.Queue] { queues.statuses() }

    /// Queue control routes of the operations endpoint; false when the request is not one.
    func routeQueue(_ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) -> Bool {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: false)
        // "", "queue", name, verb
        guard parts.count == 4, parts[0].isEmpty, parts[1] == "queue", parts[3] == "push" || parts[3] == "pop" else { return false }
        let name = String(parts[2]).removingPercentEncoding ?? String(parts[2])
        guard request.method == "POST" else {
            respond(.text(405, "use POST"))
            return true
        }
        guard (1...255).contains(name.utf8.count) else {
            respond(.text(400, "a queue name has 1 to 255 UTF-8 bytes"))
            return true
        }
        if parts[3] == "push" {
            routePush(name, request, respond)
        } else {
            routePop(name, request, respond)
        }
        return true
    }

    private func routePush(_ name: String, _ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) {
        let items: [[UInt8]]
        switch request.query["format"] ?? "lines" {
        case "raw":
            items = [request.body]
        case "lines":
            var lines = request.body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
                Array(line.last == UInt8(ascii: "\r") ? line.dropLast() : line)
            }
            if request.body.isEmpty || request.body.last == UInt8(ascii: "\n") { lines.removeLast() }
            items = lines
        case let other:
            respond(.text(400, "unknown format '\(other)': use lines or raw"))
            return
        }
        guard !items.isEmpty else {
            respond(.text(400, "no items in the body"))
            return
        }
        queues.push(name, items, wait: true) { result in
            switch result {
            case .success: respond(.text(200, "pushed \(items.count)"))
            case .failure(let error): respond(.text(Self.httpStatus(error), "push failed: \(error)"))
            }
        }
    }

    private func routePop(_ name: String, _ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) {
        guard let max = Int(request.query["max"] ?? "1"), (1...Self.maxRoutePop).contains(max) else {
            respond(.text(400, "max must be between 1 and \(Self.maxRoutePop)"))
            return
        }
        guard let timeout = Int(request.query["timeout"] ?? "0"), (0...Self.maxRouteTimeoutMilliseconds).contains(timeout) else {
            respond(.text(400, "timeout must be between 0 and \(Self.maxRouteTimeoutMilliseconds) ms"))
            return
        }
        let encoding = request.query["encoding"] ?? "utf8"
        guard encoding == "utf8" || encoding == "base64" else {
            respond(.text(400, "unknown encoding '\(encoding)': use utf8 or base64"))
            return
        }
        queues.pop(name, max: max, timeout: .milliseconds(timeout)) { result in
            let items: [[UInt8]]
            switch result {
            case .success(let popped): items = popped.arrays
            case .failure(.timeout): items = []
            case .failure(let error):
                respond(.text(Self.httpStatus(error), "pop failed: \(error)"))
                return
            }
            let texts = items.map { encoding == "base64" ? Data($0).base64EncodedString() : String(decoding: $0, as: UTF8.self) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            guard let data = try? encoder.encode(QueuePopAnswer(queue: name, encoding: encoding, items: texts)) else {
                respond(.text(500, "the answer could not be encoded"))
                return
            }
            respond(.json(Array(data)))
        }
    }

    private static func httpStatus(_ error: QueueError) -> Int {
        switch error {
        case .closed: return 409
        case .itemTooLarge, .batchTooLarge: return 413
        case .tooManyWaiters, .tooManyQueues: return 429
        case .nodeStopped, .cancelled, .timeout, .noLivePeer: return 503
        }
    }
}
