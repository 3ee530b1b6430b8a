import CP2PQSystem
import DequeModule
import Glibc

/// A UDP socket owned by a reactor. Use it only on that reactor's thread.
///
/// Receives in batches with `recvmmsg`; sends are queued and leave at the end of the loop turn
/// in one `sendmmsg`. The send queue is bounded: `send` returns false when it is full.
public final class UDPSocket {
    public unowned let reactor: Reactor
    public let localAddress: SocketAddress
    public private(set) var isClosed = false
    /// Datagrams larger than this are dropped on receipt (counted in `truncatedCount`).
    public let maxDatagramSize: Int
    /// The most datagrams waiting to be sent.
    public let sendQueueLimit: Int
    public private(set) var truncatedCount = 0
    public private(set) var receivedCount = 0

    let fd: Int32
    var token: UInt64 = 0
    var io = DatagramIOState()
    private let onReceive: (UnsafeRawBufferPointer, SocketAddress) -> Void
    private var sendQueue: Deque<(bytes: [UInt8], to: SocketAddress)> = []
    var inFlushQueue = false
    var wantsWritable = false

    init(reactor: Reactor, fd: Int32, localAddress: SocketAddress, maxDatagramSize: Int, sendQueueLimit: Int,
         onReceive: @escaping (UnsafeRawBufferPointer, SocketAddress) -> Void) {
        self.reactor = reactor
        self.fd = fd
        self.localAddress = localAddress
        self.maxDatagramSize = maxDatagramSize
        self.sendQueueLimit = sendQueueLimit
        self.onReceive = onReceive
    }

    /// Datagrams queued and not yet sent.
    public var queuedCount: Int { sendQueue.count }

    /// Queues a datagram for the end of this turn. False if the queue is full or closed.
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress) -> Bool {
        reactor.assertInReactorThread()
        guard !isClosed, sendQueue.count < sendQueueLimit else { return false }
        sendQueue.append((Array(bytes), address))
        if !inFlushQueue && !wantsWritable {
            inFlushQueue = true
            reactor.datagramFlushQueue.append(self)
        }
        return true
    }

    @discardableResult
    public func send(_ bytes: [UInt8], to address: SocketAddress) -> Bool {
        bytes.withUnsafeBytes { send($0, to: address) }
    }

    // MARK: Multicast

    /// Joins an IPv4 multicast group on the interface that owns `interfaceAddress`
    /// (127.0.0.1 for loopback), or an IPv6 group on interface `interfaceIndex`.
    public func joinMulticastGroup(_ group: String, interfaceAddress: String = "127.0.0.1", interfaceIndex: Int32 = 0) throws(ReactorError) {
        try membership(group, interfaceAddress: interfaceAddress, interfaceIndex: interfaceIndex, join: true)
    }

    public func leaveMulticastGroup(_ group: String, interfaceAddress: String = "127.0.0.1", interfaceIndex: Int32 = 0) throws(ReactorError) {
        try membership(group, interfaceAddress: interfaceAddress, interfaceIndex: interfaceIndex, join: false)
    }

    private func membership(_ group: String, interfaceAddress: String, interfaceIndex: Int32, join: Bool) throws(ReactorError) {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, group, &v4) == 1 {
            var interface = in_addr()
            guard inet_pton(AF_INET, interfaceAddress, &interface) == 1 else {
                throw .invalidAddress("interface address '\(interfaceAddress)'")
            }
            guard p2pq_join_multicast_v4(fd, v4, interface, interfaceIndex, join ? 1 : 0) == 0 else {
                throw .lastError(join ? "IP_ADD_MEMBERSHIP" : "IP_DROP_MEMBERSHIP")
            }
        } else if inet_pton(AF_INET6, group, &v6) == 1 {
            guard p2pq_join_multicast_v6(fd, &v6, interfaceIndex, join ? 1 : 0) == 0 else {
                throw .lastError(join ? "IPV6_ADD_MEMBERSHIP" : "IPV6_DROP_MEMBERSHIP")
            }
        } else {
            throw .invalidAddress("multicast group '\(group)'")
        }
    }

    /// Sends multicast through the interface that owns `address` (IPv4), never another.
    public func setMulticastInterface(_ address: String) throws(ReactorError) {
        var interface = in_addr()
        guard inet_pton(AF_INET, address, &interface) == 1 else { throw .invalidAddress("interface address '\(address)'") }
        let rc = setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &interface, socklen_t(MemoryLayout<in_addr>.size))
        guard rc == 0 else { throw .lastError("IP_MULTICAST_IF") }
    }

    /// Multicast hop limit (IPv4 TTL / IPv6 hops); 1 keeps packets on the link.
    public func setMulticastTTL(_ ttl: Int32) throws(ReactorError) {
        let rc = localAddress.family == AF_INET6
            ? p2pq_setsockopt_int(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_HOPS, ttl)
            : p2pq_setsockopt_int(fd, Int32(IPPROTO_IP), IP_MULTICAST_TTL, ttl)
        guard rc == 0 else { throw .lastError("IP_MULTICAST_TTL") }
    }

    /// Whether this host's own sockets receive what it multicasts.
    public func setMulticastLoopback(_ enabled: Bool) throws(ReactorError) {
        let rc = localAddress.family == AF_INET6
            ? p2pq_setsockopt_int(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_LOOP, enabled ? 1 : 0)
            : p2pq_setsockopt_int(fd, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, enabled ? 1 : 0)
        guard rc == 0 else { throw .lastError("IP_MULTICAST_LOOP") }
    }

    /// Closes the socket. Queued datagrams are dropped.
    public func close() {
        reactor.assertInReactorThread()
        guard !isClosed else { return }
        isClosed = true
        sendQueue.removeAll()
        reactor.backend.remove(.datagram(self))
    }

    func finalize() {
        Glibc.close(fd)
        reactor.release(token: token)
    }

    // MARK: I/O (called by backends)

    /// Reads every datagram waiting, in batches.
    func handleReadable() {
        let area = reactor.datagramArea(slotSize: maxDatagramSize)
        while !isClosed {
            area.reset()
            let n = p2pq_recvmmsg(fd, area.headers, UInt32(area.count))
            if n <= 0 { return }
            for i in 0..<Int(n) {
                let header = area.headers[i]
                // The shared receive slots can be larger than this socket's limit, so MSG_TRUNC
                // alone does not enforce it.
                if header.msg_hdr.msg_flags & P2PQ_MSG_TRUNC != 0 || Int(header.msg_len) > maxDatagramSize {
                    truncatedCount += 1
                    continue
                }
                receivedCount += 1
                let source = SocketAddress(storage: area.addresses[i], length: header.msg_hdr.msg_namelen)
                onReceive(UnsafeRawBufferPointer(start: area.buffer(i), count: Int(header.msg_len)), source)
                if isClosed { return }
            }
            if Int(n) < area.count { return }
        }
    }

    /// Sends queued datagrams in batches until the queue empties or the socket is full.
    func handleWritable() {
        flushQueue()
    }

    func flushQueue() {
        inFlushQueue = false
        let batch = 32
        var headers = [p2pq_mmsghdr](repeating: p2pq_mmsghdr(), count: batch)
        var iovecs = [iovec](repeating: iovec(), count: batch)
        while !isClosed && !sendQueue.isEmpty {
            let count = min(batch, sendQueue.count)
            // Pin each datagram's bytes and address for the one sendmmsg call.
            let sent: Int32 = withPinned(count: count, headers: &headers, iovecs: &iovecs)
            if sent < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS {
                    setWantsWritable(true)
                    return
                }
                // A datagram the network refuses (unreachable, too big): drop it, keep going.
                sendQueue.removeFirst()
                continue
            }
            sendQueue.removeFirst(Int(sent))
        }
        setWantsWritable(false)
    }

    private func withPinned(count: Int, headers: inout [p2pq_mmsghdr], iovecs: inout [iovec]) -> Int32 {
        var addresses = [sockaddr_storage](repeating: sockaddr_storage(), count: count)
        for i in 0..<count { addresses[i] = sendQueue[i].to.storage }
        return addresses.withUnsafeMutableBufferPointer { addrs in
            iovecs.withUnsafeMutableBufferPointer { iovs in
                headers.withUnsafeMutableBufferPointer { hdrs in
                    // The datagrams' arrays stay alive in sendQueue during the call.
                    for i in 0..<count {
                        let bytes = sendQueue[i].bytes
                        iovs[i] = bytes.withUnsafeBytes { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
                        hdrs[i] = p2pq_mmsghdr()
                        hdrs[i].msg_hdr.msg_name = UnsafeMutableRawPointer(addrs.baseAddress! + i)
                        hdrs[i].msg_hdr.msg_namelen = sendQueue[i].to.length
                        hdrs[i].msg_hdr.msg_iov = iovs.baseAddress! + i
                        hdrs[i].msg_hdr.msg_iovlen = 1
                    }
                    return p2pq_sendmmsg(fd, hdrs.baseAddress!, UInt32(count))
                }
            }
        }
    }

    private func setWantsWritable(_ wants: Bool) {
        guard wants != wantsWritable else { return }
        wantsWritable = wants
        reactor.backend.datagramWriteInterestChanged(self)
    }
}

struct DatagramIOState {
    var pollArmed = false
    var pollOutArmed = false
    var operationsInFlight = 0
}

/// Receive memory shared by every UDP socket of a reactor (one is read at a time).
final class DatagramArea {
    let count: Int
    let slotSize: Int
    let headers: UnsafeMutablePointer<p2pq_mmsghdr>
    let iovecs: UnsafeMutablePointer<iovec>
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    let storage: UnsafeMutableRawPointer

    init(count: Int, slotSize: Int) {
        self.count = count
        self.slotSize = slotSize
        headers = .allocate(capacity: count)
        iovecs = .allocate(capacity: count)
        addresses = .allocate(capacity: count)
        storage = .allocate(byteCount: count * slotSize, alignment: 64)
        for i in 0..<count {
            iovecs[i] = iovec(iov_base: storage + i * slotSize, iov_len: slotSize)
        }
        reset()
    }

    /// recvmmsg writes lengths and flags back into the headers; restore them before each call.
    func reset() {
        for i in 0..<count {
            headers[i] = p2pq_mmsghdr()
            headers[i].msg_hdr.msg_name = UnsafeMutableRawPointer(addresses + i)
            headers[i].msg_hdr.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            headers[i].msg_hdr.msg_iov = iovecs + i
            headers[i].msg_hdr.msg_iovlen = 1
        }
    }

    func buffer(_ i: Int) -> UnsafeRawPointer { UnsafeRawPointer(storage + i * slotSize) }

    deinit {
        headers.deallocate()
        iovecs.deallocate()
        addresses.deallocate()
        storage.deallocate()
    }
}

extension Reactor {
    /// Binds a UDP socket. `onReceive` gets each datagram and its source; the bytes are valid
    /// only during the call. Loop thread only.
    public func bindUDP(
        on address: SocketAddress,
        reuseAddress: Bool = false,
        reusePort: Bool = false,
        maxDatagramSize: Int = 9216,
        sendQueueLimit: Int = 1024,
        onReceive: @escaping (UnsafeRawBufferPointer, SocketAddress) -> Void
    ) throws(ReactorError) -> UDPSocket {
        assertInReactorThread()
        guard !isShuttingDown else { throw .reactorStopped }
        let fd = p2pq_socket(address.family, P2PQ_SOCK_DGRAM, 0)
        guard fd >= 0 else { throw .lastError("socket") }
        if reuseAddress { _ = p2pq_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1) }
        if reusePort { _ = p2pq_setsockopt_int(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
        let rc = address.withSockAddr { bind(fd, $0, $1) }
        if rc != 0 {
            let code = errno
            Glibc.close(fd)
            if code == EADDRINUSE { throw .addressInUse(address) }
            throw .system(call: "bind", errno: code)
        }
        let socket = UDPSocket(reactor: self, fd: fd, localAddress: boundAddress(of: fd) ?? address,
                               maxDatagramSize: maxDatagramSize, sendQueueLimit: sendQueueLimit, onReceive: onReceive)
        socket.token = register(.datagram(socket))
        do {
            try backend.addDatagramSocket(socket)
        } catch {
            release(token: socket.token)
            Glibc.close(fd)
            throw error
        }
        return socket
    }
}
