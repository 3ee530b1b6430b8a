import ArgumentParser
import Foundation
import P2PQNode
import P2PQOperations

/// `p2pq status`: asks a running node (its `--metrics` address) for its state.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running node's peers, queues and counters (needs the node's --metrics address)."
    )

    @Argument(help: "The node's operations address (host:port or http://host:port), as `p2pq node --metrics` printed it.")
    var address: String

    @Flag(help: "Print the raw JSON.")
    var json = false

    @Option(help: "Bearer token file of the endpoint, or the cluster key file (default: $P2PQ_TOKEN_FILE).")
    var tokenFile: String?

    func run() async throws {
        let base = address.hasPrefix("http://") ? address : "http://\(address)"
        let url = base + "/status"
        let token = try clientToken(tokenFile)
        let response: OperationsClient.Response
        do {
            response = try await OperationsClient.send(url, headers: [("Authorization", "Bearer \(token.text)")], timeout: .seconds(30))
        } catch {
            if case .badURL = error { throw ValidationError("bad address '\(address)'") }
            throw CLIError(.unreachable, "cannot reach \(url): \(error)")
        }
        guard response.status == 200 else {
            throw CLIError(CLIError.kind(forHTTPStatus: response.status),
                           "\(url) answered \(response.status): \(response.text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        let data = Data(response.body)
        if json {
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let status: NodeStatus
        do { status = try JSONDecoder().decode(NodeStatus.self, from: data) } catch {
            throw CLIError(.failed, "\(url) answered something else than a node's status: \(error)")
        }
        print("node \(status.peerID)  \(status.listenAddress)  backend \(status.backend)")
        print("")
        let peerRows = status.peers.map { peer in
            [peer.peerID.map { String($0.prefix(16)) } ?? "?", peer.address ?? "?", peer.state, peer.member ?? "-",
             peer.secondsSinceHeard.map { String(format: "%.1fs", $0) } ?? "-",
             peer.bytesIn.map(String.init) ?? "-", peer.bytesOut.map(String.init) ?? "-"]
        }
        print(table(["peer", "address", "link", "member", "heard", "bytes in", "bytes out"], peerRows))
        if !status.queues.isEmpty {
            print("")
            let rows = status.queues.map {
                [$0.name, "\($0.localCount)", "\($0.clusterEstimate)", "\($0.waitingConsumers)", $0.leased.map(String.init) ?? "-"]
            }
            print(table(["queue", "local", "cluster (est.)", "waiting pops", "leased"], rows))
        }
        print("")
        let counters = status.counters.sorted { $0.key < $1.key }.map { [$0.key, "\($0.value)"] }
        print(table(["counter", "value"], counters + [["loop turns", "\(status.loopTurns)"],
                                                       ["loop busy", String(format: "%.3fs", status.loopBusySeconds)]]))
    }
}

/// A plain left-aligned text table.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0.indices.contains(column) ? $0[column].count : 0 }.max() ?? 0 }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    return ([line(header), line(widths.map { String(repeating: "-", count: $0) })] + rows.map(line)).joined(separator: "\n")
}
