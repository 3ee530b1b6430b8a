import ArgumentParser
import Foundation
import P2PQLink
import P2PQNode
import P2PQOperations

/// The bearer token a client sends: from `--token-file` (a token file or a cluster key file),
/// else from the file `P2PQ_TOKEN_FILE` names, else the development token (what a node
/// without a key or token accepts on loopback).
func clientToken(_ tokenFile: String?) throws -> OperationsToken {
    guard let path = tokenFile ?? ProcessInfo.processInfo.environment["P2PQ_TOKEN_FILE"] else { return .development }
    do {
        return try OperationsToken.load(path: path)
    } catch {
        throw CLIError(.keyRefused, "token file: \(error)")
    }
}

/// One POST to a node's operations endpoint; the body of a 200 answer.
func postOperations(_ address: String, path: String, query: [URLQueryItem], body: [UInt8], timeout: TimeInterval, token: OperationsToken) async throws -> Data {
    let base = address.hasPrefix("http://") ? address : "http://\(address)"
    guard var components = URLComponents(string: base + path) else { throw ValidationError("bad address '\(address)'") }
    if !query.isEmpty { components.queryItems = query }
    guard let url = components.url?.absoluteString else { throw ValidationError("bad address '\(address)'") }
    let response: OperationsClient.Response
    do {
        response = try await OperationsClient.send(url, method: "POST", headers: [("Authorization", "Bearer \(token.text)")],
                                                   body: body, timeout: .milliseconds(Int64(timeout * 1000)))
    } catch {
        throw CLIError(.unreachable, "cannot reach \(url): \(error)")
    }
    guard response.status == 200 else {
        throw CLIError(CLIError.kind(forHTTPStatus: response.status),
                       "\(url) answered \(response.status): \(response.text.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
    return Data(response.body)
}

/// The path of a queue route, the name percent-encoded.
func queuePath(_ name: String, _ verb: String) -> String {
    let escaped = name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? name
    return "/queue/\(escaped)/\(verb)"
}

/// `p2pq push`: pushes items into a running node's queue through its operations endpoint.
struct PushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push items (one per argument, or one per line of standard input) into a running node's queue (needs its --metrics address)."
    )

    @Argument(help: "The node's operations address (host:port), as `p2pq node --metrics` printed it.")
    var address: String

    @Option(help: "The queue's name.")
    var queue: String = Node.defaultQueueName

    @Argument(help: "Items (UTF-8 text, one item each). Without any, each line of standard input is one item.")
    var items: [String] = []

    @Option(help: "Bearer token file of the endpoint, or the cluster key file (default: $P2PQ_TOKEN_FILE).")
    var tokenFile: String?

    func validate() throws {
        guard items.allSatisfy({ !$0.contains("\n") }) else { throw ValidationError("an item cannot contain a newline") }
    }

    func run() async throws {
        var lines = items
        if lines.isEmpty {
            while let line = readLine() { lines.append(line) }
        }
        guard !lines.isEmpty else { throw ValidationError("no items to push") }
        let body = Array((lines.joined(separator: "\n") + "\n").utf8)
        let answer = try await postOperations(
            address, path: queuePath(queue, "push"), query: [URLQueryItem(name: "format", value: "lines")], body: body, timeout: 40, token: try clientToken(tokenFile))
        print(String(decoding: answer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// `p2pq pop`: pops items from a running node's queue and prints one per line.
struct PopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pop",
        abstract: "Pop items from a running node's queue and print them, one per line (needs its --metrics address).",
        discussion: """
            Pop gathers items until it has --max of them or --timeout has passed, whichever comes \
            first, printing each as it arrives: items queued on other nodes of the cluster move to \
            this node while it waits. With --timeout 0 it takes only what this node holds at that \
            moment. Exit status 3 when no item came.

            With --lease each item is leased, not consumed: it is printed as its lease token, a \
            tab, and the item. Acknowledge it with `p2pq ack` before the lease ends, or it is \
            delivered again (`p2pq nack` gives it back at once).
            """
    )

    @Argument(help: "The node's operations address (host:port), as `p2pq node --metrics` printed it.")
    var address: String

    @Option(help: "The queue's name.")
    var queue: String = Node.defaultQueueName

    @Option(help: "Most items to pop (1...65536); pop returns once it has this many.")
    var max: Int = 1

    @Option(help: "Milliseconds to gather items (0...600000); pop returns when they have passed, with what it has.")
    var timeout: Int = 5000

    @Flag(help: "Print items base64-encoded (for binary items).")
    var base64 = false

    @Option(help: "Lease the items for this long (e.g. 30s, 500ms, 5m; at most 12h) and print each one's token before it.")
    var lease: String?

    @Option(help: "Bearer token file of the endpoint, or the cluster key file (default: $P2PQ_TOKEN_FILE).")
    var tokenFile: String?

    func validate() throws {
        guard (1...65_536).contains(max) else { throw ValidationError("--max must be between 1 and 65,536") }
        guard (0...600_000).contains(timeout) else { throw ValidationError("--timeout must be between 0 and 600,000 ms") }
        if let lease { _ = try leaseMilliseconds(lease) }
    }

    func run() async throws {
        // One request pops only what the node holds when the first item is there; more come
        // from peers while the node's consumers wait, so ask again until --max or the deadline.
        let token = try clientToken(tokenFile)
        let leaseQuery = try lease.map { [URLQueryItem(name: "lease", value: "\(try leaseMilliseconds($0))")] } ?? []
        let deadline = ContinuousClock.now + .milliseconds(timeout)
        var popped = 0
        repeat {
            let left = Swift.max(0, (deadline - ContinuousClock.now) / .milliseconds(1))
            let wait = Swift.min(Int(left.rounded(.up)), 25_000)  // the route's limit per request
            let data = try await postOperations(
                address, path: queuePath(queue, "pop"),
                query: [
                    URLQueryItem(name: "max", value: "\(max - popped)"), URLQueryItem(name: "timeout", value: "\(wait)"),
                    URLQueryItem(name: "encoding", value: base64 ? "base64" : "utf8"),
                ] + leaseQuery,
                body: [], timeout: Double(wait) / 1000 + 10, token: token)
            let answer: QueuePopAnswer
            do { answer = try JSONDecoder().decode(QueuePopAnswer.self, from: data) } catch {
                throw CLIError(.failed, "\(address) answered a pop with something else than its JSON: \(error)")
            }
            if lease != nil {
                guard let tokens = answer.tokens, tokens.count == answer.items.count else {
                    throw CLIError(.failed, "\(address) answered a leased pop without lease tokens (an older node?)")
                }
                for (token, item) in zip(tokens, answer.items) { print("\(token)\t\(item)") }
            } else {
                for item in answer.items { print(item) }
            }
            fflush(nil)
            popped += answer.items.count
        } while popped < max && ContinuousClock.now < deadline
        if popped == 0 { throw CLIError(.nothingPopped, "no item within \(timeout) ms") }
    }
}

/// Milliseconds of a duration written as a number and a unit (`ms`, `s`, `m`, `h`; a bare
/// number is seconds), 1 ms ... 12 h.
func leaseMilliseconds(_ text: String) throws -> Int {
    let units: [(String, Int)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
    var number = Substring(text)
    var scale = 1000
    for (suffix, value) in units where text.hasSuffix(suffix) {
        number = text.dropLast(suffix.count)
        scale = value
        break
    }
    guard let amount = Int(number), amount > 0, amount <= OperationsConfiguration.maxLeaseMilliseconds / scale else {
        throw ValidationError("--lease takes a duration from 1ms to 12h, such as 30s, 500ms or 5m (not '\(text)')")
    }
    return amount * scale
}

/// `p2pq ack` and `p2pq nack`: what they share.
struct LeaseTokens: ParsableArguments {
    @Argument(help: "The node's operations address (host:port): the node the items were popped from.")
    var address: String

    @Argument(help: "Lease tokens, as `p2pq pop --lease` printed them. Without any, standard input is read: one per line (the first field of each line, so pop's output can be piped in).")
    var tokens: [String] = []

    @Option(help: "The queue's name.")
    var queue: String = Node.defaultQueueName

    @Option(help: "Bearer token file of the endpoint, or the cluster key file (default: $P2PQ_TOKEN_FILE).")
    var tokenFile: String?

    func validate() throws {
        guard tokens.allSatisfy({ UInt64($0) != nil }) else { throw ValidationError("a lease token is a decimal number") }
    }

    func post(_ verb: String) async throws {
        var list = tokens
        if list.isEmpty {
            while let line = readLine() {
                guard let field = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).first else { continue }
                guard UInt64(field) != nil else { throw ValidationError("not a lease token: '\(field.prefix(40))'") }
                list.append(String(field))
            }
        }
        guard !list.isEmpty else { throw ValidationError("no lease tokens") }
        let answer = try await postOperations(address, path: queuePath(queue, verb), query: [], body: Array(list.joined(separator: "\n").utf8),
                                              timeout: 30, token: try clientToken(tokenFile))
        print(String(decoding: answer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// `p2pq ack`: acknowledges leased items (they are consumed).
struct AckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ack",
        abstract: "Acknowledge items popped with `p2pq pop --lease`: they are done (exit 65 if a lease had ended; the others are acknowledged).")

    @OptionGroup var options: LeaseTokens

    func run() async throws { try await options.post("ack") }
}

/// `p2pq nack`: gives leased items back to the queue.
struct NackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nack",
        abstract: "Give items popped with `p2pq pop --lease` back: they go to the front of the queue and are delivered again.")

    @OptionGroup var options: LeaseTokens

    func run() async throws { try await options.post("nack") }
}
