import Glibc
import P2PQNodeMachine
import P2PQReactor

/// A `host:port` the node dials, where the host may be a name (`--bootstrap db-1:7000`).
///
/// The reactor works with numeric addresses only (resolving a name blocks). A name is resolved
/// when the node starts, so a typo fails `start()`, and again before every redial of it, off
/// the reactor thread, so a peer that moved to another address is found again.
public struct HostAndPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// Parses `host:port` or `[v6]:port`; the port must be 1...65535.
    public init(_ text: String) throws(NodeError) {
        guard let colon = text.lastIndex(of: ":") else {
            throw .invalidConfiguration("'\(text)' has no port (expected host:port)")
        }
        var host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port) else {
            throw .invalidConfiguration("'\(text)' needs a port between 1 and 65535")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            throw .invalidConfiguration("'\(text)': write IPv6 hosts in brackets, as [::1]:port")
        }
        guard !host.isEmpty else { throw .invalidConfiguration("'\(text)' has no host") }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The numeric address, when the host is one (or `localhost`): nothing to resolve.
    var numeric: SocketAddress? { try? SocketAddress(host: host, port: port) }

    /// Resolves the host with the system resolver (blocking; never on the reactor thread). The
    /// first address returned wins, as for most clients.
    static func systemResolve(_ host: String, _ port: Int) throws(NodeError) -> SocketAddress {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        defer { if list != nil { freeaddrinfo(list) } }
        guard status == 0 else {
            throw .invalidConfiguration("cannot resolve '\(host)': \(String(cString: gai_strerror(status)))")
        }
        var entry = list
        while let current = entry {
            var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(current.pointee.ai_addr, current.pointee.ai_addrlen, &text, socklen_t(text.count),
                           nil, 0, NI_NUMERICHOST) == 0,
               let address = try? SocketAddress(host: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), port: port) {
                return address
            }
            entry = current.pointee.ai_next
        }
        throw .invalidConfiguration("cannot resolve '\(host)': no usable address")
    }
}

/// The node machine tells socket addresses in hellos and peer lists as host and port.
extension SocketAddress: NodeAddress {
    public init?(linkHost host: String, port: UInt16) {
        guard let address = try? SocketAddress(host: host, port: Int(port)) else { return nil }
        self = address
    }

    public var linkHostAndPort: (host: String, port: UInt16)? {
        guard port > 0, let port = UInt16(exactly: port) else { return nil }
        return (host, port)
    }
}
