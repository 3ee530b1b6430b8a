import P2PQWire

/// The order in which a node writes its queues' messages, as a plain value.
///
/// Transfers are written one at a time, each flushed as soon as it is encoded, after the
/// handlers of the turn that produced them: a turn that frees several transfer slots (acks
/// that arrived together) would otherwise encode them all before the first byte leaves, and
/// the receiver would idle meanwhile. So a transfer is held, and every later message to the
/// same peer waits behind it, so each link keeps the machines' order. Other messages go at
/// once. (W1 figures in docs/benchmarks.md.)
public struct QueueOutbox: Sendable {
    /// A held message: for `peer`, from the queue named `queue`.
    public struct Held: Sendable {
        /// The peer it goes to.
        public var peer: PeerID
        /// The queue whose machine sent it (it takes the message back if it cannot go).
        public var queue: String
        /// The message.
        public var message: QueueMessage
        /// Flush the link once this is written (a transfer).
        public var flushAfter: Bool { if case .transfer = message { return true } else { return false } }
    }

    private var held: [Held] = []

    public init() {}

    /// Whether messages are held.
    public var isEmpty: Bool { held.isEmpty }

    /// Returns `message` when it is to be written now; else holds it and returns nil (the
    /// shell then runs ``takeHeld()`` later in the turn).
    public mutating func send(_ message: QueueMessage, to peer: PeerID, queue: String) -> QueueMessage? {
        let holds: Bool
        if case .transfer = message { holds = true } else { holds = held.contains { $0.peer == peer } }
        guard holds else { return message }
        held.append(Held(peer: peer, queue: queue, message: message))
        return nil
    }

    /// The held messages, in order, to write now (each flushed after if ``Held/flushAfter``).
    public mutating func takeHeld() -> [Held] {
        var taken: [Held] = []
        swap(&taken, &held)
        return taken
    }
}
