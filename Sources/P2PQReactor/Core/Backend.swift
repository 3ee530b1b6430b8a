/// What the reactor needs from an I/O backend. epoll and io_uring implement it; nothing above
/// this interface can tell which one runs.
///
/// Every method but ``wakeup()`` runs on the loop thread. Backends report what happened by
/// calling the channels' `handle…` methods (see `TCPConnection`), which hold the logic both
/// backends share.
protocol ReactorBackend: AnyObject {
    /// Waits up to `timeoutNanoseconds` (nil: until something happens; 0: not at all) and
    /// dispatches every event or completion that is ready. Returns false when there was none.
    func poll(timeoutNanoseconds: Int64?) -> Bool
    /// Work left for the next turn (reads that hit their per-turn budget, say): the loop then
    /// polls without sleeping.
    var hasPendingWork: Bool { get }
    /// Wakes a sleeping `poll`. Any thread.
    func wakeup()
    /// Releases the backend's own descriptors and memory. Channels are already closed.
    func shutdown()

    /// Starts accepting on a bound, listening socket.
    func addListener(_ listener: TCPListener) throws(ReactorError)
    /// Starts reading from an established connection (unless its reads are paused).
    func addConnection(_ connection: TCPConnection)
    /// Starts a nonblocking connect; completion arrives through `connection.handleConnectResult`.
    func startConnect(_ connection: TCPConnection, to address: SocketAddress)
    /// The connection paused or resumed its reads.
    func readInterestChanged(_ connection: TCPConnection)
    /// Writes (or prepares the send of) what the connection has queued: at the end of a turn,
    /// and mid-turn for `TCPConnection.flushNow`.
    func flush(_ connection: TCPConnection)
    /// Starts the I/O prepared so far now instead of with the next `poll` (io_uring submits
    /// its queue; epoll wrote in `flush` already).
    func submitNow()
    /// Starts delivering readiness of a UDP socket.
    func addDatagramSocket(_ socket: UDPSocket) throws(ReactorError)
    /// The UDP socket wants (or no longer wants) to know when it can send.
    func datagramWriteInterestChanged(_ socket: UDPSocket)
    /// The channel is closed: stop all I/O on it, close its descriptor once no operation
    /// references it, then release its token.
    func remove(_ channel: RegisteredChannel)
}

/// A channel in the reactor's registry.
enum RegisteredChannel {
    case listener(TCPListener)
    case connection(TCPConnection)
    case datagram(UDPSocket)

    func close(reason: TCPCloseReason) {
        switch self {
        case .listener(let l): l.close()
        case .connection(let c): c.close(reason: reason)
        case .datagram(let u): u.close()
        }
    }
}
