import ArgumentParser
import Dispatch
import Glibc
import Logging
import P2PQLink
import P2PQNode
import P2PQOperations
import P2PQQueue
import P2PQReactor
import P2PQWire
import P2PQWorkloads
import Prometheus

/// `p2pq workload`: one node plus a producer, a consumer and/or a caller, logging every
/// operation as a JSON line for `p2pq check` (the fault-injection suite runs one per node).
struct WorkloadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workload",
        abstract: "Run a node with a producer, consumer and/or remote caller, writing one JSON line per operation (for `p2pq check`).",
        discussion: """
            Each item's payload carries its id (<name>:<counter>). The log gets a line when a push \
            returned (ids acknowledged), when a pop returned (before the item is processed), when a \
            call was made and when it returned. SIGTERM/SIGINT stop the workload, leave gracefully \
            and exit 0; --run-for bounds the process in any case.
            """
    )

    @Option(help: "This workload's name: the producer part of item ids and the log's node field.")
    var name: String

    @Option(help: "Operation log (JSON lines, appended; each line written with one write(2)).")
    var log: String

    @Option(help: "Address to listen on (host:port).")
    var listen: String = "127.0.0.1:0"

    @Option(help: "Address of a node to join (host:port). Repeatable.")
    var bootstrap: [String] = []

    @Option(help: "Cluster key file. Without one: loopback only, development key.")
    var keyFile: String?

    @Option(help: "Identity file: loaded, or created (mode 0600) on first start. The same file across restarts keeps the node's peer ID, as an operator's restarted node does.")
    var identityFile: String?

    @Option(help: "Host that peers should dial back (default: the listen host).")
    var advertise: String?

    @Option(help: "Serve /metrics, /status and the queue routes on this address (host:port).")
    var metrics: String?

    @Option(help: "Log level of the node: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "The queue the workload uses.")
    var queue: String = "faults"

    @Option(help: "Most items per local queue (queued plus in flight); pushes beyond wait.")
    var maxQueueItems: Int = QueueConfiguration().maxItems

    @Option(help: "Most payload bytes per local queue (queued plus in flight).")
    var maxQueueBytes: Int = 256 << 20

    @Option(help: "Items pushed per second (0: no producer).")
    var produceRate: Int = 0

    @Option(help: "Items per push.")
    var produceBatch: Int = 50

    @Option(help: "Seconds the producer runs (it stops earlier after --produce-count items).")
    var produceFor: Double = 30

    @Option(help: "Most items the producer pushes (0: no limit).")
    var produceCount: Int = 0

    @Option(help: "Payload bytes per item (at least the id's length).")
    var payload: Int = 64

    @Flag(help: "Pop the queue in a loop.")
    var consume = false

    @Option(help: "Most items per pop.")
    var consumeBatch: Int = 16

    @Option(help: "Milliseconds of pretend work after each pop (a slow consumer).")
    var consumeWorkMs: Int = 1

    @Option(help: "Seconds before the consumer's first pop (items stay with their owner until then).")
    var consumeAfter: Double = 0

    @Flag(help: "Register the example functions and execute remote calls.")
    var serve = false

    @Option(help: "Remote calls made per second (0: no caller); each is sleep-then-answer(--call-work-ms).")
    var callRate: Int = 0

    @Option(help: "Milliseconds each remote call sleeps on its executor.")
    var callWorkMs: Int = 20

    @Option(help: "Seconds the caller runs.")
    var callFor: Double = 30

    @Option(help: "Seconds after which the process leaves and exits in any case.")
    var runFor: Double = 600

    func validate() throws {
        guard !name.isEmpty, !name.contains(":"), !name.contains("|"), name.utf8.count <= 64 else {
            throw ValidationError("--name must be 1...64 bytes without ':' or '|'")
        }
        guard (0...1_000_000).contains(produceRate), (0...100_000).contains(callRate) else {
            throw ValidationError("--produce-rate must be 0...1,000,000 and --call-rate 0...100,000")
        }
        guard (1...65_536).contains(produceBatch), (1...65_536).contains(consumeBatch) else {
            throw ValidationError("--produce-batch and --consume-batch must be 1...65,536")
        }
        guard (0...(1 << 20)).contains(payload) else { throw ValidationError("--payload must be 0...1 MiB") }
        guard runFor > 0, runFor <= 86_400, produceFor >= 0, callFor >= 0 else {
            throw ValidationError("--run-for must be 0...86,400 s, --produce-for and --call-for not negative")
        }
        guard consumeWorkMs >= 0, consumeAfter >= 0, callWorkMs >= 0, produceCount >= 0 else { throw ValidationError("negative count or time") }
        guard (1...100_000_000).contains(maxQueueItems), (1...(64 << 30)).contains(maxQueueBytes) else {
            throw ValidationError("--max-queue-items must be 1...100,000,000 and --max-queue-bytes 1...64 GiB")
        }
    }

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel.lowercased()) else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        let opLog: OperationLog
        do {
            opLog = try OperationLog(path: log, node: name)
        } catch {
            throw ValidationError("--log: \(error)")
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
        configuration.identityFile = identityFile
        // The suite's nodes find each other by bootstrap address only: mDNS would cross the
        // namespaces' isolation through nothing, but would make runs depend on the host.
        configuration.discovery.enabled = false
        configuration.maxQueueItems = maxQueueItems
        configuration.maxQueueBytes = maxQueueBytes
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
            do {
                var settings = try OperationsConfiguration(address: metrics)
                // The harness's status polls send the token derived from the cluster key.
                settings.tokens = configuration.clusterKey.map { [.derived(from: $0)] } ?? [.development]
                operations = settings
            } catch {
                throw ValidationError("--metrics: \(error)")
            }
        }
        var logger = Logger(label: "p2pq-workload")
        logger.logLevel = level
        configuration.logger = logger

        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let (stopRequests, requestStop) = AsyncStream.makeStream(of: String.self)
        let sources = [SIGINT, SIGTERM].map { signo in
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { requestStop.yield("signal \(signo)") }
            source.resume()
            return source
        }
        let limit = runFor
        Task.detached {
            try? await Task.sleep(for: .seconds(limit))
            requestStop.yield("--run-for elapsed")
        }

        let node = try Node(configuration: configuration)
        let endpoint = try operations.map { try OperationsEndpoint(node: node, configuration: $0, logger: logger) }
        let info = try await node.start()
        let operationsAddress = try await endpoint?.start()
        opLog.write(["op": .string("start"), "listen": .string("\(info.listenAddress)"), "peer": .string("\(info.peerID)")])
        print("listening \(info.listenAddress) \(info.peerID)")
        if let operationsAddress { print("operations http://\(operationsAddress)") }
        fflush(nil)

        var rpc: RemoteCall?
        if serve || callRate > 0 {
            let calls = try await RemoteCall(node: node, maxConcurrentCalls: 64)
            ExampleFunctions.register(on: calls)
            if serve { try await calls.process() }
            rpc = calls
        }

        var tasks: [Task<Void, Never>] = []
        let handle = node.queue(named: queue)
        if produceRate > 0 {
            tasks.append(Task { await produce(handle, opLog) })
        }
        if consume {
            tasks.append(Task { await consumeLoop(handle, opLog) })
        }
        if callRate > 0, let rpc {
            tasks.append(Task { await callLoop(rpc, opLog) })
        }

        var reason = "stream ended"
        for await why in stopRequests {
            reason = why
            break
        }
        opLog.write(["op": .string("stopping"), "reason": .string(reason)])
        tasks.forEach { $0.cancel() }
        await endpoint?.stop()
        // A cancelled task's waiting push or pop is withdrawn; the stop then drains the queue.
        let report = await node.stop()
        opLog.write(["op": .string("stop-report"), "report": .string("\(report)")])
        for task in tasks { await task.value }
        sources.forEach { $0.cancel() }
        opLog.write(["op": .string("stopped")])
    }

    /// Pushes `produceRate` items a second in batches of `produceBatch` until `produceFor`
    /// seconds or `produceCount` items; logs each batch once its push returned.
    private func produce(_ handle: QueueHandle, _ opLog: OperationLog) async {
        let start = ContinuousClock.now
        let end = start + .seconds(produceFor)
        var next = 0
        let interval = Duration.seconds(Double(produceBatch) / Double(produceRate))
        var due = start
        while !Task.isCancelled, ContinuousClock.now < end, produceCount == 0 || next < produceCount {
            let count = produceCount == 0 ? produceBatch : min(produceBatch, produceCount - next)
            let items = (next..<next + count).map { FaultItem.payload(producer: name, counter: $0, size: payload) }
            opLog.write(["op": .string("push-start"), "p": .string(name), "from": .int(next), "n": .int(count)])
            do throws(QueueError) {
                try await handle.push(contentsOf: items)
            } catch {
                opLog.write(["op": .string("push-error"), "p": .string(name), "from": .int(next), "n": .int(count),
                             "error": .string("\(error)")])
                if error == .nodeStopped || error == .closed || Task.isCancelled { break }
                continue
            }
            opLog.write(["op": .string("push"), "p": .string(name), "from": .int(next), "n": .int(count)])
            next += count
            due += interval
            let now = ContinuousClock.now
            if due > now {
                try? await Task.sleep(until: due)
            } else if now - due > .seconds(1) {
                // Backpressure held the producer back: do not burst to catch up.
                due = now
            }
        }
        opLog.write(["op": .string("produced"), "p": .string(name), "n": .int(next)])
    }

    /// Pops in a loop; each pop is logged before its pretend work.
    private func consumeLoop(_ handle: QueueHandle, _ opLog: OperationLog) async {
        if consumeAfter > 0 { try? await Task.sleep(for: .seconds(consumeAfter)) }
        while !Task.isCancelled {
            let items: [[UInt8]]
            do throws(QueueError) {
                items = try await handle.pop(max: consumeBatch, timeout: .milliseconds(500))
            } catch .timeout {
                continue
            } catch {
                if error != .cancelled { opLog.write(["op": .string("pop-error"), "error": .string("\(error)")]) }
                return
            }
            let ids = items.map { FaultItem.id(of: $0) ?? "?" }
            opLog.write(["op": .string("pop"), "ids": .strings(ids)])
            if consumeWorkMs > 0 { try? await Task.sleep(for: .milliseconds(consumeWorkMs)) }
        }
    }

    /// Makes `callRate` calls a second, each in its own task, logging the call and its return.
    private func callLoop(_ rpc: RemoteCall, _ opLog: OperationLog) async {
        let function = rpc.function("sleep-then-answer", arguments: Int.self, result: Int.self)
        let end = ContinuousClock.now + .seconds(callFor)
        let interval = Duration.seconds(1.0 / Double(callRate))
        let work = callWorkMs
        let name = self.name
        await withTaskGroup(of: Void.self) { group in
            var counter = 0
            while !Task.isCancelled, ContinuousClock.now < end {
                let id = "\(name):c\(counter)"
                counter += 1
                opLog.write(["op": .string("call"), "id": .string(id)])
                group.addTask {
                    do {
                        let answer = try await function(work)
                        opLog.write(["op": .string("return"), "id": .string(id), "ok": .bool(answer == work + 1)])
                    } catch {
                        opLog.write(["op": .string("call-error"), "id": .string(id), "error": .string("\(error)")])
                    }
                }
                try? await Task.sleep(for: interval)
            }
            opLog.write(["op": .string("called"), "n": .int(counter)])
            await group.waitForAll()
        }
    }
}
