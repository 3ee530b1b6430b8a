import CP2PQSystem
import Glibc

/// Why a connection closed. Delivered once, through
/// ``TCPConnectionHandler/connection(_:didCloseWith:)``.
public enum TCPCloseReason: Sendable, Equatable, CustomStringConvertible {
    /// This side called `close()`.
    case closedLocally
    /// The peer finished sending (EOF) and the connection closed after flushing.
    case peerClosed
    /// The peer reset the connection (ECONNRESET, EPIPE).
    case reset
    /// The connect did not succeed: `.connectionRefused` or `.connectTimedOut`, or another error.
    case connectFailed(ReactorError)
    /// Any other socket error.
    case error(ReactorError)
    /// The reactor stopped.
    case reactorStopped

    public var description: String {
        switch self {
        case .closedLocally: return "closed locally"
        case .peerClosed: return "closed by peer"
        case .reset: return "reset by peer"
        case .connectFailed(let e): return "connect failed: \(e)"
        case .error(let e): return "error: \(e)"
        case .reactorStopped: return "reactor stopped"
        }
    }
}

/// Receives a connection's events, on the reactor thread.
///
/// Bytes passed to ``connection(_:didRead:)`` are only valid during the call (they sit in the
/// reactor's receive buffer, handed over without a copy): copy what you keep.
public protocol TCPConnectionHandler: AnyObject {
    /// The connection is established (after a connect) or was just accepted.
    func connectionDidBecomeActive(_ connection: TCPConnection)
    /// Bytes arrived. Valid only during the call.
    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer)
    /// The peer finished sending (half-close). The default closes after pending writes flush;
    /// override to keep writing.
    func connectionDidReadEOF(_ connection: TCPConnection)
    /// Queued bytes crossed the high watermark (false) or fell back to the low one (true).
    func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool)
    /// The connection closed; no further events follow.
    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason)
}

extension TCPConnectionHandler {
    public func connectionDidBecomeActive(_ connection: TCPConnection) {}
    public func connectionDidReadEOF(_ connection: TCPConnection) {
        connection.close(afterFlush: true, reason: .peerClosed)
    }
    public func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {}
    public func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {}
}

/// Per-connection socket options.
public struct TCPOptions: Sendable {
    /// Disable Nagle's algorithm (on by default: the reactor batches writes itself).
    public var noDelay = true
    /// Queued bytes above this make the connection unwritable.
    public var highWatermark = 1 << 20
    /// Queued bytes at or below this make it writable again.
    public var lowWatermark = 256 << 10

    public init() {}

    public init(noDelay: Bool = true, highWatermark: Int, lowWatermark: Int) {
        precondition(lowWatermark <= highWatermark, "low watermark above high watermark")
        self.noDelay = noDelay
        self.highWatermark = highWatermark
        self.lowWatermark = lowWatermark
    }
}

/// A TCP connection owned by a reactor. Use it only on that reactor's thread.
///
/// Writes are queued and leave at the end of the loop turn, together: one gather write or one
/// batched submission per turn, however many writes the handler made.
public final class TCPConnection {
    public enum State: Sendable, Equatable { case connecting, active, closed }

    public unowned let reactor: Reactor
    public internal(set) var state: State
    /// The event receiver. Set it before the accept callback returns.
    public var handler: (any TCPConnectionHandler)?
    /// The peer's address.
    public let remoteAddress: SocketAddress
    public let options: TCPOptions

    /// Whether queued bytes are at or below the low watermark (since they last exceeded the high one).
    public private(set) var isWritable = true
    public private(set) var isReadingPaused = false
    /// The peer finished sending.
    public private(set) var isInputClosed = false

    let fd: Int32
    var token: UInt64 = 0
    var outbound = OutboundBuffer()
    var inFlushQueue = false
    private var shutdownOutputWhenFlushed = false
    private var closeWhenFlushed: TCPCloseReason?
    private(set) var isOutputShutdown = false
    var connectTimer: TimerID?
    /// Backend-private bookkeeping.
    var io = ConnectionIOState()

    init(reactor: Reactor, fd: Int32, remoteAddress: SocketAddress, state: State, options: TCPOptions) {
        self.reactor = reactor
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.state = state
        self.options = options
        if options.noDelay {
            _ = p2pq_setsockopt_int(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        }
    }

    /// The local address of the socket.
    public var localAddress: SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return rc == 0 ? SocketAddress(storage: storage, length: length) : nil
    }

    /// Bytes queued and not yet accepted by the kernel.
    public var queuedByteCount: Int { outbound.count }

    // MARK: Writing

    /// Queues a copy of `bytes`. They leave at the end of this loop turn.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        reactor.assertInReactorThread()
        guard state != .closed, !bytes.isEmpty, !isOutputShutdown, !shutdownOutputWhenFlushed else { return }
        outbound.append(bytes, pool: reactor.chunkPool)
        didQueue()
    }

    /// Queues a copy of `bytes`.
    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    /// Lets `body` encode up to `capacity` bytes straight into the outbound queue (no
    /// intermediate buffer); `body` returns how many it wrote.
    public func write(reservingCapacity capacity: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        reactor.assertInReactorThread()
        guard state != .closed, !isOutputShutdown, !shutdownOutputWhenFlushed else { return }
        let room = outbound.reserve(capacity, pool: reactor.chunkPool)
        let written = body(UnsafeMutableRawBufferPointer(rebasing: room.prefix(capacity)))
        precondition(written >= 0 && written <= capacity, "wrote outside the reserved capacity")
        guard written > 0 else { return }
        outbound.commit(written)
        didQueue()
    }

    @inline(__always)
    private func didQueue() {
        if state == .active { reactor.enqueueFlush(self) }
        if isWritable && outbound.count > options.highWatermark {
            isWritable = false
            handler?.connection(self, writabilityChanged: false)
        }
    }

    /// Half-closes: once queued bytes are written, the peer sees EOF. Reads go on.
    public func shutdownOutput() {
        reactor.assertInReactorThread()
        guard state != .closed, !isOutputShutdown else { return }
        shutdownOutputWhenFlushed = true
        if outbound.isEmpty && state == .active { finishOutputShutdown() } else if state == .active { reactor.enqueueFlush(self) }
    }

    // MARK: Reading

    /// Stops delivering reads until ``resumeReading()``. The kernel buffers meanwhile, and TCP
    /// flow control slows the peer.
    public func pauseReading() {
        reactor.assertInReactorThread()
        guard !isReadingPaused, state != .closed else { return }
        isReadingPaused = true
        if state == .active { reactor.backend.readInterestChanged(self) }
    }

    public func resumeReading() {
        reactor.assertInReactorThread()
        guard isReadingPaused, state != .closed else { return }
        isReadingPaused = false
        if state == .active { reactor.backend.readInterestChanged(self) }
    }

    /// Starts writing the queued bytes now rather than at the end of the turn, so the peer can
    /// begin on a large message while the loop prepares the next one (epoll writes at once,
    /// io_uring submits the send at once). Loop thread only, and not from within this
    /// connection's own handler callbacks (a layer above defers it with `Reactor.execute`).
    public func flushNow() {
        reactor.assertInReactorThread()
        guard state == .active, !outbound.isEmpty else { return }
        reactor.backend.flush(self)
        reactor.backend.submitNow()
    }

    // MARK: Closing

    /// Closes now; queued bytes are dropped.
    public func close() {
        close(reason: .closedLocally)
    }

    /// Closes after queued bytes are written (`afterFlush`), or now.
    public func close(afterFlush: Bool, reason: TCPCloseReason = .closedLocally) {
        reactor.assertInReactorThread()
        guard state != .closed else { return }
        if afterFlush && !outbound.isEmpty {
            closeWhenFlushed = reason
            // While connecting, the flush that follows the connect applies the close.
            if state == .active { reactor.enqueueFlush(self) }
        } else {
            close(reason: reason)
        }
    }

    func close(reason: TCPCloseReason) {
        guard state != .closed else { return }
        state = .closed
        if let timer = connectTimer {
            reactor.cancel(timer)
            connectTimer = nil
        }
        reactor.backend.remove(.connection(self))
        let handler = self.handler
        self.handler = nil
        handler?.connection(self, didCloseWith: reason)
    }

    /// Called by the backend once no I/O references the socket: frees memory and the token.
    func finalize() {
        outbound.removeAll(pool: reactor.chunkPool)
        Glibc.close(fd)
        reactor.release(token: token)
    }

    // MARK: Events from the backends

    func handleConnectResult(errno code: Int32) {
        guard state == .connecting else { return }
        if let timer = connectTimer {
            reactor.cancel(timer)
            connectTimer = nil
        }
        if code == 0 {
            state = .active
            reactor.backend.addConnection(self)
            handler?.connectionDidBecomeActive(self)
            if state == .active && (!outbound.isEmpty || hasPendingOutputAction) { reactor.enqueueFlush(self) }
        } else if code == ECONNREFUSED {
            close(reason: .connectFailed(.connectionRefused(remoteAddress)))
        } else if code == ETIMEDOUT {
            close(reason: .connectFailed(.connectTimedOut(remoteAddress)))
        } else {
            close(reason: .connectFailed(.system(call: "connect", errno: code)))
        }
    }

    @inline(__always)
    func handleRead(_ bytes: UnsafeRawBufferPointer) {
        handler?.connection(self, didRead: bytes)
    }

    func handleEOF() {
        guard state == .active, !isInputClosed else { return }
        isInputClosed = true
        if let handler {
            handler.connectionDidReadEOF(self)
        } else {
            close(afterFlush: true, reason: .peerClosed)
        }
    }

    func handleError(errno code: Int32, call: String) {
        switch code {
        case ECONNRESET, EPIPE: close(reason: .reset)
        default: close(reason: .error(.system(call: call, errno: code)))
        }
    }

    /// The kernel took `byteCount` queued bytes.
    func handleWritten(_ byteCount: Int) {
        outbound.consume(byteCount, pool: reactor.chunkPool)
        if !isWritable && outbound.count <= options.lowWatermark {
            isWritable = true
            handler?.connection(self, writabilityChanged: true)
        }
        if state == .active && outbound.isEmpty { outputDrained() }
    }

    /// Applies a pending half-close or graceful close once everything is written.
    func outputDrained() {
        if let reason = closeWhenFlushed {
            closeWhenFlushed = nil
            close(reason: reason)
        } else if shutdownOutputWhenFlushed && !isOutputShutdown {
            finishOutputShutdown()
        }
    }

    private func finishOutputShutdown() {
        shutdownOutputWhenFlushed = false
        isOutputShutdown = true
        _ = Glibc.shutdown(fd, P2PQ_SHUT_WR)
    }

    /// True when a half-close or graceful close waits for the queue to drain.
    var hasPendingOutputAction: Bool { shutdownOutputWhenFlushed || closeWhenFlushed != nil }
}

/// Bookkeeping the backends keep on each connection.
struct ConnectionIOState {
    // epoll
    var registered = false
    /// The socket buffer was full; wait for EPOLLOUT before writing again.
    var waitingForWritable = false
    /// Queued to read next turn (budget exhausted, or reads resumed) without waiting for an edge.
    var readPending = false
    // io_uring
    var recvArmed = false
    var sendInFlight = false
    var operationsInFlight = 0
    var cancelSubmitted = false
    /// Bytes that completed while reads were being paused, delivered on resume.
    var stashedReads: [UInt8] = []
    var stashedEOF = false
    var stashedError: Int32 = 0
    /// Stable memory for the in-flight sendmsg (iovecs plus msghdr).
    var sendMessage: UnsafeMutableRawPointer?
    var connectAddress: UnsafeMutablePointer<sockaddr_storage>?
}
