#if P2PQ_IO_URING
import CP2PQLiburing
import CP2PQSystem
import Glibc

/// The completion backend: io_uring with multishot accept, multishot receive into a ring of
/// provided buffers, and sends batched into one submission per loop turn.
///
/// Every operation's user_data is the channel's token plus an operation code in the low byte.
/// A channel's descriptor is closed, and its memory freed, only after the kernel has posted the
/// final completion of every operation on it: closing cancels them first.
final class URingBackend: ReactorBackend {
    private enum Op: UInt64 {
        case recv = 1, send, accept, connect, cancel, poll, pollOut, wake
    }

    private unowned let reactor: Reactor
    private let ring: UnsafeMutablePointer<io_uring>
    private let eventFD: Int32
    private let wakeBuffer: UnsafeMutablePointer<UInt64>
    private let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let cqeBatch = 256

    // Provided receive buffers.
    private let bufferRing: UnsafeMutablePointer<io_uring_buf_ring>
    private let buffers: UnsafeMutableRawPointer
    private let bufferSize: Int
    private let bufferCount: Int
    private let bufferMask: Int32
    private let bufferGroup: UInt16 = 0
    /// Buffers handed back since the ring's tail was last published.
    private var buffersReturned: Int32 = 0

    /// Connections whose receive ended for lack of buffers: re-armed once buffers return.
    private var rearmQueue: [TCPConnection] = []
    /// Sends that failed during this batch of completions, reported after it.
    private var sendFailures: [(TCPConnection, Int32)] = []
    /// Connections that resumed reading and have stashed input or no receive armed.
    private var resumeQueue: [TCPConnection] = []
    /// Channels closed but with operations still in flight, by token.
    private var closing: [UInt64: RegisteredChannel] = [:]
    private var wakeArmed = false
    private static let iovecsPerSend = 64

    /// Whether the kernel accepted SINGLE_ISSUER | DEFER_TASKRUN.
    let deferTaskrun: Bool

    init(reactor: Reactor) throws(ReactorError) {
        self.reactor = reactor
        let configuration = reactor.configuration
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        var params = io_uring_params()
        // Multishot operations can post many completions per submission: size the CQ generously.
        params.cq_entries = configuration.ringEntries * 4
        params.flags = P2PQ_SETUP_CQSIZE | P2PQ_SETUP_SUBMIT_ALL | P2PQ_SETUP_SINGLE_ISSUER | P2PQ_SETUP_DEFER_TASKRUN
        var rc = io_uring_queue_init_params(configuration.ringEntries, ring, &params)
        var deferred = true
        if rc == -EINVAL {
            // Older kernels: cooperative task running, which still avoids IPIs.
            deferred = false
            params = io_uring_params()
            params.cq_entries = configuration.ringEntries * 4
            params.flags = P2PQ_SETUP_CQSIZE | P2PQ_SETUP_COOP_TASKRUN
            rc = io_uring_queue_init_params(configuration.ringEntries, ring, &params)
        }
        guard rc == 0 else {
            ring.deallocate()
            throw .backendUnavailable(.ioUring, reason: "io_uring_queue_init failed: \(String(cString: strerror(-rc)))")
        }
        deferTaskrun = deferred

        var count = 8
        while count < configuration.receiveBufferCount { count <<= 1 }
        bufferCount = min(count, 32768)
        bufferSize = max(4096, configuration.receiveBufferSize)
        bufferMask = io_uring_buf_ring_mask(UInt32(bufferCount))
        var err: Int32 = 0
        guard let br = p2pq_setup_buf_ring(ring, UInt32(bufferCount), bufferGroup, &err) else {
            io_uring_queue_exit(ring)
            ring.deallocate()
            throw .backendUnavailable(.ioUring, reason: "provided buffer ring refused: \(String(cString: strerror(-err)))")
        }
        bufferRing = br
        buffers = .allocate(byteCount: bufferCount * bufferSize, alignment: 4096)
        for i in 0..<bufferCount {
            io_uring_buf_ring_add(bufferRing, buffers + i * bufferSize, UInt32(bufferSize), UInt16(i), bufferMask, Int32(i))
        }
        io_uring_buf_ring_advance(bufferRing, Int32(bufferCount))

        eventFD = p2pq_eventfd()
        guard eventFD >= 0 else {
            let error = ReactorError.lastError("eventfd")
            p2pq_free_buf_ring(ring, bufferRing, UInt32(bufferCount), bufferGroup)
            io_uring_queue_exit(ring)
            ring.deallocate()
            buffers.deallocate()
            throw error
        }
        wakeBuffer = .allocate(capacity: 1)
        cqes = .allocate(capacity: cqeBatch)
        armWake()
    }

    var hasPendingWork: Bool { !resumeQueue.isEmpty }

    func wakeup() {
        _ = p2pq_eventfd_signal(eventFD)
    }

    // MARK: Submission helpers

    @inline(__always)
    private func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(ring) { return sqe }
        // The submission queue is full: hand what is queued to the kernel and take a fresh one.
        _ = io_uring_submit(ring)
        return io_uring_get_sqe(ring)!
    }

    @inline(__always)
    private func userData(_ token: UInt64, _ op: Op) -> UInt64 { token | op.rawValue }

    private func armWake() {
        let entry = sqe()
        io_uring_prep_read(entry, eventFD, wakeBuffer, 8, 0)
        io_uring_sqe_set_data64(entry, Op.wake.rawValue)
        wakeArmed = true
    }

    // MARK: The wait

    func poll(timeoutNanoseconds: Int64?) -> Bool {
        let resumed = !resumeQueue.isEmpty
        if resumed { runResumed() }
        let timeout = resumeQueue.isEmpty ? timeoutNanoseconds : 0
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        // One enter per turn: submits everything prepared since the last turn (sends of every
        // connection included) and waits. With DEFER_TASKRUN completions are only produced
        // inside this call (GETEVENTS), so the loop never merely peeks.
        if let timeout {
            var ts = __kernel_timespec(tv_sec: timeout / 1_000_000_000, tv_nsec: timeout % 1_000_000_000)
            _ = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
        } else {
            _ = io_uring_submit_and_wait(ring, 1)
        }
        reactor.waitEnded()
        return drainCompletions() || resumed
    }

    /// Returns false when no completion was ready.
    @discardableResult
    private func drainCompletions() -> Bool {
        var any = false
        while true {
            let n = Int(io_uring_peek_batch_cqe(ring, cqes, UInt32(cqeBatch)))
            if n == 0 { break }
            any = true
            for i in 0..<n { complete(cqes[i]!.pointee) }
            io_uring_cq_advance(ring, UInt32(n))
            publishBuffers()
            if n < cqeBatch { break }
        }
        publishBuffers()
        if !sendFailures.isEmpty { reportSendFailures() }
        if !rearmQueue.isEmpty {
            let queue = rearmQueue
            rearmQueue.removeAll(keepingCapacity: true)
            for connection in queue { armRecvIfNeeded(connection) }
        }
        return any
    }

    @inline(__always)
    private func publishBuffers() {
        if buffersReturned > 0 {
            io_uring_buf_ring_advance(bufferRing, buffersReturned)
            buffersReturned = 0
        }
    }

    @inline(__always)
    private func returnBuffer(_ id: Int) {
        io_uring_buf_ring_add(bufferRing, buffers + id * bufferSize, UInt32(bufferSize), UInt16(id), bufferMask, buffersReturned)
        buffersReturned += 1
    }

    private func complete(_ cqe: io_uring_cqe) {
        let data = cqe.user_data
        let res = cqe.res
        let flags = cqe.flags
        guard let op = Op(rawValue: data & 0xFF) else { return }
        if op == .wake {
            wakeArmed = false
            armWake()
            return
        }
        let token = data & ~0xFF
        let more = flags & P2PQ_CQE_F_MORE != 0
        guard let channel = reactor.channel(for: token) else {
            // The channel is gone: give back what the completion carries.
            if flags & P2PQ_CQE_F_BUFFER != 0 { returnBuffer(Int(flags >> P2PQ_CQE_BUFFER_SHIFT)) }
            if op == .accept && res >= 0 { Glibc.close(res) }
            return
        }
        switch channel {
        case .connection(let connection):
            switch op {
            case .recv: recvCompleted(connection, res: res, flags: flags, more: more)
            case .send: sendCompleted(connection, res: res)
            case .connect:
                connection.io.operationsInFlight -= 1
                connection.io.connectAddress?.deallocate()
                connection.io.connectAddress = nil
                if connection.state == .connecting { connection.handleConnectResult(errno: -res) }
            case .cancel: connection.io.operationsInFlight -= 1
            default: break
            }
            if connection.state == .closed && connection.io.operationsInFlight == 0 { finalize(channel, token: token) }
        case .listener(let listener):
            if op == .accept {
                acceptCompleted(listener, res: res, more: more)
            } else if op == .cancel {
                listener.io.operationsInFlight -= 1
            }
            if listener.isClosed && listener.io.operationsInFlight == 0 { finalize(channel, token: token) }
        case .datagram(let socket):
            switch op {
            case .poll:
                if !more { socket.io.operationsInFlight -= 1; socket.io.pollArmed = false }
                if !socket.isClosed && res > 0 {
                    if UInt32(res) & (P2PQ_POLLIN | P2PQ_POLLERR) != 0 { socket.handleReadable() }
                }
                if !socket.isClosed && !socket.io.pollArmed { armDatagramPoll(socket) }
            case .pollOut:
                socket.io.operationsInFlight -= 1
                socket.io.pollOutArmed = false
                if !socket.isClosed { socket.handleWritable() }
            case .cancel: socket.io.operationsInFlight -= 1
            default: break
            }
            if socket.isClosed && socket.io.operationsInFlight == 0 { finalize(channel, token: token) }
        }
    }

    private func finalize(_ channel: RegisteredChannel, token: UInt64) {
        // Idempotent: a completion handler can close its channel (remove() finalizes at once
        // when nothing is in flight) and then reach the "closed and idle" check after it. A
        // second close(2) would hit a descriptor number the kernel may already have reused.
        guard reactor.channel(for: token) != nil else { return }
        closing[token] = nil
        switch channel {
        case .connection(let c):
            c.io.sendMessage?.deallocate()
            c.io.sendMessage = nil
            c.finalize()
        case .listener(let l): l.finalize()
        case .datagram(let u): u.finalize()
        }
    }

    // MARK: Receive

    private func armRecvIfNeeded(_ connection: TCPConnection) {
        guard connection.state == .active, !connection.io.recvArmed, !connection.isReadingPaused,
              !connection.isInputClosed, connection.io.stashedReads.isEmpty, !connection.io.stashedEOF else { return }
        let entry = sqe()
        p2pq_prep_recv_multishot(entry, connection.fd, bufferGroup)
        io_uring_sqe_set_data64(entry, userData(connection.token, .recv))
        connection.io.recvArmed = true
        connection.io.operationsInFlight += 1
    }

    private func recvCompleted(_ connection: TCPConnection, res: Int32, flags: UInt32, more: Bool) {
        if !more {
            connection.io.recvArmed = false
            connection.io.operationsInFlight -= 1
        }
        let hasBuffer = flags & P2PQ_CQE_F_BUFFER != 0
        let bufferID = Int(flags >> P2PQ_CQE_BUFFER_SHIFT)
        defer { if hasBuffer { returnBuffer(bufferID) } }
        guard connection.state == .active else { return }
        if res > 0 && hasBuffer {
            let bytes = UnsafeRawBufferPointer(start: buffers + bufferID * bufferSize, count: Int(res))
            if connection.isReadingPaused || !connection.io.stashedReads.isEmpty {
                // Completions that raced with the pause: keep them for resume, in order.
                connection.io.stashedReads.append(contentsOf: bytes)
            } else {
                connection.handleRead(bytes)
            }
        } else if res == 0 {
            if connection.isReadingPaused || !connection.io.stashedReads.isEmpty {
                connection.io.stashedEOF = true
            } else {
                connection.handleEOF()
            }
            return
        } else if res == -ENOBUFS {
            rearmQueue.append(connection)
            return
        } else if res == -ECANCELED {
            // A pause cancelled it; resume re-arms.
        } else if res < 0 {
            connection.handleError(errno: -res, call: "recv")
            return
        }
        if !more && connection.state == .active { armRecvIfNeeded(connection) }
    }

    func readInterestChanged(_ connection: TCPConnection) {
        if connection.isReadingPaused {
            guard connection.io.recvArmed else { return }
            let entry = sqe()
            io_uring_prep_cancel64(entry, userData(connection.token, .recv), 0)
            io_uring_sqe_set_data64(entry, userData(connection.token, .cancel))
            connection.io.operationsInFlight += 1
        } else {
            resumeQueue.append(connection)
        }
    }

    private func runResumed() {
        let queue = resumeQueue
        resumeQueue.removeAll(keepingCapacity: true)
        for connection in queue where connection.state == .active && !connection.isReadingPaused {
            if !connection.io.stashedReads.isEmpty {
                let stash = connection.io.stashedReads
                connection.io.stashedReads = []
                stash.withUnsafeBytes { connection.handleRead($0) }
            }
            guard connection.state == .active, !connection.isReadingPaused else { continue }
            if connection.io.stashedEOF {
                connection.io.stashedEOF = false
                connection.handleEOF()
                continue
            }
            armRecvIfNeeded(connection)
        }
    }

    // MARK: Send

    func flush(_ connection: TCPConnection) {
        guard !connection.io.sendInFlight else { return }
        let memory: UnsafeMutableRawPointer
        if let existing = connection.io.sendMessage {
            memory = existing
        } else {
            memory = .allocate(byteCount: MemoryLayout<msghdr>.stride + Self.iovecsPerSend * MemoryLayout<iovec>.stride,
                               alignment: 16)
            connection.io.sendMessage = memory
        }
        let message = memory.assumingMemoryBound(to: msghdr.self)
        let iovecs = (memory + MemoryLayout<msghdr>.stride).assumingMemoryBound(to: iovec.self)
        let count = connection.outbound.fillIOVecs(iovecs, max: Self.iovecsPerSend)
        guard count > 0 else {
            connection.outputDrained()
            return
        }
        message.initialize(to: msghdr())
        message.pointee.msg_iov = iovecs
        message.pointee.msg_iovlen = count
        let entry = sqe()
        io_uring_prep_sendmsg(entry, connection.fd, message, UInt32(P2PQ_MSG_NOSIGNAL))
        io_uring_sqe_set_data64(entry, userData(connection.token, .send))
        connection.io.sendInFlight = true
        connection.io.operationsInFlight += 1
    }

    func submitNow() {
        _ = io_uring_submit(ring)
    }

    private func sendCompleted(_ connection: TCPConnection, res: Int32) {
        connection.io.sendInFlight = false
        connection.io.operationsInFlight -= 1
        guard connection.state == .active else { return }
        if res > 0 {
            connection.handleWritten(Int(res))
            if connection.state == .active && (!connection.outbound.isEmpty || connection.hasPendingOutputAction) {
                reactor.enqueueFlush(connection)
            }
        } else if res == -EAGAIN || res == -EINTR || res == 0 {
            reactor.enqueueFlush(connection)
        } else {
            // Reported after this batch of completions, once the peer's last bytes (a goodbye
            // sent just before its reset) have been delivered: see `reportSendFailures`.
            sendFailures.append((connection, -res))
        }
    }

    /// A send failed (typically the peer reset the connection): first deliver what the socket
    /// still holds, which the multishot recv may not have picked up yet (its completion can
    /// come after the send's), then report the error.
    private func reportSendFailures() {
        let failures = sendFailures
        sendFailures.removeAll(keepingCapacity: true)
        for (connection, code) in failures where connection.state == .active {
            if !connection.isReadingPaused && connection.io.stashedReads.isEmpty && !connection.isInputClosed {
                drainSocket(connection)
                guard connection.state == .active else { continue }
            }
            connection.handleError(errno: code, call: "sendmsg")
        }
    }

    /// Reads the socket directly until it is empty, closed or failing (the connection is
    /// about to close, so a recv still armed on it no longer matters).
    private func drainSocket(_ connection: TCPConnection) {
        var scratch = [UInt8](repeating: 0, count: 64 * 1024)
        while connection.state == .active && !connection.isReadingPaused {
            let n = scratch.withUnsafeMutableBytes { Glibc.read(connection.fd, $0.baseAddress, $0.count) }
            if n > 0 {
                scratch.withUnsafeBytes { connection.handleRead(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            } else if n == 0 {
                connection.handleEOF()
                return
            } else {
                let code = errno
                if code == EINTR { continue }
                if code != EAGAIN && code != EWOULDBLOCK { connection.handleError(errno: code, call: "read") }
                return
            }
        }
    }

    // MARK: Connections and listeners

    func addConnection(_ connection: TCPConnection) {
        armRecvIfNeeded(connection)
    }

    func startConnect(_ connection: TCPConnection, to address: SocketAddress) {
        let storage = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: 1)
        storage.initialize(to: address.storage)
        connection.io.connectAddress = storage
        let entry = sqe()
        storage.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            io_uring_prep_connect(entry, connection.fd, $0, address.length)
        }
        io_uring_sqe_set_data64(entry, userData(connection.token, .connect))
        connection.io.operationsInFlight += 1
    }

    func addListener(_ listener: TCPListener) throws(ReactorError) {
        armAccept(listener)
    }

    private func armAccept(_ listener: TCPListener) {
        guard !listener.isClosed, !listener.io.acceptArmed else { return }
        let entry = sqe()
        io_uring_prep_multishot_accept(entry, listener.fd, nil, nil, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue))
        io_uring_sqe_set_data64(entry, userData(listener.token, .accept))
        listener.io.acceptArmed = true
        listener.io.operationsInFlight += 1
    }

    private func acceptCompleted(_ listener: TCPListener, res: Int32, more: Bool) {
        if !more {
            listener.io.acceptArmed = false
            listener.io.operationsInFlight -= 1
        }
        if res >= 0 {
            if listener.isClosed { Glibc.close(res) } else { listener.handleAccepted(fd: res, address: nil) }
        }
        guard !listener.isClosed, !more, !listener.io.acceptArmed else { return }
        if res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM {
            // Out of descriptors: retry shortly rather than spin.
            listener.io.retryTimer = reactor.schedule(after: .milliseconds(100)) { [weak self, weak listener] in
                guard let self, let listener else { return }
                listener.io.retryTimer = nil
                self.armAccept(listener)
            }
        } else {
            armAccept(listener)
        }
    }

    // MARK: UDP

    func addDatagramSocket(_ socket: UDPSocket) throws(ReactorError) {
        armDatagramPoll(socket)
    }

    private func armDatagramPoll(_ socket: UDPSocket) {
        // UDP carries discovery traffic only; readiness plus recvmmsg batches well enough.
        let entry = sqe()
        io_uring_prep_poll_multishot(entry, socket.fd, P2PQ_POLLIN)
        io_uring_sqe_set_data64(entry, userData(socket.token, .poll))
        socket.io.pollArmed = true
        socket.io.operationsInFlight += 1
    }

    func datagramWriteInterestChanged(_ socket: UDPSocket) {
        guard socket.wantsWritable, !socket.io.pollOutArmed, !socket.isClosed else { return }
        let entry = sqe()
        io_uring_prep_poll_add(entry, socket.fd, P2PQ_POLLOUT)
        io_uring_sqe_set_data64(entry, userData(socket.token, .pollOut))
        socket.io.pollOutArmed = true
        socket.io.operationsInFlight += 1
    }

    // MARK: Removal and shutdown

    func remove(_ channel: RegisteredChannel) {
        let (fd, token, inFlight): (Int32, UInt64, Int)
        switch channel {
        case .connection(let c): (fd, token, inFlight) = (c.fd, c.token, c.io.operationsInFlight)
        case .listener(let l):
            if let timer = l.io.retryTimer { reactor.cancel(timer) }
            (fd, token, inFlight) = (l.fd, l.token, l.io.operationsInFlight)
        case .datagram(let u): (fd, token, inFlight) = (u.fd, u.token, u.io.operationsInFlight)
        }
        guard inFlight > 0 else {
            finalize(channel, token: token)
            return
        }
        closing[token] = channel
        let entry = sqe()
        io_uring_prep_cancel_fd(entry, fd, P2PQ_ASYNC_CANCEL_ALL)
        io_uring_sqe_set_data64(entry, userData(token, .cancel))
        switch channel {
        case .connection(let c): c.io.operationsInFlight += 1
        case .listener(let l): l.io.operationsInFlight += 1
        case .datagram(let u): u.io.operationsInFlight += 1
        }
    }

    func shutdown() {
        // Let cancellations complete so no kernel operation still points at memory we free.
        let deadline = MonotonicTime.now() + .seconds(2)
        while !closing.isEmpty && MonotonicTime.now() < deadline {
            var ts = __kernel_timespec(tv_sec: 0, tv_nsec: 10_000_000)
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            _ = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
            drainCompletions()
        }
        // queue_exit waits for whatever is left, after which the memory is unreferenced.
        p2pq_free_buf_ring(ring, bufferRing, UInt32(bufferCount), bufferGroup)
        io_uring_queue_exit(ring)
        for (token, channel) in closing { finalize(channel, token: token) }
        closing.removeAll()
        ring.deallocate()
        buffers.deallocate()
        Glibc.close(eventFD)
        wakeBuffer.deallocate()
        cqes.deallocate()
    }
}
#endif
