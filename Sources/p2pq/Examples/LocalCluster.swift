import Foundation
import Glibc
import P2PQLink
import P2PQNode
import P2PQOperations

/// A throwaway cluster of `p2pq node` child processes on loopback, for the examples and
/// benchmarks: a shared temporary cluster key, each child serving its operations endpoint.
///
/// ```swift
/// let cluster = try await LocalCluster.start(nodes: 4, extraArguments: ["--serve-examples"])
/// defer { cluster.stop() }
/// for node in cluster.nodes { print(node.peerID, node.listenAddress, node.operationsURL) }
/// ```
/// Only the children it started are ever signalled, by PID.
final class LocalCluster {
    /// One child node.
    struct Member: Sendable {
        /// The child's process ID.
        var pid: pid_t
        /// What peers dial (host:port).
        var listenAddress: String
        /// The child's PeerID, as hex.
        var peerID: String
        /// Its operations endpoint (`http://127.0.0.1:port`): `/status`, `/metrics`.
        var operationsURL: String
        /// The endpoint's bearer token (derived from the cluster key).
        var token: String
    }

    private(set) var nodes: [Member] = []
    /// The cluster key file every child (and an in-process node) uses.
    let keyFile: String
    let key: ClusterKey
    private var children: [SelfProcess] = []

    private init(keyFile: String, key: ClusterKey) {
        self.keyFile = keyFile
        self.key = key
    }

    /// Starts `count` nodes joined to the first one; returns once each printed its addresses.
    /// `extraArguments` go to every `p2pq node` (for example `--serve-examples`).
    static func start(nodes count: Int, extraArguments: [String] = [], logLevel: String = "error") async throws -> LocalCluster {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-cluster-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).key").path
        let key = ClusterKey.generate()
        try key.save(path: path)
        let cluster = LocalCluster(keyFile: path, key: key)
        do {
            for index in 0..<count {
                var arguments = ["node", "--log-level", logLevel, "--no-discovery", "--exit-with-parent", "--key-file", path, "--metrics", "127.0.0.1:0"]
                if index > 0 { arguments += ["--bootstrap", cluster.nodes[0].listenAddress] }
                try await cluster.launch(arguments + extraArguments)
            }
        } catch {
            cluster.stop()
            throw error
        }
        return cluster
    }

    private func launch(_ arguments: [String]) async throws {
        let child = try SelfProcess(arguments: arguments, quiet: true)
        children.append(child)
        // "listening <address> <peer id>" then "operations http://...".
        let first = try await child.line(startingWith: "listening ").split(separator: " ").map(String.init)
        let second = try await child.line(startingWith: "operations ").split(separator: " ").map(String.init)
        guard first.count == 3, second.count == 2 else {
            throw LocalClusterError(description: "p2pq node (pid \(child.process.processIdentifier)) did not start: \(first) \(second)")
        }
        nodes.append(Member(pid: child.process.processIdentifier, listenAddress: first[1], peerID: first[2], operationsURL: second[1],
                            token: OperationsToken.derived(from: key).text))
    }

    /// A node's `/status`, nil if it does not answer within 2 s.
    static func status(of member: Member) async -> NodeStatus? {
        guard let response = try? await OperationsClient.send(member.operationsURL + "/status", headers: [("Authorization", "Bearer \(member.token)")],
                                                              timeout: .seconds(2)),
              response.status == 200 else { return nil }
        return try? JSONDecoder().decode(NodeStatus.self, from: Data(response.body))
    }

    /// Stops every child: SIGTERM, then SIGKILL for those still running after `grace`.
    func stop(grace: Duration = .seconds(3)) {
        let processes = children.map(\.process)
        for process in processes where process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        while processes.contains(where: \.isRunning) && clock.now < deadline { usleep(20_000) }
        for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        for process in processes { process.waitUntilExit() }
        children = []
        unlink(keyFile)
    }

    deinit {
        // Each SelfProcess kills its own child if it still runs.
        unlink(keyFile)
    }
}

struct LocalClusterError: Error, CustomStringConvertible {
    var description: String
}
