import P2PQReactor

/// One HTTP request the operations endpoint accepted.
struct HTTPRequest {
    var method: String
    /// The path without the query string.
    var path: String
    /// Query parameters, undecoded beyond `+` and `%XX`.
    var query: [String: String]
    var body: [UInt8]
}

/// What a route answers.
struct HTTPResponse {
    var status: Int
    var contentType: String
    var body: [UInt8]

    static func text(_ status: Int, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array((text + "\n").utf8))
    }

    static func json(_ bytes: [UInt8]) -> HTTPResponse {
        HTTPResponse(status: 200, contentType: "application/json", body: bytes)
    }
}

/// A deliberately small HTTP/1.1 server on the node's reactor for `/metrics`, `/status` and the
/// local control routes: one request per connection, bounded request size, a deadline per
/// connection, and `Connection: close`. Not a general web server; it exists so that a node can
/// be scraped and inspected without another event loop in the process.
final class OperationsServer {
    typealias Route = (HTTPRequest, @escaping (HTTPResponse) -> Void) -> Void

    static let maxHeaderBytes = 16 << 10
    static let maxBodyBytes = 4 << 20
    static let maxConnections = 64
    static let requestTimeout: Duration = .seconds(30)

    private let reactor: Reactor
    private var listener: TCPListener?
    private var open: [ObjectIdentifier: Exchange] = [:]
    let route: Route

    init(reactor: Reactor, route: @escaping Route) {
        self.reactor = reactor
        self.route = route
    }

    func start(on address: SocketAddress) throws(ReactorError) -> SocketAddress {
        let listener = try reactor.listen(on: address) { [unowned self] connection in
            guard self.open.count < Self.maxConnections else { return }  // no handler: closed
            let exchange = Exchange(server: self, connection: connection)
            self.open[ObjectIdentifier(exchange)] = exchange
            connection.handler = exchange
        }
        self.listener = listener
        return listener.localAddress
    }

    func stop() {
        listener?.close()
        listener = nil
        for exchange in open.values { exchange.connection.close() }
        open.removeAll()
    }

    fileprivate func finished(_ exchange: Exchange) {
        open[ObjectIdentifier(exchange)] = nil
    }

    /// One connection: read the request, route it once, write the answer, close.
    fileprivate final class Exchange: TCPConnectionHandler {
        unowned let server: OperationsServer
        let connection: TCPConnection
        private var buffer: [UInt8] = []
        private var routed = false
        private var timer: TimerID?

        init(server: OperationsServer, connection: TCPConnection) {
            self.server = server
            self.connection = connection
            timer = server.reactor.schedule(after: OperationsServer.requestTimeout) { [weak self] in
                self?.timer = nil
                self?.connection.close()
            }
        }

        func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
            guard !routed else { return }
            buffer.append(contentsOf: bytes)
            switch Self.parse(buffer) {
            case .incomplete:
                if buffer.count > OperationsServer.maxHeaderBytes + OperationsServer.maxBodyBytes {
                    respond(.text(413, "request too large"))
                }
            case .invalid(let status, let why):
                respond(.text(status, why))
            case .request(let request):
                routed = true
                buffer = []
                server.route(request) { [weak self] response in self?.respond(response) }
            }
        }

        func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
            if let timer { server.reactor.cancel(timer) }
            timer = nil
            server.finished(self)
        }

        private func respond(_ response: HTTPResponse) {
            routed = true
            guard connection.state == .active else { return }
            let reason = Self.reasons[response.status] ?? "Status"
            let head = "HTTP/1.1 \(response.status) \(reason)\r\nContent-Type: \(response.contentType)\r\n"
                + "Content-Length: \(response.body.count)\r\nConnection: close\r\n\r\n"
            connection.write(Array(head.utf8))
            connection.write(response.body)
            connection.close(afterFlush: true)
        }

        static let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                              408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
                              503: "Service Unavailable", 504: "Gateway Timeout"]

        enum Parsed { case incomplete, invalid(Int, String), request(HTTPRequest) }

        static func parse(_ bytes: [UInt8]) -> Parsed {
            let end: Int? = bytes.withUnsafeBufferPointer { p in
                guard p.count >= 4 else { return nil }
                for i in 0...(p.count - 4) where p[i] == 13 && p[i + 1] == 10 && p[i + 2] == 13 && p[i + 3] == 10 {
                    return i
                }
                return nil
            }
            guard let end else {
                return bytes.count > maxHeaderBytes ? .invalid(413, "headers too large") : .incomplete
            }
            guard let head = String(validating: bytes[..<end], as: UTF8.self) else { return .invalid(400, "headers are not UTF-8") }
            let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
            let parts = lines[0].split(separator: " ")
            guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return .invalid(400, "bad request line") }
            var length = 0
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                if line[..<colon].lowercased() == "content-length" {
                    guard let n = Int(line[line.index(after: colon)...].trimmingSpaces), n >= 0 else {
                        return .invalid(400, "bad Content-Length")
                    }
                    length = n
                }
                if line[..<colon].lowercased() == "transfer-encoding" {
                    return .invalid(400, "chunked bodies are not accepted; send Content-Length")
                }
            }
            guard length <= maxBodyBytes else { return .invalid(413, "body over \(maxBodyBytes) bytes") }
            let bodyStart = end + 4
            guard bytes.count >= bodyStart + length else { return .incomplete }
            let target = parts[1]
            let path: Substring
            var query: [String: String] = [:]
            if let mark = target.firstIndex(of: "?") {
                path = target[..<mark]
                for pair in target[target.index(after: mark)...].split(separator: "&") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    query[percentDecoded(kv[0])] = kv.count > 1 ? percentDecoded(kv[1]) : ""
                }
            } else {
                path = target
            }
            return .request(HTTPRequest(method: String(parts[0]), path: String(path), query: query,
                                        body: Array(bytes[bodyStart..<bodyStart + length])))
        }

        static func percentDecoded(_ text: Substring) -> String {
            var out: [UInt8] = []
            var bytes = Array(text.utf8)[...]
            while let b = bytes.popFirst() {
                if b == UInt8(ascii: "+") {
                    out.append(UInt8(ascii: " "))
                } else if b == UInt8(ascii: "%"), bytes.count >= 2,
                          let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                    out.append(v)
                    bytes = bytes.dropFirst(2)
                } else {
                    out.append(b)
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}
