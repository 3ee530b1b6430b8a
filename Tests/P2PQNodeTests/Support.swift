import Foundation
import Glibc
import Logging
import P2PQLink
@testable import P2PQNode
import P2PQReactor
import P2PQWire
import Testing

/// A configuration for test nodes: loopback, quick timers, quiet logs.
func testConfiguration(key: ClusterKey?, bootstrap: [String] = [], port: Int = 0) -> NodeConfiguration {
    var configuration = NodeConfiguration()
    configuration.clusterKey = key
    configuration.bootstrap = bootstrap
    configuration.listenPort = port
    configuration.handshakeTimeout = .milliseconds(800)
    configuration.keepaliveInterval = .milliseconds(200)
    configuration.keepaliveTimeout = .seconds(2)
    configuration.baseBackoff = .milliseconds(50)
    configuration.maxBackoff = .milliseconds(500)
    configuration.drainTimeout = .milliseconds(500)
    // Tests must not find each other (nor other developers' nodes) on the shared mDNS port.
    configuration.discovery.enabled = false
    var logger = Logger(label: "p2pq.test")
    logger.logLevel = ProcessInfo.processInfo.environment["P2PQ_TEST_LOG"] != nil ? .debug : .critical
    configuration.logger = logger
    return configuration
}

struct TimedOut: Error, CustomStringConvertible {
    let description: String
}

/// Runs blocking work (reading a child's output, waiting for it to exit) on a thread of its
/// own. The tests' tasks share a pool of one thread per core: a test blocking one of them
/// stalls every other test's polling, which then times out while the thing it waits for
/// has long happened.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes. On a timeout the issue
/// carries what `diagnose` says (for example a child's log), so a rare failure explains itself.
func eventually(
    _ what: String, timeout: Duration = .seconds(10),
    sourceLocation: SourceLocation = #_sourceLocation,
    diagnose: () async -> String = { "" },
    _ condition: () async -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    // Once more after the deadline: a poller that was not scheduled for a while (every core
    // busy with other tests) must not report a timeout for a condition that holds.
    if await condition() { return }
    let details = await diagnose()
    Issue.record(
        "timed out after \(timeout) waiting for \(what)\(details.isEmpty ? "" : "\n\(details)")",
        sourceLocation: sourceLocation
    )
    throw TimedOut(description: what)
}

/// Free loopback ports, found by binding and releasing (for tests that need ports up front).
func freePorts(_ count: Int) -> [Int] {
    var sockets: [Int32] = []
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
        sockets.append(fd)
    }
    for fd in sockets { close(fd) }
    return ports
}

/// A blocking loopback client socket for speaking raw bytes at a node.
final class RawClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TimedOut(description: "connect failed: errno \(errno)") }
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    /// Reads what arrives within 100 ms: nil once the peer closed (EOF or reset). On a thread
    /// of its own (see `offPool`).
    func receive() async -> [UInt8]? {
        let fd = self.fd
        return (try? await offPool { Self.receive(fd) }) ?? nil
    }

    private static func receive(_ fd: Int32) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { return Array(buffer.prefix(n)) }
        if n == 0 { return nil }
        if errno == EAGAIN || errno == EWOULDBLOCK { return [] }
        return nil
    }

    /// Waits until the node closes the connection; the time it took, or nil on timeout. On a
    /// thread of its own (see `offPool`).
    func waitForClose(timeout: Duration) async -> Duration? {
        let fd = self.fd
        return (try? await offPool { () -> Duration? in
            let clock = ContinuousClock()
            let start = clock.now
            while clock.now - start < timeout {
                if Self.receive(fd) == nil { return clock.now - start }
            }
            return nil
        }) ?? nil
    }
}

/// `count` started test nodes sharing `key`, each bootstrapped to the first, once they form a
/// full mesh.
func startMesh(
    _ count: Int, key: ClusterKey, configure: (inout NodeConfiguration) -> Void = { _ in }
) async throws -> [Node] {
    var nodes: [Node] = []
    var first: String?
    for _ in 0..<count {
        var configuration = testConfiguration(key: key, bootstrap: first.map { [$0] } ?? [])
        configure(&configuration)
        let node = try Node(configuration: configuration)
        let info = try await node.start()
        if first == nil { first = "\(info.listenAddress)" }
        nodes.append(node)
    }
    try await eventually("a full mesh") {
        for node in nodes where await node.connectedPeers().count != count - 1 { return false }
        return true
    }
    return nodes
}
