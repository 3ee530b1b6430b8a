import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 client for a node's operations endpoint (the `p2pq` commands, the
/// dashboard pull and the tests use it): one request per connection, a deadline on the whole
/// exchange, a bound on the answer's size.
///
/// Not `URLSession`: on Linux it runs on libcurl driven by Dispatch sources, and under load a
/// request now and then never left the client (the server closed the silent connection after
/// its idle timeout and the client reported an empty reply). SwiftNIO's HTTP codec does the
/// parsing here.
public enum OperationsClient {
    /// A complete answer.
    public struct Response: Sendable {
        /// The HTTP status code.
        public var status: Int
        /// Header fields, in the order received.
        public var headers: [(name: String, value: String)]
        /// The body.
        public var body: [UInt8]

        /// The first value of header `name` (case-insensitive).
        public func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }

        /// The body as UTF-8 text.
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Why no complete answer came.
    public enum Failure: Error, CustomStringConvertible {
        /// Not an `http://host:port/path` URL.
        case badURL(String)
        /// The connection could not be made.
        case unreachable(String)
        /// No complete answer within the deadline.
        case timedOut(Duration)
        /// The connection closed before the answer was complete.
        case closedEarly
        /// The answer's body was larger than allowed.
        case tooLarge(Int)
        /// The connection failed mid-exchange.
        case failed(String)

        public var description: String {
            switch self {
            case .badURL(let url): "bad URL '\(url)' (expected http://host:port/path)"
            case .unreachable(let reason): "cannot connect: \(reason)"
            case .timedOut(let deadline): "no complete answer within \(deadline)"
            case .closedEarly: "the server closed the connection before a complete answer"
            case .tooLarge(let limit): "the answer is larger than \(limit) bytes"
            case .failed(let reason): reason
            }
        }
    }

    /// Sends one request to `url` (`http://host:port/path?query`) and returns the answer.
    /// `Host`, `Content-Length` and `Connection: close` are added.
    public static func send(
        _ url: String, method: String = "GET", headers: [(String, String)] = [], body: [UInt8] = [],
        timeout: Duration = .seconds(30), maxResponseBytes: Int = 64 << 20
    ) async throws(Failure) -> Response {
        guard let components = URLComponents(string: url), components.scheme == "http",
              let host = components.host, !host.isEmpty else { throw .badURL(url) }
        let port = components.port ?? 80
        let path = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath)
            + (components.percentEncodedQuery.map { "?\($0)" } ?? "")
        // URLComponents gives an IPv6 host without brackets; connect wants it bare, Host with them.
        let bareHost = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
        head.headers.add(name: "Host", value: (bareHost.contains(":") ? "[\(bareHost)]" : bareHost) + ":\(port)")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        head.headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
        head.headers.replaceOrAdd(name: "Connection", value: "close")

        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = loop.makePromise(of: Response.self)
        // The request is written by the handler as soon as the connection is up, on the event
        // loop: a task resumed in between could wait for a busy cooperative pool while the
        // deadline runs.
        let request = ResponseCollector.Request(head: head, body: body.isEmpty ? nil : ByteBuffer(bytes: body))
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        ResponseCollector(request: request, promise: promise, timeout: TimeAmount(timeout), limit: maxResponseBytes))
                }
            }
        bootstrap.connect(host: bareHost, port: port).whenFailure { error in
            promise.fail(Failure.unreachable("\(bareHost):\(port): \(Self.reason(error))"))
        }
        do {
            return try await promise.futureResult.get()
        } catch let failure as Failure {
            throw failure
        } catch {
            throw .failed("\(error)")
        }
    }
}

extension OperationsClient {
    /// A connect error in a few words ("Connection refused", "cannot resolve the host").
    fileprivate static func reason(_ error: Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
        if let connection = error as? NIOConnectionError {
            if let first = connection.connectionErrors.first { return reason(first.error) }
            if connection.dnsAError != nil || connection.dnsAAAAError != nil { return "cannot resolve the host" }
        }
        if case .connectTimeout? = error as? ChannelError { return "connect timed out" }
        return "\(error)"
    }
}

extension TimeAmount {
    fileprivate init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Collects one answer into `promise`; fails it on a deadline, an early close or an error
/// (closing the connection), and after a complete answer leaves the close to the server.
private final class ResponseCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    struct Request: Sendable {
        var head: HTTPRequestHead
        var body: ByteBuffer?
    }

    private let request: Request
    private let promise: EventLoopPromise<OperationsClient.Response>
    private let timeout: TimeAmount
    private let limit: Int
    private static let lingerBeforeClose = TimeAmount.seconds(2)
    private var response = OperationsClient.Response(status: 0, headers: [], body: [])
    private var done = false
    private var deadline: Scheduled<Void>?

    init(request: Request, promise: EventLoopPromise<OperationsClient.Response>, timeout: TimeAmount, limit: Int) {
        self.request = request
        self.promise = promise
        self.timeout = timeout
        self.limit = limit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let timeout = self.timeout
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            finish(context, .failure(OperationsClient.Failure.timedOut(.nanoseconds(timeout.nanoseconds))))
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(request.head)), promise: nil)
        if let body = request.body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            response.status = Int(head.status.code)
            response.headers = head.headers.map { (name: $0.name, value: $0.value) }
        case .body(let buffer):
            guard response.body.count + buffer.readableBytes <= limit else {
                return finish(context, .failure(OperationsClient.Failure.tooLarge(limit)))
            }
            response.body.append(contentsOf: buffer.readableBytesView)
        case .end:
            // The server closes (the request said `Connection: close`); closing here at once
            // would race its check that the answer got through (a plain pop's items go back
            // when the client has closed before that check: a duplicate). A server that keeps
            // the connection is left after `lingerBeforeClose`.
            finish(context, .success(response), close: false)
            let linger = context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerBeforeClose) { context.close(promise: nil) }
            deadline = linger
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(context, .failure(OperationsClient.Failure.closedEarly))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // The decoder reports a close mid-answer as a parse error.
        if let parse = error as? HTTPParserError, parse == .invalidEOFState {
            return finish(context, .failure(OperationsClient.Failure.closedEarly))
        }
        finish(context, .failure(OperationsClient.Failure.failed("\(error)")))
    }

    private func finish(_ context: ChannelHandlerContext, _ result: Result<OperationsClient.Response, Error>, close: Bool = true) {
        guard !done else { return }
        done = true
        deadline?.cancel()
        deadline = nil
        promise.completeWith(result)
        if close { context.close(promise: nil) }
    }
}
