import Foundation
import Hummingbird
import ServiceLifecycle
import HummingbirdCore
import Logging
import P2PQLink
import P2PQNode
import Synchronization

/// A node's operations endpoint over HTTP/1.1: `/metrics` (Prometheus text), `/status` (JSON)
/// and the queue routes `POST /queue/<name>/push` and `POST /queue/<name>/pop` (see
/// docs/operations.md).
///
/// It runs on Hummingbird's event loop threads, not on the node's reactor, and reaches the node
/// only through its public async API; start it after ``Node/start()`` and stop it before
/// ``Node/stop()``:
///
/// ```swift
/// let endpoint = try OperationsEndpoint(node: node, configuration: .init(address: "127.0.0.1:9100", tokens: [token]))
/// let address = try await endpoint.start()
/// ...
/// await endpoint.stop()
/// ```
public final class OperationsEndpoint: Sendable {
    public let node: Node
    public let configuration: OperationsConfiguration
    let logger: Logger
    let refusals: RefusalLog
    /// The dashboard's cookie value: a browser that presented a valid token gets it (valid
    /// until the endpoint restarts).
    let dashboardSession = OperationsToken.generate()
    /// Dashboard streams open now.
    let dashboardStreams = Mutex(0)
    /// With ``OperationsConfiguration/dashboardPull``.
    let puller: DashboardPuller?

    private enum State: Sendable {
        case idle
        case running(Task<Void, Never>, ServiceGroup)
        case stopped
    }
    private let state = Mutex<State>(.idle)

    /// Checks the configuration; nothing listens before ``start()``.
    ///
    /// - Throws: ``OperationsError/tokenRequired(_:)`` off loopback without a token,
    ///   ``OperationsError/invalidConfiguration(_:)`` for limits out of range.
    public init(node: Node, configuration: OperationsConfiguration, logger: Logger = Logger(label: "p2pq.operations")) throws(OperationsError) {
        guard configuration.isLoopback || !configuration.tokens.isEmpty else {
            throw .tokenRequired("the operations endpoint on \(configuration.host) (off loopback) needs a bearer token: "
                + "pass a token file (p2pq keygen --token) or a cluster key")
        }
        guard configuration.maxConnections > 0, configuration.maxConnectionsPerSource > 0, configuration.maxHeaderBytes >= 1024, configuration.maxBodyBytes > 0,
              configuration.idleTimeout > .zero, configuration.bodyTimeout > .zero, configuration.pushTimeout > .zero,
              configuration.maxDashboardStreams > 0, configuration.dashboardStreamLifetime > .zero else {
            throw .invalidConfiguration("operations limits must be positive (and headers at least 1 KiB)")
        }
        guard configuration.dashboardInterval >= .milliseconds(100) else {
            throw .invalidConfiguration("the dashboard's stream interval must be at least 100 ms")
        }
        self.node = node
        self.configuration = configuration
        self.logger = logger
        self.refusals = RefusalLog(logger: logger)
        puller = configuration.dashboardPull
            ? DashboardPuller(interval: max(configuration.dashboardPullInterval, .milliseconds(500)), token: configuration.dashboardPullToken ?? configuration.tokens.first)
            : nil
    }

    /// The node's dashboard, with what was pulled from its members.
    func dashboard() async -> DashboardSnapshot? {
        guard let own = await node.dashboard() else { return nil }
        return puller?.merged(own) ?? own
    }

    /// Binds and starts serving; returns the bound address (`host:port`, the real port when 0
    /// was asked).
    public func start() async throws(OperationsError) -> String {
        let configuration = self.configuration
        let responder = OperationsResponder(endpoint: self)
        let (bound, reportBound) = AsyncStream.makeStream(of: Result<Int, OperationsError>.self)
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(
            maxHeaderFieldSize: configuration.maxHeaderBytes, maxHeaderListSize: configuration.maxHeaderBytes,
            maxHeaderFieldCount: 100)
        let counts = SourceConnectionCounts(limit: configuration.maxConnectionsPerSource)
        let refusals = self.refusals
        let app = Application(
            responder: responder,
            server: .http1(configuration: .init(
                additionalChannelHandlers: [SourceLimitHandler(counts: counts, refusals: refusals)],
                idleTimeout: .nanoseconds(configuration.idleTimeout.nanoseconds),
                httpDecoderConfiguration: decoder)),
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port),
                availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections, logger: logger)),
            onServerRunning: { channel in
                reportBound.yield(.success(channel.localAddress?.port ?? configuration.port))
            },
            logger: logger)
        // Run in a group of its own (no signal handlers: the node's owner handles signals) so
        // that stop() can shut the server down gracefully: it stops accepting first. Cancelling
        // the serving task alone can drop a connection accepted but not yet served, and NIO
        // traps on that ("Deinited NIOAsyncWriter without calling finish()").
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        let shouldStart = state.withLock { state -> Bool in
            guard case .idle = state else { return false }
            state = .running(Task {
                do {
                    try await group.run()
                } catch {
                    reportBound.yield(.failure(.cannotBind("operations endpoint on \(configuration.host):\(configuration.port): \(error)")))
                }
                reportBound.finish()
            }, group)
            return true
        }
        guard shouldStart else { throw .alreadyStarted }
        for await result in bound {
            switch result {
            case .success(let port):
                let host = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
                logger.info("operations endpoint on http://\(host):\(port)")
                // Peers' dashboards may pull from here (an unspecified host: the links' address).
                await node.advertiseOperations(host: configuration.host, port: UInt16(clamping: port))
                puller?.start(node: node)
                return "\(host):\(port)"
            case .failure(let error):
                await stop()
                throw error
            }
        }
        throw .cannotBind("operations endpoint on \(configuration.host):\(configuration.port) stopped before it listened")
    }

    /// Whether it serves (started and not stopped): live streams end when it stops.
    var isRunning: Bool {
        state.withLock { state in
            if case .running = state { return true }
            return false
        }
    }

    /// Stops listening and closes every connection (waiting requests end); idempotent.
    public func stop() async {
        let running = state.withLock { state -> (Task<Void, Never>, ServiceGroup)? in
            defer { state = .stopped }
            if case .running(let task, let group) = state { return (task, group) }
            return nil
        }
        await puller?.stop()
        guard let (task, group) = running else { return }
        // Graceful first (no new connections; requests in progress may finish), then cancelled
        // after a grace period: waiting pops and dashboard streams would hold it much longer.
        await group.triggerGracefulShutdown()
        await withTaskGroup(of: Void.self) { waits in
            waits.addTask { await task.value }
            waits.addTask { try? await Task.sleep(for: Self.stopGrace) }
            await waits.next()
            task.cancel()
            waits.cancelAll()
        }
    }

    /// How long ``stop()`` lets requests in progress finish before it closes their connections.
    static let stopGrace: Duration = .milliseconds(500)
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// Warnings for refused requests, at most one per interval with the count of those it
/// summarises, so that a flood of bad requests cannot flood the log.
final class RefusalLog: Sendable {
    private struct State {
        var lastLogged: ContinuousClock.Instant?
        var suppressed = 0
    }
    private let state = Mutex(State())
    private let logger: Logger
    static let interval: Duration = .seconds(10)

    init(logger: Logger) {
        self.logger = logger
    }

    func refused(_ status: Int, _ why: String) {
        note("refused a request: \(status): \(why)")
    }

    /// Logs `what` unless a line was logged within the interval (then it is counted).
    func note(_ what: String) {
        let now = ContinuousClock.now
        let line = state.withLock { state -> String? in
            if let last = state.lastLogged, now - last < Self.interval {
                state.suppressed += 1
                return nil
            }
            defer {
                state.lastLogged = now
                state.suppressed = 0
            }
            return state.suppressed == 0 ? what : "\(what) (and \(state.suppressed) more refusals in the last \(Self.interval))"
        }
        if let line { logger.warning("operations endpoint \(line)") }
    }
}
