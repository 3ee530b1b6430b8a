import Glibc

/// The two ways the reactor can wait for I/O. Nothing above the backend can tell them apart.
public enum ReactorBackendKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Readiness-based: epoll, edge-triggered, with an eventfd for wake-ups.
    case epoll
    /// Completion-based: io_uring with multishot accept and receive, provided buffers and
    /// batched sends. Needs liburing at build time.
    case ioUring = "io_uring"

    public var description: String { rawValue }

    /// True when this backend was compiled in. The kernel may still refuse io_uring at run time.
    public var isCompiledIn: Bool {
        switch self {
        case .epoll: return true
        case .ioUring:
            #if P2PQ_IO_URING
            return true
            #else
            return false
            #endif
        }
    }
}

/// Which backend a reactor should use.
public enum ReactorBackendChoice: Sendable, Equatable, CustomStringConvertible {
    /// The backend the benchmarks show faster on Linux (docs/benchmarks.md): epoll, which
    /// matched or beat io_uring on every stream workload measured here.
    case automatic
    /// Exactly this backend; creating the reactor fails if it is unavailable.
    case exactly(ReactorBackendKind)

    /// Reads `P2PQ_BACKEND` (`epoll`, `io_uring` or `auto`); anything else, or unset, is automatic.
    public static var fromEnvironment: ReactorBackendChoice {
        guard let raw = getenv("P2PQ_BACKEND") else { return .automatic }
        return ReactorBackendChoice(environmentValue: String(cString: raw))
    }

    /// Parses a `P2PQ_BACKEND` value: `epoll`, `io_uring` (or `iouring`, `uring`), `auto`;
    /// anything else means automatic.
    public init(environmentValue: String) {
        let value = environmentValue.lowercased()
        if value == "iouring" || value == "uring" {
            self = .exactly(.ioUring)
        } else if let kind = ReactorBackendKind(rawValue: value) {
            self = .exactly(kind)
        } else {
            self = .automatic
        }
    }

    public var description: String {
        switch self {
        case .automatic: return "auto"
        case .exactly(let k): return k.rawValue
        }
    }
}

/// Settings of one reactor.
public struct ReactorConfiguration: Sendable {
    /// The backend; by default whatever `P2PQ_BACKEND` says, else automatic.
    public var backend: ReactorBackendChoice = .fromEnvironment
    /// The loop thread's name (at most 15 characters are kept).
    public var threadName: String = "p2pq-reactor"
    /// Bytes read per `read(2)` by the epoll backend (one buffer shared by all connections).
    public var readBufferSize: Int = 256 * 1024
    /// io_uring: submission queue entries.
    public var ringEntries: UInt32 = 4096
    /// io_uring: size of each provided receive buffer.
    public var receiveBufferSize: Int = 64 * 1024
    /// io_uring: number of provided receive buffers (a power of two).
    public var receiveBufferCount: Int = 128
    /// Size of the chunks that queued outbound bytes are copied into.
    public var outboundChunkSize: Int = 64 * 1024
    /// How many free outbound chunks the reactor keeps for reuse.
    public var outboundChunkCacheLimit: Int = 256
    /// Most jobs of tasks preferring this reactor (see `Reactor` as a `TaskExecutor`) run in
    /// one turn; the rest run in the next turns. Ending the turn flushes what those jobs sent,
    /// so a peer can start on it while the loop runs the remaining jobs: with hundreds of
    /// tasks resumed at once (the results of many calls in one record), an unbounded turn
    /// sends everything at its end and leaves the peer idle meanwhile. It also bounds how long
    /// tasks hold off I/O. 128 was the best of 8-256 on W2 (docs/benchmarks.md).
    public var maxJobsPerTurn: Int = 128
    /// How long the loop keeps polling without sleeping after its last event (zero: it sleeps
    /// as soon as nothing is ready). A sleeping loop pays a thread wake-up and runs its next
    /// turn on cold caches, tens of microseconds on a VM, which is most of a call's round trip
    /// when one call is in flight; polling for a while after each event keeps a request/reply
    /// exchange on a warm thread. It costs a core while it polls: use it where latency matters
    /// more than CPU, and only with a core per busy-polling reactor (docs/benchmarks.md, W2).
    public var busyPoll: Duration = .zero

    public init() {}

    public init(backend: ReactorBackendChoice) {
        self.backend = backend
    }
}
