import Foundation
import Glibc
import Logging
import P2PQLink
import P2PQNode
import P2PQOperations
import Prometheus
import Testing

/// A node on loopback for endpoint tests (no discovery, quiet logs).
func startNode(key: ClusterKey? = ClusterKey.generate(), maxQueueItems: Int? = nil) async throws -> Node {
    var configuration = NodeConfiguration()
    configuration.clusterKey = key
    configuration.listenPort = 0
    configuration.discovery.enabled = false
    configuration.drainTimeout = .milliseconds(300)
    configuration.metrics = .prometheus(PrometheusCollectorRegistry())
    if let maxQueueItems { configuration.maxQueueItems = maxQueueItems }
    var logger = Logger(label: "p2pq.test")
    logger.logLevel = .critical
    configuration.logger = logger
    let node = try Node(configuration: configuration)
    try await node.start()
    return node
}

/// An endpoint on 127.0.0.1, port 0, started; `adjust` changes its settings first.
func startEndpoint(_ node: Node, tokens: [OperationsToken], host: String = "127.0.0.1",
                   _ adjust: (inout OperationsConfiguration) -> Void = { _ in }) async throws -> (OperationsEndpoint, port: UInt16) {
    var configuration = OperationsConfiguration(host: host, port: 0, tokens: tokens)
    adjust(&configuration)
    var logger = Logger(label: "p2pq.test.operations")
    logger.logLevel = .critical
    let endpoint = try OperationsEndpoint(node: node, configuration: configuration, logger: logger)
    let address = try await endpoint.start()
    let port = try #require(UInt16(address.split(separator: ":").last!))
    return (endpoint, port)
}

/// One HTTP answer as read off the socket.
struct RawAnswer {
    var status: Int
    var head: String
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }

    func header(_ name: String) -> String? {
        for line in head.split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].lowercased() == name.lowercased() {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// A blocking TCP client on 127.0.0.1 (bytes exactly as given: for hostile requests too).
final class RawConnection: @unchecked Sendable {
    let fd: Int32

    /// `source`: the loopback address to connect from (another client, as the server sees it).
    init(port: UInt16, receiveTimeout: Int = 5, source: String? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var timeout = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else {
                Glibc.close(fd)
                throw POSIXError(.EADDRNOTAVAIL)
            }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
    }

    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    func send(_ text: String) { send(Array(text.utf8)) }

    /// Everything until the peer closes or the receive timeout passes (blocking; run it off
    /// the cooperative pool with ``readAll()``).
    func readAllBlocking() -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while out.count < 64 << 20 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                out.append(contentsOf: buffer[0..<n])
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return out
    }

    func readAll() async -> [UInt8] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: self.readAllBlocking()) }
        }
    }

    /// One HTTP answer whose body has a `Content-Length`, read without waiting for a close.
    func readAnswer() async -> [UInt8] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var out: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65_536)
                while true {
                    if let answer = RawConnection.parse(out), let length = answer.header("Content-Length").flatMap(Int.init),
                       answer.body.count >= length { break }
                    let n = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
                    if n > 0 { out.append(contentsOf: buffer[0..<n]) } else if n < 0 && errno == EINTR { continue } else { break }
                }
                continuation.resume(returning: out)
            }
        }
    }

    func close() { Glibc.close(fd) }

    /// Whether the server still holds the connection open (it sent nothing and did not close).
    func isOpen() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }

    static func parse(_ bytes: [UInt8]) -> RawAnswer? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard bytes.count >= 12, bytes.starts(with: Array("HTTP/1.".utf8)),
              let end = (0..<(bytes.count - 3)).first(where: { Array(bytes[$0..<$0 + 4]) == separator }) else { return nil }
        let head = String(decoding: bytes[..<end], as: UTF8.self)
        guard let status = Int(String(decoding: bytes[9..<12], as: UTF8.self)) else { return nil }
        return RawAnswer(status: status, head: head, body: Array(bytes[(end + 4)...]))
    }
}

/// One request with `Connection: close`; the answer, or nil if the connection closed without one.
func request(_ port: UInt16, _ method: String, _ target: String, token: OperationsToken? = nil, headers: [String: String] = [:],
             body: [UInt8] = [], host: String? = nil) async throws -> RawAnswer? {
    let connection = try RawConnection(port: port, receiveTimeout: 30)
    defer { connection.close() }
    var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host ?? "127.0.0.1:\(port)")\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
    if let token { head += "Authorization: Bearer \(token.text)\r\n" }
    for (name, value) in headers { head += "\(name): \(value)\r\n" }
    connection.send(Array((head + "\r\n").utf8) + body)
    return RawConnection.parse(await connection.readAll())
}

/// Waits until `condition` holds, up to `timeout`.
func eventually(_ what: String, timeout: Duration = .seconds(5), _ condition: () async -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("timed out waiting until \(what)")
    throw CancellationError()
}

/// Runs `body` with a started node and stops the node afterwards, also when `body` throws (a
/// node left running past its test would outlive what its timers point to).
func withNode(key: ClusterKey? = ClusterKey.generate(), maxQueueItems: Int? = nil,
              _ body: (Node) async throws -> Void) async throws {
    let node = try await startNode(key: key, maxQueueItems: maxQueueItems)
    do {
        try await body(node)
    } catch {
        await node.stop()
        throw error
    }
    await node.stop()
}
