import P2PQLink

/// How an ``OperationsEndpoint`` listens, whom it serves and its limits.
public struct OperationsConfiguration: Sendable {
    /// Host to bind (an IP address or `localhost`).
    public var host: String
    /// Port to bind; 0 picks a free one (``OperationsEndpoint/start()`` returns it).
    public var port: Int
    /// Bearer tokens accepted on the queue routes and `/status` (and on `/metrics` off
    /// loopback). Off loopback at least one is required.
    public var tokens: [OperationsToken]
    /// Serve `/metrics` without a token off loopback too (on loopback it is always open).
    public var metricsOpen = false
    /// Origins (`scheme://host[:port]`, as a browser sends them) whose requests are served;
    /// any other request with an `Origin` header is refused with 403. No CORS headers are sent.
    public var allowedOrigins: Set<String> = []
    /// Host names accepted in the `Host` header besides IP addresses, the bound host and
    /// `localhost` (a defence against DNS rebinding); `*` accepts any.
    public var allowedHosts: Set<String> = []
    /// A connection that sends no complete request head for this long, or stays idle between
    /// requests for this long, is closed (slowloris and idle connections).
    public var idleTimeout: Duration = .seconds(10)
    /// A request body must arrive whole within this time (408 and close otherwise).
    public var bodyTimeout: Duration = .seconds(30)
    /// Most connections open at once; beyond, new ones wait in the listen backlog.
    public var maxConnections = 512
    /// Most connections open at once from one source address (a quarter of
    /// ``maxConnections`` by default): one client's idle or slow connections cannot take them
    /// all; a connection over it is closed at once.
    public var maxConnectionsPerSource = 128
    /// Most bytes of request headers (answered 400 and closed beyond).
    public var maxHeaderBytes = 16 << 10
    /// Most bytes of a request body (413 beyond).
    public var maxBodyBytes = 4 << 20
    /// How long a push into a full queue waits for room before it is withdrawn and answered
    /// 503 with `Retry-After`.
    public var pushTimeout: Duration = .seconds(30)

    /// How often the dashboard's live stream (`/dashboard/stream`) sends a snapshot; at least
    /// 100 ms (the node samples once a second, so less only helps tests).
    public var dashboardInterval: Duration = .seconds(1)
    /// Pull each member's own `/dashboard.json` (members tell each other their operations
    /// address) so that this dashboard shows their queues, flows and calls as they measure
    /// them; off by default (`p2pq node --dashboard-pull`). Uses the first of ``tokens``.
    public var dashboardPull = false
    /// The token the pull sends (the first of ``tokens`` when nil).
    public var dashboardPullToken: OperationsToken?
    /// How often the pull asks each member.
    public var dashboardPullInterval: Duration = .seconds(2)
    /// Most dashboard streams open at once (`429` beyond).
    public var maxDashboardStreams = 16
    /// A dashboard stream ends after this long; the browser reconnects by itself.
    public var dashboardStreamLifetime: Duration = .seconds(300)

    /// The longest wait a pop may ask for (`timeout` query parameter, milliseconds).
    public static let maxPopTimeoutMilliseconds = 25_000
    /// The most items one pop may ask for.
    public static let maxPopItems = 65_536
    /// The longest lease `POST /queue/<name>/pop?lease=ms` may ask for (12 hours).
    public static let maxLeaseMilliseconds = 12 * 3600 * 1000
    /// The lease under which a plain HTTP pop takes its items until its answer is written (or
    /// found unwritable): it ends only if the endpoint neither acks nor nacks them.
    static let internalLeaseMilliseconds = 60_000

    public init(host: String = "127.0.0.1", port: Int = 0, tokens: [OperationsToken] = []) {
        self.host = host
        self.port = port
        self.tokens = tokens
    }

    /// Parses `host:port` (`[v6]:port` for IPv6).
    public init(address: String, tokens: [OperationsToken] = []) throws(OperationsError) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (0...65_535).contains(port) else {
            throw .invalidConfiguration("operations address '\(address)': expected host:port")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw .invalidConfiguration("operations address '\(address)': no host") }
        self.init(host: host, port: port, tokens: tokens)
    }

    /// Whether the bound host is reachable from this machine only.
    public var isLoopback: Bool { Self.isLoopback(host) }

    static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased()
        return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// Why an ``OperationsEndpoint`` could not start.
public enum OperationsError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A setting is out of range or unusable.
    case invalidConfiguration(String)
    /// Off loopback without a token: anyone who reaches the port could drain the queues.
    case tokenRequired(String)
    /// The address could not be bound.
    case cannotBind(String)
    /// ``OperationsEndpoint/start()`` was called twice, or after ``OperationsEndpoint/stop()``.
    case alreadyStarted

    public var description: String {
        switch self {
        case .invalidConfiguration(let why), .tokenRequired(let why), .cannotBind(let why): return why
        case .alreadyStarted: return "the operations endpoint was already started"
        }
    }
}
