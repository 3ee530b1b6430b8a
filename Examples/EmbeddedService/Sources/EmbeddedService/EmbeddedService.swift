// A service that embeds a p2pqueue node: the node runs in a swift-service-lifecycle
// ServiceGroup next to the application's own service, which uses the queue and remote calls.
//
//   cd Examples/EmbeddedService
//   swift run EmbeddedService                          # one node on its own
//   swift run EmbeddedService 127.0.0.1:PORT           # join a running node (development key)
//
// Its Package.swift depends on the library by path, as an application depends on it by URL:
// the one product `P2PQNode`, and `import P2PQNode` is the only import (it brings Logger and
// the swift-service-lifecycle types too).
//
// It pushes jobs onto the shared queue, pops them (here or wherever the cluster balances them
// to), squares each through a remote call, prints the sum, and shuts the group down: the node
// leaves the cluster cleanly. Everything it starts stops by itself.

import P2PQNode

/// The application's own service: works while the node runs, then ends the group.
struct JobsService: Service {
    let node: Node
    let jobs: Int

    func run() async throws {
        // The node's Service.run starts it; wait until it is up.
        while await node.status() == nil { try await Task.sleep(for: .milliseconds(10)) }

        let rpc = try await RemoteCall(node: node)
        let square = rpc.register("square") { (x: Int) async throws -> Int in x * x }
        try await rpc.process()  // this node also executes calls

        let queue = node.queue(named: "jobs", of: Int.self)
        try await queue.push(contentsOf: Array(1...jobs))
        var sum = 0
        for _ in 0..<jobs {
            let job = try await queue.pop(timeout: .seconds(10))
            sum += try await square(job)
        }
        print("sum of squares 1...\(jobs) = \(sum) (expected \(jobs * (jobs + 1) * (2 * jobs + 1) / 6))")
    }
}

@main
struct EmbeddedService {
    static func main() async throws {
        var logger = Logger(label: "embedded")
        logger.logLevel = .notice
        var configuration = NodeConfiguration()
        configuration.bootstrap = Array(CommandLine.arguments.dropFirst())
        configuration.discovery = .disabled
        configuration.logger = logger
        let node = try Node(configuration: configuration)

        // The jobs service ends first; the group then shuts the node down gracefully.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [
                .init(service: node),
                .init(service: JobsService(node: node, jobs: 100), successTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
    }
}
