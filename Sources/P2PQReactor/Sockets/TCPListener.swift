import CP2PQSystem
import Glibc

/// A listening TCP socket. Use it only on its reactor's thread.
public final class TCPListener {
    public unowned let reactor: Reactor
    /// The bound address; with port 0 this carries the port the kernel picked.
    public let localAddress: SocketAddress
    public private(set) var isClosed = false
    public let connectionOptions: TCPOptions

    let fd: Int32
    var token: UInt64 = 0
    var io = ListenerIOState()
    private let onAccept: (TCPConnection) -> Void
    /// Accepted connections so far.
    public private(set) var acceptedCount = 0

    init(reactor: Reactor, fd: Int32, localAddress: SocketAddress, options: TCPOptions,
         onAccept: @escaping (TCPConnection) -> Void) {
        self.reactor = reactor
        self.fd = fd
        self.localAddress = localAddress
        self.connectionOptions = options
        self.onAccept = onAccept
    }

    /// Stops accepting and closes the socket. Connections already accepted stay open.
    public func close() {
        reactor.assertInReactorThread()
        guard !isClosed else { return }
        isClosed = true
        reactor.backend.remove(.listener(self))
    }

    func finalize() {
        Glibc.close(fd)
        reactor.release(token: token)
    }

    /// A new connection arrived on `fd`. The accept callback must set its handler; a
    /// connection left without one is closed.
    func handleAccepted(fd newFD: Int32, address: SocketAddress?) {
        guard !isClosed else {
            Glibc.close(newFD)
            return
        }
        let remote = address ?? peerAddress(of: newFD) ?? localAddress
        let connection = TCPConnection(reactor: reactor, fd: newFD, remoteAddress: remote,
                                       state: .active, options: connectionOptions)
        connection.token = reactor.register(.connection(connection))
        acceptedCount += 1
        onAccept(connection)
        guard connection.state == .active else { return }
        guard connection.handler != nil else {
            connection.close()
            return
        }
        reactor.backend.addConnection(connection)
        connection.handler?.connectionDidBecomeActive(connection)
    }

    /// Accept failed. Running out of descriptors is survivable: the backend retries later.
    func handleAcceptError(errno code: Int32) -> Bool {
        switch code {
        case EAGAIN, EINTR, ECONNABORTED, EPROTO, EPERM: return true
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: return true
        default: return false
        }
    }
}

func peerAddress(of fd: Int32) -> SocketAddress? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
    }
    return rc == 0 ? SocketAddress(storage: storage, length: length) : nil
}

func boundAddress(of fd: Int32) -> SocketAddress? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return rc == 0 ? SocketAddress(storage: storage, length: length) : nil
}

struct ListenerIOState {
    var acceptArmed = false
    var operationsInFlight = 0
    /// epoll: accepting paused after EMFILE until this timer fires.
    var retryTimer: TimerID?
}

extension Reactor {
    /// Listens on `address` (port 0 picks a free port; see `localAddress`). Each accepted
    /// connection is passed to `onAccept`, which must set its handler. Loop thread only.
    public func listen(
        on address: SocketAddress,
        backlog: Int32 = 1024,
        reuseAddress: Bool = true,
        options: TCPOptions = TCPOptions(),
        onAccept: @escaping (TCPConnection) -> Void
    ) throws(ReactorError) -> TCPListener {
        assertInReactorThread()
        guard !isShuttingDown else { throw .reactorStopped }
        let fd = p2pq_socket(address.family, P2PQ_SOCK_STREAM, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        if reuseAddress { _ = p2pq_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1) }
        let rc = address.withSockAddr { bind(fd, $0, $1) }
        if rc != 0 {
            let code = errno
            Glibc.close(fd)
            if code == EADDRINUSE { throw .addressInUse(address) }
            throw .system(call: "bind", errno: code)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let error = ReactorError.lastError("listen")
            Glibc.close(fd)
            throw error
        }
        let listener = TCPListener(reactor: self, fd: fd, localAddress: boundAddress(of: fd) ?? address,
                                   options: options, onAccept: onAccept)
        listener.token = register(.listener(listener))
        do {
            try backend.addListener(listener)
        } catch {
            release(token: listener.token)
            Glibc.close(fd)
            throw error
        }
        return listener
    }

    /// Connects to `address`. The handler hears `connectionDidBecomeActive`, or a close with
    /// `.connectFailed(.connectionRefused)` / `.connectFailed(.connectTimedOut)`; never before
    /// this call returns. Loop thread only.
    public func connect(
        to address: SocketAddress,
        timeout: Duration = .seconds(10),
        options: TCPOptions = TCPOptions(),
        handler: any TCPConnectionHandler
    ) throws(ReactorError) -> TCPConnection {
        assertInReactorThread()
        guard !isShuttingDown else { throw .reactorStopped }
        let fd = p2pq_socket(address.family, P2PQ_SOCK_STREAM, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        let connection = TCPConnection(reactor: self, fd: fd, remoteAddress: address,
                                       state: .connecting, options: options)
        connection.handler = handler
        connection.token = register(.connection(connection))
        connection.connectTimer = schedule(after: timeout) { [unowned connection] in
            connection.connectTimer = nil
            connection.handleConnectResult(errno: ETIMEDOUT)
        }
        backend.startConnect(connection, to: address)
        return connection
    }
}
