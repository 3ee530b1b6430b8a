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
        abstract: "Run a node until SIGINT or SIGTERM, then leave gracefully and exit 0."
    )

    @Option(help: "Address to listen on (host:port). Off loopback a cluster key is required.")
    var listen: String = "127.0.0.1:0"

    @Option(help: "Address of a node to join (host:port). Repeatable.")
    var bootstrap: [String] = []

    @Option(help: "Cluster key file (see `p2pq keygen`). Without one: loopback only, development key.")
    var keyFile: String?

    @Option(help: "Identity file: loaded, or created (mode 0600) on first start.")
    var identityFile: String?

    @Option(help: "Host that peers should dial back (default: the listen host).")
    var advertise: String?

    @Option(help: "Reactor backend: auto, epoll or io_uring.")
    var backend: String = "auto"

    @Option(help: "Most peers linked at once.")
    var maxPeers: Int = 64

    @Flag(help: "Plaintext, unauthenticated links (loopback benchmarks only).")
    var insecure = false

    @Option(help: "AEAD of the Noise links: chachapoly (default) or aesgcm (faster with AES instructions; every node must use the same).")
    var linkCipher: LinkCipherOption = .chachapoly

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

    @Flag(help: ArgumentHelp("Register the example functions (echo, fib, pi-sim, sleep-then-answer) and execute remote calls.", visibility: .hidden))
    var serveExamples = false

    @Flag(help: ArgumentHelp("Leave and exit when the parent process exits (local clusters of the examples).", visibility: .hidden))
    var exitWithParent = false

    @Option(help: ArgumentHelp("Remote calls run at once with --serve-examples.", visibility: .hidden))
    var maxConcurrentCalls: Int = 4

    @Option(help: ArgumentHelp("Pop this queue in a loop (one consumer), as `p2pq demo` asks its nodes to.", visibility: .hidden))
    var consume: String?

    @Option(help: ArgumentHelp("Milliseconds of pretend work per item popped with --consume.", visibility: .hidden))
    var consumeWorkMs: Int = 0

    @Option(help: "Most items per local queue (queued plus in flight); pushes beyond wait.")
    var maxQueueItems: Int = QueueConfiguration().maxItems

    @Option(help: "Most payload bytes per local queue (queued plus in flight).")
    var maxQueueBytes: Int = 256 << 20

    func validate() throws {
        guard (1...100_000_000).contains(maxQueueItems) else { throw ValidationError("--max-queue-items must be between 1 and 100,000,000") }
        guard (1...(64 << 30)).contains(maxQueueBytes) else { throw ValidationError("--max-queue-bytes must be between 1 and 64 GiB") }
    }

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel.lowercased()) else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        var configuration = NodeConfiguration()
        let address: SocketAddress
        do {
            address = try SocketAddress(listen)
        } catch {
            throw ValidationError("--listen: \(error)")
        }
        configuration.listenHost = address.host
        configuration.listenPort = address.port
        configuration.bootstrap = bootstrap
        configuration.advertisedHost = advertise
        configuration.insecure = insecure
        configuration.linkCipher = linkCipher.cipher
        configuration.maxPeers = maxPeers
        configuration.discovery.enabled = !noDiscovery
        configuration.discovery.port = discoveryPort
        configuration.discovery.interfaceAddress = discoveryInterface
        configuration.discovery.allowNonLoopbackInterface = allowLanDiscovery
        configuration.identityFile = identityFile
        configuration.maxQueueItems = maxQueueItems
        configuration.maxQueueBytes = maxQueueBytes
        configuration.reactor.backend = try parseBackend(backend)
        if let keyFile {
            do {
                configuration.clusterKey = try ClusterKey.load(path: keyFile)
            } catch {
                throw ValidationError("--key-file: \(error)")
            }
        }
        var operations: OperationsConfiguration?
        if let metrics {
            configuration.metrics = .prometheus(PrometheusCollectorRegistry())
            operations = try operationsConfiguration(metrics, clusterKey: configuration.clusterKey)
        } else if tokenFile != nil || metricsOpen || !allowOrigin.isEmpty || !allowHost.isEmpty {
            throw ValidationError("--token-file, --metrics-open, --allow-origin and --allow-host need --metrics")
        }
        var logger = Logger(label: "p2pq")
        logger.logLevel = level
        configuration.logger = logger

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

        guard maxConcurrentCalls > 0 else { throw ValidationError("--max-concurrent-calls must be positive") }
        if exitWithParent {
            // Orphaned example nodes must not linger on a shared machine.
            let parent = getppid()
            Task.detached {
                while getppid() == parent { try? await Task.sleep(for: .milliseconds(250)) }
                requestStop.yield(SIGTERM)
            }
        }
        let node = try Node(configuration: configuration)
        // Checked before the node starts: a refused endpoint must not leave a node running.
        let endpoint: OperationsEndpoint?
        do {
            endpoint = try operations.map { operations throws(OperationsError) in
                try OperationsEndpoint(node: node, configuration: operations, logger: logger)
            }
        } catch {
            throw ValidationError("--metrics: \(error)")
        }
        let info = try await node.start()
        var operationsAddress: String?
        if let endpoint {
            do {
                operationsAddress = try await endpoint.start()
            } catch {
                await node.stop()
                throw ValidationError("--metrics: \(error)")
            }
        }
        if serveExamples {
            let rpc = try await RemoteCall(node: node, maxConcurrentCalls: maxConcurrentCalls)
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
        await node.stop()
        sources.forEach { $0.cancel() }
        logger.info("stopped")
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
                throw ValidationError("--token-file: \(error)")
            }
        }
        if let clusterKey { operations.tokens.append(.derived(from: clusterKey)) }
        if operations.tokens.isEmpty && operations.isLoopback { operations.tokens = [.development] }
        operations.metricsOpen = metricsOpen
        operations.allowedOrigins = Set(allowOrigin)
        operations.allowedHosts = Set(allowHost.map { $0.lowercased() })
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
            throw ValidationError("\(error)")
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
