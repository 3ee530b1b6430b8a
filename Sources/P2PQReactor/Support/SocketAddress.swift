import CP2PQSystem
import Glibc

/// An IPv4 or IPv6 socket address (numeric host and port).
///
/// Host names other than `localhost` are refused on purpose: resolving a name blocks, and the
/// reactor thread must never block. Resolve names before handing addresses to the reactor.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    @usableFromInline
    var storage: sockaddr_storage
    public let length: socklen_t

    /// The address family, `AF_INET` or `AF_INET6`.
    public var family: Int32 { Int32(storage.ss_family) }

    /// Parses a numeric IPv4 or IPv6 host (`localhost` means 127.0.0.1) and a port.
    public init(host: String, port: Int) throws(ReactorError) {
        guard (0...65535).contains(port) else { throw .invalidAddress("port \(port) is out of range") }
        var host = host
        if host == "localhost" { host = "127.0.0.1" }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(port).bigEndian)
            sin.sin_addr = v4
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: &sin) { dst.copyMemory(from: $0) }
            }
            self.storage = storage
            self.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(port).bigEndian)
            sin6.sin6_addr = v6
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: &sin6) { dst.copyMemory(from: $0) }
            }
            self.storage = storage
            self.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            throw .invalidAddress("'\(host)' is not a numeric IPv4 or IPv6 address")
        }
    }

    /// Parses `host:port`, `[v6]:port` or `v6-without-brackets` is refused as ambiguous.
    public init(_ string: String) throws(ReactorError) {
        guard let colon = string.lastIndex(of: ":") else {
            throw .invalidAddress("'\(string)' has no port (expected host:port)")
        }
        let host = String(string[..<colon])
        guard let port = Int(string[string.index(after: colon)...]) else {
            throw .invalidAddress("'\(string)' has no numeric port")
        }
        if host.contains(":") && !host.hasPrefix("[") {
            throw .invalidAddress("'\(string)': write IPv6 hosts in brackets, as [::1]:port")
        }
        try self.init(host: host, port: port)
    }

    /// Wraps a raw address the kernel returned.
    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// The port in host byte order.
    public var port: Int {
        withUnsafeBytes(of: storage) { raw in
            // sin_port and sin6_port sit at the same offset.
            Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
        }
    }

    /// The numeric host, without brackets.
    public var host: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                let sin = raw.load(as: sockaddr_in.self)
                var addr = sin.sin_addr
                _ = inet_ntop(AF_INET, &addr, &buffer, socklen_t(buffer.count))
            } else {
                let sin6 = raw.load(as: sockaddr_in6.self)
                var addr = sin6.sin6_addr
                _ = inet_ntop(AF_INET6, &addr, &buffer, socklen_t(buffer.count))
            }
        }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// True for 127.0.0.0/8 and ::1.
    public var isLoopback: Bool {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                return raw[4] == 127
            }
            let a = raw.load(as: sockaddr_in6.self).sin6_addr
            return withUnsafeBytes(of: a) { b in b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1 }
        }
    }

    public var description: String { family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.length == rhs.length && lhs.withBytes { a in rhs.withBytes { b in a.elementsEqual(b) } }
    }

    public func hash(into hasher: inout Hasher) {
        withBytes { hasher.combine(bytes: $0) }
    }

    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: storage) { body(UnsafeRawBufferPointer(rebasing: $0.prefix(Int(length)))) }
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}
