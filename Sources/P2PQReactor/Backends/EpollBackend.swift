import CP2PQSystem
import Glibc

/// The readiness backend: edge-triggered epoll, an eventfd for wake-ups, and the next timer's
/// deadline as the wait's timeout (nanosecond precision through epoll_pwait2).
///
/// Connections are registered once for input, output and peer half-close, edge-triggered, so
/// the loop never calls epoll_ctl to toggle write interest: a write that hits EAGAIN waits for
/// the next EPOLLOUT edge. Reads go into one buffer shared by all connections and are handed
/// to the handler in place.
final class EpollBackend: ReactorBackend {
    private unowned let reactor: Reactor
    private let epfd: Int32
    private let eventFD: Int32
    private let events: UnsafeMutablePointer<p2pq_epoll_event>
    private let eventCapacity = 256
    private let readBuffer: UnsafeMutableRawBufferPointer
    private let iovecs: UnsafeMutablePointer<iovec>
    private let iovecCapacity = 64
    /// Connections whose reads stopped on the per-turn budget, or that resumed reading.
    private var pendingReads: [TCPConnection] = []
    private var pendingReadsSpare: [TCPConnection] = []
    /// Full read buffers per connection per turn, so one busy peer cannot starve the others.
    private let readBudget = 4
    private static let wakeToken: UInt64 = 1

    init(reactor: Reactor) throws(ReactorError) {
        self.reactor = reactor
        epfd = p2pq_epoll_create()
        guard epfd >= 0 else { throw .lastError("epoll_create1") }
        eventFD = p2pq_eventfd()
        guard eventFD >= 0 else {
            let error = ReactorError.lastError("eventfd")
            Glibc.close(epfd)
            throw error
        }
        guard p2pq_epoll_ctl(epfd, EPOLL_CTL_ADD, eventFD, P2PQ_EPOLLIN, Self.wakeToken) == 0 else {
            let error = ReactorError.lastError("epoll_ctl")
            Glibc.close(epfd)
            Glibc.close(eventFD)
            throw error
        }
        events = .allocate(capacity: eventCapacity)
        readBuffer = .allocate(byteCount: max(4096, reactor.configuration.readBufferSize), alignment: 64)
        iovecs = .allocate(capacity: iovecCapacity)
    }

    var hasPendingWork: Bool { !pendingReads.isEmpty }

    func wakeup() {
        _ = p2pq_eventfd_signal(eventFD)
    }

    func shutdown() {
        Glibc.close(epfd)
        Glibc.close(eventFD)
        events.deallocate()
        readBuffer.deallocate()
        iovecs.deallocate()
        pendingReads.removeAll()
    }

    func poll(timeoutNanoseconds: Int64?) -> Bool {
        let hadPendingReads = !pendingReads.isEmpty
        let timeout = hadPendingReads ? 0 : (timeoutNanoseconds ?? -1)
        let n = p2pq_epoll_wait(epfd, events, Int32(eventCapacity), timeout)
        reactor.waitEnded()
        if n > 0 {
            for i in 0..<Int(n) {
                dispatch(events[i])
            }
        }
        if !pendingReads.isEmpty { runPendingReads() }
        return n > 0 || hadPendingReads
    }

    private func dispatch(_ event: p2pq_epoll_event) {
        if event.data == Self.wakeToken {
            _ = p2pq_eventfd_drain(eventFD)
            return
        }
        guard let channel = reactor.channel(for: event.data) else { return }
        switch channel {
        case .connection(let connection): connectionEvent(connection, event.events)
        case .listener(let listener): acceptBatch(listener)
        case .datagram(let socket):
            if event.events & (P2PQ_EPOLLIN | P2PQ_EPOLLERR) != 0 { socket.handleReadable() }
            if event.events & P2PQ_EPOLLOUT != 0, !socket.isClosed { socket.handleWritable() }
        }
    }

    // MARK: TCP connections

    private func connectionEvent(_ connection: TCPConnection, _ bits: UInt32) {
        if connection.state == .connecting {
            guard bits & (P2PQ_EPOLLOUT | P2PQ_EPOLLERR | P2PQ_EPOLLHUP) != 0 else { return }
            var code: Int32 = 0
            if p2pq_getsockopt_int(connection.fd, SOL_SOCKET, SO_ERROR, &code) != 0 { code = errno }
            connection.handleConnectResult(errno: code)
            guard connection.state == .active else { return }
        }
        // While paused the edge is simply dropped: resuming always tries a read.
        if bits & (P2PQ_EPOLLIN | P2PQ_EPOLLRDHUP | P2PQ_EPOLLHUP | P2PQ_EPOLLERR) != 0 && !connection.isReadingPaused {
            // After a half-close or hang-up no further edge comes: read until EOF, not just
            // until a short read.
            read(connection, untilEOF: bits & (P2PQ_EPOLLRDHUP | P2PQ_EPOLLHUP | P2PQ_EPOLLERR) != 0)
        }
        guard connection.state == .active else { return }
        if bits & P2PQ_EPOLLOUT != 0 && connection.io.waitingForWritable {
            connection.io.waitingForWritable = false
            flush(connection)
        }
    }

    private func read(_ connection: TCPConnection, untilEOF: Bool = false) {
        var budget = readBudget
        let base = readBuffer.baseAddress!
        let size = readBuffer.count
        while true {
            let n = Glibc.read(connection.fd, base, size)
            if n > 0 {
                connection.handleRead(UnsafeRawBufferPointer(start: base, count: n))
                guard connection.state == .active, !connection.isReadingPaused else { return }
                // A short read drained the socket: the next arrival raises a new edge (unless
                // the peer already hung up, when EOF is still to be read).
                if n < size && !untilEOF { return }
                budget -= 1
                if budget == 0 {
                    scheduleRead(connection)
                    return
                }
            } else if n == 0 {
                connection.handleEOF()
                return
            } else {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK { return }
                connection.handleError(errno: code, call: "read")
                return
            }
        }
    }

    /// Reads `connection` again next turn, without waiting for an edge.
    private func scheduleRead(_ connection: TCPConnection) {
        guard !connection.io.readPending else { return }
        connection.io.readPending = true
        pendingReads.append(connection)
    }

    private func runPendingReads() {
        swap(&pendingReads, &pendingReadsSpare)
        for connection in pendingReadsSpare {
            connection.io.readPending = false
            if connection.state == .active && !connection.isReadingPaused && !connection.isInputClosed {
                // Read until EAGAIN or EOF: whatever edge brought us here has been consumed.
                read(connection, untilEOF: true)
            }
        }
        pendingReadsSpare.removeAll(keepingCapacity: true)
    }

    func addConnection(_ connection: TCPConnection) {
        guard !connection.io.registered else { return }
        connection.io.registered = true
        let interest = P2PQ_EPOLLIN | P2PQ_EPOLLOUT | P2PQ_EPOLLRDHUP | P2PQ_EPOLLET
        if p2pq_epoll_ctl(epfd, EPOLL_CTL_ADD, connection.fd, interest, connection.token) != 0 {
            connection.handleError(errno: errno, call: "epoll_ctl")
        }
    }

    func startConnect(_ connection: TCPConnection, to address: SocketAddress) {
        let rc = address.withSockAddr { Glibc.connect(connection.fd, $0, $1) }
        let code = rc == 0 ? 0 : errno
        if code == 0 || code == EINPROGRESS {
            // EPOLLOUT (or EPOLLERR) reports the outcome; an already connected socket reports
            // it at once, since adding a ready descriptor raises an edge.
            addConnection(connection)
        } else {
            // Report on the next turn: callers never hear about a connect before it returns.
            reactor.schedule(after: .zero) { [weak connection] in
                connection?.handleConnectResult(errno: code)
            }
        }
    }

    func readInterestChanged(_ connection: TCPConnection) {
        // Edge-triggered: nothing to re-arm. On resume, data (or EOF) may already wait with no
        // new edge coming, so try a read next turn.
        if !connection.isReadingPaused { scheduleRead(connection) }
    }

    func submitNow() {}  // flush wrote already

    func flush(_ connection: TCPConnection) {
        guard !connection.io.waitingForWritable else { return }
        while connection.state == .active {
            let count = connection.outbound.fillIOVecs(iovecs, max: iovecCapacity)
            if count == 0 {
                connection.outputDrained()
                return
            }
            var total = 0
            for i in 0..<count { total += iovecs[i].iov_len }
            var message = msghdr()
            message.msg_iov = iovecs
            message.msg_iovlen = count
            // sendmsg, not writev: MSG_NOSIGNAL keeps a dead peer from raising SIGPIPE.
            let n = sendmsg(connection.fd, &message, P2PQ_MSG_NOSIGNAL)
            if n > 0 {
                connection.handleWritten(n)
                if n < total {
                    connection.io.waitingForWritable = true
                    return
                }
            } else {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    connection.io.waitingForWritable = true
                    return
                }
                // The peer may have sent its last bytes (a goodbye) before resetting: deliver
                // what the socket still holds before reporting the reset.
                if !connection.isReadingPaused && !connection.isInputClosed {
                    read(connection, untilEOF: true)
                    guard connection.state == .active else { return }
                }
                connection.handleError(errno: code, call: "sendmsg")
                return
            }
        }
    }

    // MARK: Listeners

    func addListener(_ listener: TCPListener) throws(ReactorError) {
        // Level-triggered: a batch cut short by the budget is picked up next turn.
        guard p2pq_epoll_ctl(epfd, EPOLL_CTL_ADD, listener.fd, P2PQ_EPOLLIN, listener.token) == 0 else {
            throw .lastError("epoll_ctl")
        }
    }

    private func acceptBatch(_ listener: TCPListener) {
        var storage = sockaddr_storage()
        for _ in 0..<64 {
            guard !listener.isClosed else { return }
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p2pq_accept(listener.fd, $0, &length) }
            }
            if fd >= 0 {
                listener.handleAccepted(fd: fd, address: SocketAddress(storage: storage, length: length))
                continue
            }
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK { return }
            if code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM {
                // Out of descriptors: level-triggered epoll would spin, so stop watching the
                // listener for a moment.
                _ = p2pq_epoll_ctl(epfd, EPOLL_CTL_DEL, listener.fd, 0, 0)
                listener.io.retryTimer = reactor.schedule(after: .milliseconds(100)) { [weak self, weak listener] in
                    guard let self, let listener, !listener.isClosed else { return }
                    listener.io.retryTimer = nil
                    _ = p2pq_epoll_ctl(self.epfd, EPOLL_CTL_ADD, listener.fd, P2PQ_EPOLLIN, listener.token)
                }
                return
            }
            if !listener.handleAcceptError(errno: code) { return }
        }
    }

    // MARK: UDP

    func addDatagramSocket(_ socket: UDPSocket) throws(ReactorError) {
        guard p2pq_epoll_ctl(epfd, EPOLL_CTL_ADD, socket.fd, P2PQ_EPOLLIN, socket.token) == 0 else {
            throw .lastError("epoll_ctl")
        }
    }

    func datagramWriteInterestChanged(_ socket: UDPSocket) {
        let interest = P2PQ_EPOLLIN | (socket.wantsWritable ? P2PQ_EPOLLOUT : 0)
        _ = p2pq_epoll_ctl(epfd, EPOLL_CTL_MOD, socket.fd, interest, socket.token)
    }

    // MARK: Removal

    func remove(_ channel: RegisteredChannel) {
        // Closing the descriptor removes it from the epoll set; events already fetched in this
        // batch carry a token whose generation no longer matches.
        switch channel {
        case .connection(let connection): connection.finalize()
        case .listener(let listener):
            if let timer = listener.io.retryTimer { reactor.cancel(timer) }
            listener.finalize()
        case .datagram(let socket): socket.finalize()
        }
    }
}
