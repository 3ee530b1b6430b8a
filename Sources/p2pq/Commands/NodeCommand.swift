import ArgumentParser
import Dispatch
import Glibc
import Logging
import P2PQLink
import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQReactor
import Prometheus

/// `p2pq node`: a long-running node until SIGINT or SIGTERM, then a graceful leave.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a node until SIGINT or SIGTERM, then leave gracefully and exit 0.",
        discussion: """
            Prints "listening <address> <peer id>" (and "operations http://<address>" with --metrics) on \
            standard output once running; logs go to standard error. Every flag is checked before \
            the node starts. See `p2pq --help` for the exit statuses.
            """
    )

    @Option(help: "Address to listen on (host:port). Off loopback a cluster key is required.")
    var listen: String = "127.0.0.1:0"

    @Option(help: "Address of a node to join (host:port; the host may be a name, resolved at start and on every redial). Repeatable.")
    var bootstrap: [String] = []

    @Option(help: "Cluster key file (see `p2pq keygen`; must not be readable by group or others). Without one: loopback only, development key.")
    var keyFile: String?

    @Flag(help: "Accept a --key-file that group or others may read (a warning is logged).")
    var allowInsecureKeyPermissions = false

    @Option(help: "Identity file: loaded, or created (mode 0600) on first start.")
    var identityFile: String?

    @Option(help: "Host that peers should dial back (default: the listen host).")
    var advertise: String?

    @Option(help: "Reactor backend: auto, epoll or io_uring.")
    var backend: String = "auto"

    @Option(help: "Microseconds the reactor keeps polling after its last event instead of sleeping (0: off). Lowers one-call latency; costs a core while it polls.")
    var busyPollUs: Int = 0

    @Option(help: "Most peers linked at once.")
    var maxPeers: Int = 64

    @Flag(help: "Plaintext, unauthenticated links (loopback benchmarks only).")
    var insecure = false

    @Option(help: "AEAD of the Noise links: auto (default: aesgcm with peers that also have AES instructions, else chachapoly), or chachapoly or aesgcm only (a peer that cannot run it is refused).")
    var linkCipher: LinkCipherOption = .auto

    @Option(help: "Serve the operations endpoint (/metrics, /status, queue routes) over HTTP on this address (host:port). Off loopback it needs a token (--token-file or --key-file).")
    var metrics: String?

    @Option(help: "Bearer token file of the operations endpoint (`p2pq keygen --token`). The token derived from --key-file is accepted too.")
    var tokenFile: String?

    @Flag(help: "Serve /metrics without a token off loopback too (queue routes and /status still need one).")
    var metricsOpen = false

    @Option(help: "Origin (scheme://host[:port]) whose browser requests the operations endpoint serves. Repeatable; by default browsers are refused.")
    var allowOrigin: [String] = []

    @Option(help: "Host name accepted in the operations endpoint's Host header besides its address and localhost ('*' for any). Repeatable.")
    var allowHost: [String] = []

    @Flag(help: "Let the dashboard pull each member's own /dashboard.json (with the token derived from the cluster key) to show their queues, flows and calls as they measure them.")
    var dashboardPull = false

    @Option(help: "mDNS port for discovery (default 5353; tests use a private one).")
    var discoveryPort: Int = 5353

    @Option(help: "IPv4 address of the interface discovery multicasts on (default: loopback). Another interface also needs --allow-lan-discovery.")
    var discoveryInterface: String = "127.0.0.1"

    @Flag(help: "Allow mDNS discovery on an interface other than loopback.")
    var allowLanDiscovery = false

    @Flag(help: "Do not announce this node or browse for others with mDNS.")
    var noDiscovery = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Flag(help: "Register the example functions (echo, fib, pi-sim, sleep-then-answer) and execute remote calls, for `p2pq fib` and `p2pq pi --join`.")
    var serveExamples = false

    @Flag(help: ArgumentHelp("Leave and exit when the parent process exits (local clusters of the examples).", visibility: .hidden))
    var exitWithParent = false

    @Option(help: "Remote calls run at once with --serve-examples (default: the library's, 16 per core, at least 64).")
    var maxConcurrentCalls: Int?

    @Option(help: ArgumentHelp("Pop this queue in a loop (one consumer), as `p2pq demo` asks its nodes to.", visibility: .hidden))
    var consume: String?

    @Option(help: ArgumentHelp("Milliseconds of pretend work per item popped with --consume.", visibility: .hidden))
    var consumeWorkMs: Int = 0

    @Option(help: "Most items per local queue (queued plus in flight); pushes beyond wait.")
    var maxQueueItems: Int = QueueConfiguration().maxItems

    @Option(help: "Most payload bytes per local queue (queued plus in flight).")
    var maxQueueBytes: Int = 256 << 20

    @Option(help: "replicated (default: a push completes once a peer holds a copy of its items; an owner's death loses nothing unless the copy's holder dies too) or local (a push completes at once; the items the node still queues die with it).")
    var replication: ReplicationOption = .replicated

    @Option(help: "Dead-letter queue: leased items delivered --max-deliveries times without an ack go there (on this node). Needs --max-deliveries.")
    var deadLetterQueue: String?

    @Option(help: "Deliveries of a leased item before it goes to --dead-letter-queue.")
    var maxDeliveries: Int?

    func validate() throws {
        guard (1...100_000_000).contains(maxQueueItems) else { throw ValidationError("--max-queue-items must be between 1 and 100,000,000") }
        guard (1...(64 << 30)).contains(maxQueueBytes) else { throw ValidationError("--max-queue-bytes must be between 1 and 64 GiB") }
        _ = try settings()
    }

    /// Every flag checked and turned into the node's configuration, before anything starts
    /// (files are read later, in `run`).
    func settings() throws(ValidationError) -> (NodeConfiguration, Logger.Level) {
        guard let level = Logger.Level(rawValue: logLevel.lowercased()) else {
            throw ValidationError("unknown --log-level '\(logLevel)': use trace, debug, info, notice, warning, error or critical")
        }
        var configuration = NodeConfiguration()
        configuration.queue.replication = replication.value
        let address: SocketAddress
        do { address = try SocketAddress(listen) } catch { throw ValidationError("--listen: \(error)") }
        configuration.listenHost = address.host
        configuration.listenPort = address.port
        for entry in bootstrap {
            do { _ = try HostAndPort(entry) } catch { throw ValidationError("--bootstrap: \(error)") }
        }
        configuration.bootstrap = bootstrap
        if let advertise {
            do { _ = try SocketAddress(host: advertise, port: 1) } catch { throw ValidationError("--advertise: \(error)") }
        }
        configuration.advertisedHost = advertise
        configuration.insecure = insecure
        if insecure && keyFile != nil { throw ValidationError("--insecure and --key-file exclude each other") }
        configuration.linkCipher = linkCipher.cipher
        guard (1...65_535).contains(maxPeers) else { throw ValidationError("--max-peers must be between 1 and 65,535") }
        configuration.maxPeers = maxPeers
        guard (1...65_535).contains(discoveryPort) else { throw ValidationError("--discovery-port must be between 1 and 65,535") }
        do { _ = try SocketAddress(host: discoveryInterface, port: 1) } catch {
            throw ValidationError("--discovery-interface: \(error)")
        }
        guard !discoveryInterface.contains(":") else { throw ValidationError("--discovery-interface must be an IPv4 address") }
        configuration.discovery.enabled = !noDiscovery
        configuration.discovery.port = discoveryPort
        configuration.discovery.interfaceAddress = discoveryInterface
        configuration.discovery.allowNonLoopbackInterface = allowLanDiscovery
        configuration.identityFile = identityFile
        configuration.maxQueueItems = maxQueueItems
        configuration.maxQueueBytes = maxQueueBytes
        switch (deadLetterQueue, maxDeliveries) {
        case (nil, nil): break
        case (let queue?, let deliveries?):
            guard (1...255).contains(queue.utf8.count) else { throw ValidationError("--dead-letter-queue must have 1 to 255 UTF-8 bytes") }
            guard (1...1_000_000).contains(deliveries) else { throw ValidationError("--max-deliveries must be between 1 and 1,000,000") }
            configuration.queue.deadLetter = DeadLetterPolicy(maxDeliveries: deliveries, queue: queue)
        default:
            throw ValidationError("--dead-letter-queue and --max-deliveries go together")
        }
        guard (0...1_000_000).contains(busyPollUs) else { throw ValidationError("--busy-poll-us must be 0...1000000") }
        configuration.reactor.busyPoll = .microseconds(busyPollUs)
        do { configuration.reactor.backend = try parseBackend(backend) } catch let error as ValidationError { throw error } catch {
            throw ValidationError("--backend: \(error)")
        }
        if let metrics {
            // A bare port (9100) or no host (:9100) is refused here, not after the node started.
            do { _ = try SocketAddress(metrics) } catch { throw ValidationError("--metrics: \(error)") }
            do { _ = try OperationsConfiguration(address: metrics) } catch { throw ValidationError("--metrics: \(error)") }
            configuration.metrics = .prometheus(PrometheusCollectorRegistry())
        } else if tokenFile != nil || metricsOpen || !allowOrigin.isEmpty || !allowHost.isEmpty || dashboardPull {
            throw ValidationError("--token-file, --metrics-open, --allow-origin, --allow-host and --dashboard-pull need --metrics")
        }
        if let maxConcurrentCalls, maxConcurrentCalls < 1 { throw ValidationError("--max-concurrent-calls must be positive") }
        guard consumeWorkMs >= 0 else { throw ValidationError("--consume-work-ms must not be negative") }
        return (configuration, level)
    }

    func run() async throws {
        var (configuration, level) = try settings()
        var logger = Logger(label: "p2pq")
        logger.logLevel = level
        configuration.logger = logger
        if let keyFile {
            configuration.clusterKey = try loadClusterKey(keyFile, allowInsecurePermissions: allowInsecureKeyPermissions,
                                                          logger: logger)
        }
        let operations = try metrics.map { try operationsConfiguration($0, clusterKey: configuration.clusterKey) }

        // Signals are taken by a dispatch source, not the default handler, so the node can
        // say goodbye before the process exits.
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let (stopRequests, requestStop) = AsyncStream.makeStream(of: Int32.self)
        let sources = [SIGINT, SIGTERM].map { signo in
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { requestStop.yield(signo) }
            source.resume()
            return source
        }

        if exitWithParent {
            // Orphaned example nodes must not linger on a shared machine.
            let parent = getppid()
            Task.detached {
                while getppid() == parent { try? await Task.sleep(for: .milliseconds(250)) }
                requestStop.yield(SIGTERM)
            }
        }
        let node: Node
        let info: NodeInfo
        let endpoint: OperationsEndpoint?
        do {
            node = try Node(configuration: configuration)
        } catch {
            throw CLIError(.cannotStart, "the node could not start: \(error)")
        }
        // Checked before the node starts: a refused endpoint must not leave a node running.
        do {
            endpoint = try operations.map { operations throws(OperationsError) in
                try OperationsEndpoint(node: node, configuration: operations, logger: logger)
            }
        } catch {
            throw ValidationError("--metrics: \(error)")
        }
        do {
            info = try await node.start()
        } catch {
            throw CLIError(.cannotStart, "the node could not start: \(error)")
        }
        var operationsAddress: String?
        if let endpoint {
            do {
                operationsAddress = try await endpoint.start()
            } catch {
                await node.stop()
                throw CLIError(.cannotStart, "the operations endpoint could not start: \(error)")
            }
        }
        if serveExamples {
            let rpc = try await RemoteCall(node: node, maxConcurrentCalls: maxConcurrentCalls ?? RemoteCall.defaultMaxConcurrentCalls())
            ExampleFunctions.register(on: rpc)
            try await rpc.process()
        }
        if let consume {
            let queue = node.queue(named: consume)
            let work = consumeWorkMs
            // One consumer: pops one item at a time so the balancer sees this node's real rate.
            Task {
                while true {
                    guard (try? await queue.pop()) != nil else { return }  // the node stopped
                    if work > 0 { try? await Task.sleep(for: .milliseconds(work)) }
                }
            }
        }
        // One machine-readable line for scripts and tests, then logs on stderr.
        print("listening \(info.listenAddress) \(info.peerID)")
        if let operationsAddress { print("operations http://\(operationsAddress)") }
        fflush(nil)
        for await signo in stopRequests {
            logger.info("signal \(signo): leaving")
            break
        }
        await endpoint?.stop()
        // Hands the queues' items and confirmations to live peers first (see Node.stop).
        let report = await node.stop()
        sources.forEach { $0.cancel() }
        logger.info("stopped: \(report)")
    }
}

extension NodeCommand {
    /// The endpoint's settings. Accepted tokens: the token file's, and the one derived from the
    /// cluster key; a node without either (development mode) accepts the public development
    /// token, on loopback only.
    func operationsConfiguration(_ address: String, clusterKey: ClusterKey?) throws -> OperationsConfiguration {
        var operations: OperationsConfiguration
        do {
            operations = try OperationsConfiguration(address: address)
        } catch {
            throw ValidationError("--metrics: \(error)")
        }
        if let tokenFile {
            do {
                operations.tokens.append(try OperationsToken.load(path: tokenFile))
            } catch {
                throw CLIError(.keyRefused, "--token-file: \(error)")
            }
        }
        if let clusterKey { operations.tokens.append(.derived(from: clusterKey)) }
        if operations.tokens.isEmpty && operations.isLoopback { operations.tokens = [.development] }
        operations.metricsOpen = metricsOpen
        operations.allowedOrigins = Set(allowOrigin)
        operations.allowedHosts = Set(allowHost.map { $0.lowercased() })
        operations.dashboardPull = dashboardPull
        // The members' endpoints take the token derived from the shared cluster key.
        operations.dashboardPullToken = clusterKey.map { .derived(from: $0) } ?? .development
        return operations
    }
}

/// `p2pq keygen`: writes a new cluster key file, or an operations token file, readable by its
/// owner only.
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a new cluster key file, or with --token an operations token file (mode 0600). Refuses to overwrite."
    )

    @Argument(help: "Path of the key file to create.")
    var path: String?

    @Option(help: "Write a bearer token file for the operations endpoint here instead (see `p2pq node --token-file`).")
    var token: String?

    func validate() throws {
        guard (path == nil) != (token == nil) else { throw ValidationError("give either a key file path or --token FILE") }
    }

    func run() throws {
        if let token {
            do {
                try OperationsToken.generate().save(path: token)
            } catch {
                throw ValidationError("\(error)")
            }
            print("wrote \(token)")
            return
        }
        guard let path else { return }
        let key = ClusterKey.generate()
        do {
            try key.save(path: path)
        } catch {
            throw CLIError(.failed, "keygen: \(error)")
        }
        print("wrote \(path) (cluster id \(key.clusterID))")
    }
}

func parseBackend(_ text: String) throws -> ReactorBackendChoice {
    switch text.lowercased() {
    case "auto": return .automatic
    case "epoll": return .exactly(.epoll)
    case "io_uring", "iouring", "uring": return .exactly(.ioUring)
    default: throw ValidationError("unknown backend '\(text)': use auto, epoll or io_uring")
    }
}

/// Loads a cluster key file, refusing one that group or others may read or write unless the
/// operator allowed it: anyone who can read the key can join the cluster.
func loadClusterKey(_ path: String, allowInsecurePermissions: Bool, logger: Logger?) throws(CLIError) -> ClusterKey {
    var info = stat()
    guard stat(path, &info) == 0 else {
        throw CLIError(.keyRefused, "--key-file \(path): \(String(cString: strerror(errno)))")
    }
    let loose = info.st_mode & 0o077
    if loose != 0 {
        let mode = String(info.st_mode & 0o777, radix: 8)
        guard allowInsecurePermissions else {
            throw CLIError(.keyRefused, "--key-file \(path) has mode \(mode): group or others may read it; "
                + "run `chmod 600 \(path)`, or pass --allow-insecure-key-permissions")
        }
        logger?.warning("key file \(path) has mode \(mode): group or others may read it (allowed by --allow-insecure-key-permissions)")
    }
    do {
        return try ClusterKey.load(path: path)
    } catch {
        throw CLIError(.keyRefused, "--key-file: \(error)")
    }
}

/// `--replication` of `p2pq node` and `p2pq bench stream`.
enum ReplicationOption: String, ExpressibleByArgument, CaseIterable {
    case replicated, local

    var value: Replication { self == .replicated ? .replicated : .local }
}
