import Foundation
import Glibc
import Logging
import P2PQLink
@testable import P2PQNode
import P2PQOperations
import P2PQWire
import Testing

@Suite("Dashboard history: rates from totals, bounded rings (sans-I/O)")
struct DashboardHistoryTests {
    let a = PeerID(bytes: [UInt8](repeating: 1, count: 32))!
    let b = PeerID(bytes: [UInt8](repeating: 2, count: 32))!

    func input(_ second: Int, queues: [String: DashboardInput.Queue]) -> DashboardInput {
        DashboardInput(now: UInt64(second) * 1_000_000_000, wall: 1_000_000 + Double(second), queues: queues,
                       callsMade: second * 6, callsExecuted: second * 3, callsInFlight: 2)
    }

    func queue(_ second: Int, requeued: Int = 0) -> DashboardInput.Queue {
        DashboardInput.Queue(length: 100 - second, popped: second * 10, requeued: requeued, duplicates: 0,
                             peers: [(b, 40, 5, 8)], transferredOut: [b: second * 4], transferredIn: [:])
    }

    @Test("Rates are the totals' growth per second; every series keeps the last N samples; finish time is length over rate")
    func ratesAndRing() {
        var history = DashboardHistory(local: a, start: 0, capacity: 5)
        for second in 0..<8 { history.sample(input(second, queues: ["jobs": queue(second)])) }
        let snapshot = history.snapshot(members: [], interval: 1)
        #expect(snapshot.times == (3..<8).map { 1_000_000 + Double($0) })
        let local = try! #require(snapshot.queues.first { $0.peerID == a.description && $0.queue == "jobs" })
        #expect(local.lengths == [97, 96, 95, 94, 93])
        #expect(local.popsPerSecond == 10)
        #expect(local.finishSeconds == 9.3)
        let peer = try! #require(snapshot.queues.first { $0.peerID == b.description })
        #expect(peer.length == 40 && peer.popsPerSecond == 5 && peer.finishSeconds == 8)
        #expect(snapshot.flows.count == 1)
        #expect(snapshot.flows.first?.from == a.description && snapshot.flows.first?.to == b.description)
        #expect(snapshot.flows.first?.itemsPerSecond == 4)
        #expect(snapshot.flows.first?.series.count == 5)
        #expect(snapshot.calls.first?.executedPerSecond == 3 && snapshot.calls.first?.madePerSecond == 6)
        #expect(snapshot.calls.first?.inFlight == 2)
    }

    @Test("Re-queued items become an event; events, queues per node and samples are bounded")
    func bounded() {
        var history = DashboardHistory(local: a, start: 0, capacity: 3)
        history.sample(input(0, queues: ["jobs": queue(0)]))
        history.sample(input(1, queues: ["jobs": queue(1, requeued: 7)]))
        #expect(history.snapshot(members: [], interval: 1).events.map(\.kind) == ["requeued"])
        for i in 0..<(DashboardHistory.eventCapacity + 50) { history.note("dead", peer: b, "event \(i)", wall: Double(i)) }
        let events = history.snapshot(members: [], interval: 1).events
        #expect(events.count == DashboardHistory.eventCapacity)
        #expect(events.last?.detail == "event \(DashboardHistory.eventCapacity + 49)")
        var many: [String: DashboardInput.Queue] = [:]
        for i in 0..<(DashboardHistory.maxQueues + 10) { many["q\(i)"] = queue(2) }
        for second in 2..<10 { history.sample(input(second, queues: many)) }
        let snapshot = history.snapshot(members: [], interval: 1)
        #expect(Set(snapshot.queues.map(\.queue)).count == DashboardHistory.maxQueues)
        #expect(snapshot.times.count == 3)
        #expect(snapshot.queues.allSatisfy { $0.lengths.count == 3 && $0.pops.count == 3 })
    }
}

@Suite("Dashboard of a live cluster: the JSON endpoint, a death, the page in headless Chromium", .serialized)
struct DashboardClusterTests {
    /// Three in-process nodes bootstrapped to the first, the first with an operations endpoint.
    /// `streamLifetime`: headless Chromium's virtual time stands still while a request is open,
    /// so its test ends streams early (the page reconnects, and the budget runs out).
    func cluster(key: ClusterKey, streamLifetime: Duration = .seconds(300)) async throws
        -> (nodes: [Node], endpoint: OperationsEndpoint, port: Int, bootstrap: String) {
        let first = try Node(configuration: testConfiguration(key: key))
        let info = try await first.start()
        var nodes = [first]
        for _ in 0..<2 {
            let node = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
            try await node.start()
            nodes.append(node)
        }
        var configuration = OperationsConfiguration(tokens: [.derived(from: key)])
        configuration.dashboardInterval = .milliseconds(500)
        configuration.dashboardStreamLifetime = streamLifetime
        var logger = Logger(label: "p2pq.test.operations")
        logger.logLevel = .critical
        let endpoint = try OperationsEndpoint(node: first, configuration: configuration, logger: logger)
        let address = try await endpoint.start()
        return (nodes, endpoint, Int(address.split(separator: ":").last!)!, "\(info.listenAddress)")
    }

    /// Runs `body` with a cluster, and stops the endpoint and the nodes afterwards, also when
    /// `body` throws (a node left running past its test would outlive what its timers use).
    func withCluster(key: ClusterKey, streamLifetime: Duration = .seconds(300),
                     _ body: ([Node], Int, String) async throws -> Void) async throws {
        let (nodes, endpoint, port, bootstrap) = try await cluster(key: key, streamLifetime: streamLifetime)
        do {
            try await body(nodes, port, bootstrap)
        } catch {
            await endpoint.stop()
            for node in nodes { await node.stop() }
            throw error
        }
        await endpoint.stop()
        for node in nodes { await node.stop() }
    }

    /// Items pushed at the first node, popped slowly on the other two: the queue drains over
    /// seconds and items flow from the first to the others.
    func startWork(_ nodes: [Node], items: Int) async throws -> Task<Void, Never> {
        let jobs = nodes[0].queue(named: "jobs")
        try await jobs.push(contentsOf: (0..<items).map { withUnsafeBytes(of: UInt32($0), Array.init) })
        let consumers = Array(nodes.dropFirst())
        return Task {
            await withTaskGroup(of: Void.self) { group in
                for node in consumers {
                    group.addTask {
                        let queue = node.queue(named: "jobs")
                        while !Task.isCancelled {
                            _ = try? await queue.pop(max: 5, timeout: .milliseconds(200))
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
        }
    }

    func snapshot(_ port: Int, _ key: ClusterKey) async throws -> DashboardSnapshot {
        let (status, data) = try await httpGet(port, "/dashboard.json", token: .derived(from: key))
        guard status == 200 else { throw TimedOut(description: "/dashboard.json answered \(status)") }
        return try JSONDecoder().decode(DashboardSnapshot.self, from: data)
    }

    @Test("/dashboard.json: members with incarnations and links, queue lengths per node, flows, then a SIGKILLed member as dead with its event")
    func jsonOfClusterAndDeath() async throws {
        let (key, path) = try ChildProcessTests().keyFile()
        defer { unlink(path) }
        try await withCluster(key: key) { nodes, port, bootstrap in
        let child = try await ChildNode(arguments: ["--bootstrap", bootstrap, "--key-file", path])
        let work = try await startWork(nodes, items: 3000)
        defer { work.cancel() }
        let ids = Set(nodes.map(\.peerID.description) + [child.peerID.description])
        var last: DashboardSnapshot?
        try await eventually("the dashboard shows four members alive, the queue per node and a flow", timeout: .seconds(20),
                             diagnose: { "\(String(describing: last))" }) {
            guard let snapshot = try? await snapshot(port, key) else { return false }
            last = snapshot
            let members = Set(snapshot.members.filter { $0.state == "alive" || $0.state == "self" }.map(\.peerID))
            let linked = snapshot.members.filter { $0.state == "alive" }.allSatisfy { $0.link == "connected" && $0.incarnation != nil }
            // The consumers' lengths come from their load reports; the first node's own line
            // is there too (its items left at once).
            let queued = snapshot.queues.contains { $0.queue == "jobs" && $0.peerID != nodes[0].peerID.description && ($0.length ?? 0) > 0 }
            let own = snapshot.queues.contains { $0.queue == "jobs" && $0.peerID == nodes[0].peerID.description }
            let flowing = snapshot.flows.contains { $0.from == nodes[0].peerID.description && $0.series.contains { ($0 ?? 0) > 0 } }
            return members == ids && linked && queued && own && flowing
        }
        let first = try #require(last)
        #expect(first.members.first?.peerID == nodes[0].peerID.description && first.members.first?.state == "self")
        #expect(first.times.count == first.queues.first!.lengths.count)

        kill(child.process.processIdentifier, SIGKILL)
        try await eventually("the dashboard lists the killed member as dead, with a death event", timeout: .seconds(10),
                             diagnose: { "\(String(describing: last))" }) {
            guard let snapshot = try? await snapshot(port, key) else { return false }
            last = snapshot
            return snapshot.members.first { $0.peerID == child.peerID.description }?.state == "dead"
                && snapshot.events.contains { $0.kind == "dead" && $0.peerID == child.peerID.description }
        }
        work.cancel()
        }
    }

    /// Chromium, if installed: `P2PQ_CHROMIUM`, else the Debian package's names.
    static var chromium: String? {
        let candidates = [ProcessInfo.processInfo.environment["P2PQ_CHROMIUM"], "/usr/bin/chromium", "/usr/bin/chromium-browser",
                          "/usr/bin/google-chrome"].compactMap { $0 }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs Chromium headless on `url` with `arguments`; its standard output.
    func runChromium(_ binary: String, _ arguments: [String], url: String, profile: String) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                             "--user-data-dir=\(profile)", "--window-size=1400,1000", "--virtual-time-budget=4000"] + arguments + [url]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        let fd = output.fileHandleForReading
        let pid = process.processIdentifier
        // Bounded: a Chromium that hangs is killed after 60 s.
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(60))
            kill(pid, SIGKILL)
        }
        defer { watchdog.cancel() }
        let data = try await offPool { fd.readDataToEndOfFile() }
        _ = try await offPool {
            process.waitUntilExit()
            return process.terminationStatus
        }
        return String(decoding: data, as: UTF8.self)
    }

    @Test("The page in headless Chromium shows the members, a queue's length and a flow between two nodes; a screenshot is saved")
    func pageInChromium() async throws {
        guard let chromium = Self.chromium else {
            let message = "DASHBOARD BROWSER TEST SKIPPED: Chromium is not installed (apt-get install chromium, or set P2PQ_CHROMIUM)"
            FileHandle.standardError.write(Data("\n*** \(message) ***\n\n".utf8))
            if ProcessInfo.processInfo.environment["P2PQ_REQUIRE_CHROMIUM"] == "1" { Issue.record("P2PQ_REQUIRE_CHROMIUM=1 but \(message)") }
            return
        }
        let key = ClusterKey.generate()
        try await withCluster(key: key, streamLifetime: .milliseconds(1500)) { nodes, port, _ in
        let work = try await startWork(nodes, items: 3000)
        defer { work.cancel() }
        let ids = nodes.map(\.peerID.description)
        try await eventually("three members, the queue and a flow in /dashboard.json", timeout: .seconds(20)) {
            guard let snapshot = try? await snapshot(port, key) else { return false }
            return Set(snapshot.members.map(\.peerID)) == Set(ids) && snapshot.queues.contains { $0.queue == "jobs" && ($0.length ?? 0) > 0 }
                && snapshot.flows.contains { $0.itemsPerSecond > 0 }
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-dashboard-\(getpid())-\(port)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = "http://127.0.0.1:\(port)/?token=\(OperationsToken.derived(from: key).text)"
        let dom = try await runChromium(chromium, ["--dump-dom"], url: url, profile: directory.appendingPathComponent("profile").path)
        #expect(dom.contains("data-live=\"1\""), "the page did not render live data:\n\(dom.prefix(2000))")
        for id in ids { #expect(dom.contains("data-peer=\"\(id)\""), "member \(id.prefix(8)) missing from the page") }
        #expect(dom.contains("data-queue=\"jobs\""), "the queue is missing from the page")
        #expect(dom.range(of: #"data-length="[1-9][0-9]*""#, options: .regularExpression) != nil, "no queue length in the page")
        #expect(dom.range(of: #"data-flow="[0-9a-f]{64}(&gt;|>)[0-9a-f]{64}"[^>]*>[^<]*[1-9]"#, options: .regularExpression) != nil,
                "no flow between two nodes in the page")
        let screenshot = directory.appendingPathComponent("dashboard.png")
        _ = try await runChromium(chromium, ["--screenshot=\(screenshot.path)"], url: url, profile: directory.appendingPathComponent("profile2").path)
        #expect(FileManager.default.fileExists(atPath: screenshot.path))
        // The screenshot stays (a test artifact); Chromium's profiles go.
        for profile in ["profile", "profile2"] { try? FileManager.default.removeItem(at: directory.appendingPathComponent(profile)) }
        print("dashboard screenshot: \(screenshot.path)")
        work.cancel()
        }
    }
}

@Suite("Operations addresses travel to peers; the dashboard pulls members' own dashboards", .serialized)
struct DashboardPullTests {
    @Test("Each endpoint's address reaches its peers (hello bit 2, message 0x06); with dashboardPull the first node's JSON holds the others' own lines and calls")
    func addressesAndPull() async throws {
        let key = ClusterKey.generate()
        let token = OperationsToken.derived(from: key)
        var nodes: [Node] = []
        var endpoints: [OperationsEndpoint] = []
        var ports: [Int] = []
        func stopAll() async {
            for endpoint in endpoints { await endpoint.stop() }
            for node in nodes { await node.stop() }
        }
        do {
            // The first listens; the others join it.
            nodes.append(try Node(configuration: testConfiguration(key: key)))
            let info = try await nodes[0].start()
            for _ in 1..<3 {
                let node = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
                nodes.append(node)
                try await node.start()
            }
            for (i, node) in nodes.enumerated() {
                var configuration = OperationsConfiguration(tokens: [token])
                configuration.dashboardPull = i == 0
                configuration.dashboardPullInterval = .milliseconds(500)
                var logger = Logger(label: "p2pq.test.operations")
                logger.logLevel = .critical
                let endpoint = try OperationsEndpoint(node: node, configuration: configuration, logger: logger)
                ports.append(Int(try await endpoint.start().split(separator: ":").last!)!)
                endpoints.append(endpoint)
            }
            let expected = Dictionary(uniqueKeysWithValues: zip(nodes.map(\.peerID.description), ports.map { "127.0.0.1:\($0)" }))
            try await eventually("every node knows every member's operations address") {
                for node in nodes {
                    guard let snapshot = await node.dashboard() else { return false }
                    let known = Dictionary(snapshot.members.compactMap { m in m.operations.map { (m.peerID, $0) } }) { a, _ in a }
                    if known != expected { return false }
                }
                return true
            }
            let others = Set(nodes.dropFirst().map(\.peerID.description))
            var last: DashboardSnapshot?
            try await eventually("the first node's dashboard holds what it pulled", diagnose: { "\(String(describing: last))" }) {
                guard let (status, data) = try? await httpGet(ports[0], "/dashboard.json", token: token), status == 200,
                      let snapshot = try? JSONDecoder().decode(DashboardSnapshot.self, from: data) else { return false }
                last = snapshot
                return Set(snapshot.pulled ?? []) == others && Set(snapshot.calls.map(\.peerID)) == others.union([nodes[0].peerID.description])
                    && snapshot.calls.allSatisfy { $0.executed.count == snapshot.times.count }
            }
            // Without pulling, only the node's own calls.
            let (_, data) = try await httpGet(ports[1], "/dashboard.json", token: token)
            let plain = try JSONDecoder().decode(DashboardSnapshot.self, from: data)
            #expect(plain.pulled == nil && plain.calls.map(\.peerID) == [nodes[1].peerID.description])
        } catch {
            await stopAll()
            throw error
        }
        await stopAll()
    }
}

@Suite("Call latencies: a power-of-two histogram per function")
struct CallLatencyTests {
    func task(_ id: UInt64, _ function: String) -> CallTask {
        CallTask(id: TaskID(id), call: CallID(caller: PeerID(bytes: [UInt8](repeating: 3, count: 32))!, sequence: id), function: function, arguments: [])
    }

    @Test("Percentiles are the upper bounds of the buckets the calls fall in; unknown tasks and functions past the limit are not counted")
    func histogram() {
        var latencies = CallLatencies()
        latencies.started([task(1, "a"), task(2, "a"), task(3, "a"), task(4, "b")], now: 0)
        latencies.ended([(TaskID(1), .success([])), (TaskID(99), .success([]))], now: 1_500_000)
        latencies.ended([(TaskID(2), .success([]))], now: 3_000_000)
        latencies.ended([(TaskID(3), .success([]))], now: 100_000_000)
        let summary = latencies.summary()
        #expect(summary.count == 1, "b has no ended call yet")
        #expect(summary.first?.function == "a" && summary.first?.count == 3)
        #expect(summary.first?.p50 == 4.096 && summary.first?.p90 == 131.072 && summary.first?.p99 == 131.072)
        #expect(latencies.runningCount == 1)
        for i in 0..<(CallLatencies.maxFunctions + 10) { latencies.started([task(UInt64(10 + i), "f\(i)")], now: 0) }
        #expect(latencies.names.count == CallLatencies.maxFunctions)
    }

    @Test("A node's dashboard lists the functions it executed with their latencies")
    func nodeListsFunctions() async throws {
        let node = try Node(configuration: testConfiguration(key: ClusterKey.generate()))
        _ = try await node.start()
        do {
            let rpc = try await RemoteCall(node: node)
            rpc.register("nap") { (ms: Int) async throws -> Int in
                try await Task.sleep(for: .milliseconds(ms))
                return ms
            }
            try await rpc.process()
            let nap = rpc.function("nap", arguments: Int.self, result: Int.self)
            for _ in 0..<5 { #expect(try await nap(5) == 5) }
            let functions = try #require(await node.dashboard()?.calls.first?.functions)
            #expect(functions.map(\.function) == ["nap"])
            #expect(functions.first?.count == 5)
            #expect((functions.first?.p50Milliseconds ?? 0) >= 4.096, "a 5 ms call falls in the bucket up to 8.192 ms or above")
        } catch {
            await node.stop()
            throw error
        }
        await node.stop()
    }
}

@Suite("p2pq demo and the dashboard", .serialized)
struct DemoDashboardTests {
    static let small = ["demo", "--nodes", "2", "--simulations", "4", "--samples", "1000", "--items", "40", "--work-ms", "0"]

    @Test("p2pq demo --exit prints the dashboard's address and exits by itself")
    func demoExits() async throws {
        let (status, output) = try await runP2PQ(Self.small + ["--exit"], timeout: .seconds(90))
        #expect(status == 0, "\(output)")
        #expect(output.contains("dashboard: http://127.0.0.1:"))
        #expect(!output.contains("Ctrl-C"))
    }

    @Test("p2pq demo keeps the cluster up with its dashboard serving until SIGINT, then exits 0")
    func demoStaysUp() async throws {
        let process = Process()
        process.executableURL = ChildNode.binary
        process.environment = ChildNode.environment
        process.arguments = Self.small
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let pid = process.processIdentifier
        defer { if process.isRunning { kill(pid, SIGKILL) } }
        let fd = output.fileHandleForReading.fileDescriptor
        var address: String?
        var lines: [String] = []
        // Bounded: the demo prints its last line within seconds; EOF ends the loop too.
        let deadline = ContinuousClock.now + .seconds(90)
        while ContinuousClock.now < deadline {
            let line = try await offPool { ChildNode.readLine(fd) }
            lines.append(line)
            if line.hasPrefix("The cluster stays up for the dashboard: ") {
                address = String(line.dropFirst("The cluster stays up for the dashboard: ".count))
            }
            if line.hasPrefix("Ctrl-C stops it") || (line.isEmpty && !process.isRunning) { break }
        }
        let url = try #require(address.flatMap { URL(string: $0) }, "no dashboard address in:\n\(lines.joined(separator: "\n"))")
        let token = try #require(OperationsToken(text: String(url.query?.dropFirst("token=".count) ?? "")))
        let port = try #require(url.port)
        try await Task.sleep(for: .milliseconds(500))
        #expect(process.isRunning, "the demo exited without Ctrl-C")
        let (status, data) = try await httpGet(port, "/dashboard.json", token: token)
        #expect(status == 200)
        let snapshot = try JSONDecoder().decode(DashboardSnapshot.self, from: data)
        #expect(snapshot.members.count == 3, "two demo nodes and the demo's own: \(snapshot.members.map(\.state))")
        kill(pid, SIGINT)
        let exited = try await offPool { () -> Int32 in
            process.waitUntilExit()
            return process.terminationStatus
        }
        #expect(exited == 0)
    }
}

@Suite("Operations addresses and older peers")
struct OperationsAddressCompatibilityTests {
    @Test("A peer whose hello lacks bit 2 is sent no operations message (the link stays up); its older decoder would have nothing to refuse")
    func olderPeerGetsNothing() async throws {
        let key = ClusterKey.generate()
        let token = OperationsToken.derived(from: key)
        let current = try Node(configuration: testConfiguration(key: key))
        let info = try await current.start()
        var olderConfiguration = testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"])
        olderConfiguration.helloFeatureMask = ~WireProtocol.featureOperationsAddress
        let older = try Node(configuration: olderConfiguration)
        var endpoints: [OperationsEndpoint] = []
        do {
            try await older.start()
            for node in [current, older] {
                var logger = Logger(label: "p2pq.test.operations")
                logger.logLevel = .critical
                let endpoint = try OperationsEndpoint(node: node, configuration: OperationsConfiguration(tokens: [token]), logger: logger)
                _ = try await endpoint.start()
                endpoints.append(endpoint)
            }
            // The older node's address reaches the current one (which set bit 2) ...
            try await eventually("the current node knows the older one's operations address") {
                await current.dashboard()?.members.first { $0.peerID == older.peerID.description }?.operations != nil
            }
            // ... and nothing goes the other way, over a link that stays up.
            try await Task.sleep(for: .milliseconds(500))
            #expect(await older.dashboard()?.members.first { $0.peerID == current.peerID.description }?.operations == nil)
            #expect(await older.connectedPeers() == [current.peerID])
        } catch {
            for endpoint in endpoints { await endpoint.stop() }
            await older.stop()
            await current.stop()
            throw error
        }
        for endpoint in endpoints { await endpoint.stop() }
        await older.stop()
        await current.stop()
    }
}

@Suite("Dashboard events from the node")
struct DashboardEventTests {
    @Test("A connection refused in its handshake (another cluster key) becomes a recent event")
    func refusedAndJoined() async throws {
        let node = try Node(configuration: testConfiguration(key: ClusterKey.generate()))
        let info = try await node.start()
        let stranger = try Node(configuration: testConfiguration(key: ClusterKey.generate(), bootstrap: ["\(info.listenAddress)"]))
        do {
            try await stranger.start()
            try await eventually("the refused connection is a recent event") {
                await node.dashboard()?.events.contains { $0.kind == "refused" && $0.detail.contains("refused a connection from 127.0.0.1") } ?? false
            }
        } catch {
            await stranger.stop()
            await node.stop()
            throw error
        }
        await stranger.stop()
        await node.stop()
    }
}
