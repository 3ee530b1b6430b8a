import ArgumentParser
import Foundation
import P2PQLink
import P2PQNode
import Synchronization

/// `p2pq queue-example`: p2pqueue's queue example. Several nodes, each its own process on
/// loopback, push integers into one distributed queue and all pop with a timeout; every pop is
/// printed with the node that got it, then a summary per node. Exits by itself.
struct QueueExampleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue-example",
        abstract: "Several node processes on loopback push integers and pop them with a timeout; prints who popped what."
    )

    @Option(help: "Node processes (2...16).")
    var nodes: Int = 3

    @Option(help: "Integers each node pushes (0...100000).")
    var items: Int = 10

    @Option(help: "A node stops popping after this many milliseconds without an item.")
    var timeout: Int = 1500

    @Option(help: "Milliseconds of pretend work per popped item (lets the other nodes take a share).")
    var work: Int = 20

    @Option(help: .hidden) var worker: Int?
    @Option(help: .hidden) var bootstrap: String?

    func validate() throws {
        guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be between 2 and 16") }
        guard (0...100_000).contains(items) else { throw ValidationError("--items must be between 0 and 100,000") }
        guard (100...60_000).contains(timeout) else { throw ValidationError("--timeout must be between 100 and 60,000 ms") }
        guard (0...10_000).contains(work) else { throw ValidationError("--work must be between 0 and 10,000 ms") }
    }

    func run() async throws {
        if let worker {
            try await runWorker(worker)
        } else {
            try await runParent()
        }
    }

    /// Starts the node processes, relays their output, prints the summary.
    private func runParent() async throws {
        let common = ["queue-example", "--nodes", "\(nodes)", "--items", "\(items)", "--timeout", "\(timeout)", "--work", "\(work)"]
        let relay: @Sendable (String) -> Void = { line in
            if !line.hasPrefix("listening") && !line.hasPrefix("summary") && !line.hasPrefix("ready") {
                print(line)
                fflush(nil)
            }
        }
        var children = [try SelfProcess(arguments: common + ["--worker", "0"], onLine: relay)]
        let first = try await children[0].line(startingWith: "listening ")
        let address = String(first.split(separator: " ")[1])
        for index in 1..<nodes {
            children.append(try SelfProcess(arguments: common + ["--worker", "\(index)", "--bootstrap", address], onLine: relay))
        }
        // Everyone pushes once all are linked, so the example shows work moving between nodes.
        for child in children { _ = try await child.line(startingWith: "ready") }
        for child in children { child.send("go") }
        for child in children { await child.wait(timeout: .seconds(Int64(60 + timeout / 1000))) }
        var pushed = 0
        var popped = 0
        print("summary:")
        for (index, child) in children.enumerated() {
            guard let line = child.allLines.first(where: { $0.hasPrefix("summary") }) else {
                print("  node \(index): no summary (exit status \(child.process.terminationStatus))")
                continue
            }
            // "summary <node> <peer> pushed <n> popped <m>"
            let words = line.split(separator: " ")
            let p = Int(words[4]) ?? 0
            let q = Int(words[6]) ?? 0
            pushed += p
            popped += q
            print("  node \(index) (\(words[2])): pushed \(p), popped \(q)")
        }
        print("  total: pushed \(pushed), popped \(popped)")
    }

    /// One node process.
    private func runWorker(_ index: Int) async throws {
        let node = try Node(configuration: loopbackNodeConfiguration(bootstrap: bootstrap.map { [$0] } ?? []))
        let info = try await node.start()
        print("listening \(info.listenAddress) \(info.peerID)")
        fflush(nil)
        let queue = node.queue(named: "example")
        _ = await queue.size()  // creates the queue, so peers learn about it before the pushes
        try await waitForMesh([node], peers: nodes - 1, timeout: .seconds(20))
        print("ready")
        fflush(nil)
        _ = await readStandardInputLine()  // "go"
        let numbers = (0..<items).map { index * 1000 + $0 }
        try await queue.push(contentsOf: numbers.map { Array(String($0).utf8) })
        var popped = 0
        let me = "node \(index) (\(info.peerID.short))"
        while true {
            do {
                let item = try await queue.pop(timeout: .milliseconds(timeout))
                popped += 1
                print("\(me) popped \(String(decoding: item, as: UTF8.self))")
                fflush(nil)
                if work > 0 { try await Task.sleep(for: .milliseconds(work)) }
            } catch {
                if (error as? QueueError) == .timeout { break }
                throw error
            }
        }
        // Anything that still arrives is handed to the others before this node leaves.
        await queue.close()
        print("summary \(index) \(info.peerID.short) pushed \(items) popped \(popped)")
        fflush(nil)
        await node.stop()
    }
}
