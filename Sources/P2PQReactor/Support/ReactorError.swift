import Glibc

/// Errors raised by the reactor and its sockets.
public enum ReactorError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The peer actively refused the connection (ECONNREFUSED).
    case connectionRefused(SocketAddress)
    /// No answer from the peer within the connect timeout.
    case connectTimedOut(SocketAddress)
    /// The address is already bound by another socket (EADDRINUSE).
    case addressInUse(SocketAddress)
    /// A host or port that could not be parsed.
    case invalidAddress(String)
    /// A system call failed; `errno` is the C error number.
    case system(call: String, errno: Int32)
    /// The requested backend was not compiled in or the kernel refused it.
    case backendUnavailable(ReactorBackendKind, reason: String)
    /// The reactor has stopped or is stopping; no new work is accepted.
    case reactorStopped
    /// The operation needs an open socket, and this one is closed.
    case closed

    public var description: String {
        switch self {
        case .connectionRefused(let a): return "connection refused by \(a)"
        case .connectTimedOut(let a): return "connect to \(a) timed out"
        case .addressInUse(let a): return "address \(a) is already in use"
        case .invalidAddress(let s): return "invalid address: \(s)"
        case .system(let call, let e): return "\(call) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .backendUnavailable(let kind, let reason): return "the \(kind) backend is unavailable: \(reason)"
        case .reactorStopped: return "the reactor is stopped"
        case .closed: return "the socket is closed"
        }
    }

    @usableFromInline
    static func lastError(_ call: String) -> ReactorError { .system(call: call, errno: errno) }
}
