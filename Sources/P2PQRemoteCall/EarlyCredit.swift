import P2PQWire

/// Credit for direct calls that peers' executors grant a node before it can call (they offer
/// it as soon as a link comes up), kept for its caller machine until that exists. Bounded per
/// peer; forgotten with the link it was granted on.
public struct EarlyCredit: Sendable {
    /// Most credit kept for one peer.
    public static let maxPerPeer = 1 << 20

    /// Credit per peer.
    public private(set) var slots: [PeerID: Int] = [:]

    public init() {}

    /// A remote-call message arrived from `peer` while no caller exists: only credit is
    /// addressed to it, and anything else (or a malformed credit) is ignored.
    public mutating func received(_ type: MessageType, _ body: UnsafeRawBufferPointer, from peer: PeerID) {
        guard type == .remoteCallCredit, case .credit(let granted)? = try? RemoteCallMessage.decode(type: type, body: body) else {
            return
        }
        self.granted(granted, by: peer)
    }

    /// `peer` granted `granted` more calls (a decoded credit message).
    public mutating func granted(_ granted: UInt32, by peer: PeerID) {
        slots[peer] = Swift.min(Self.maxPerPeer, (slots[peer] ?? 0) + Int(granted))
    }

    /// The link to `peer` went down or was replaced: credit granted on it is void.
    public mutating func linkLost(_ peer: PeerID) {
        slots[peer] = nil
    }

    /// Hands the credit over (in peer order) and forgets it.
    public mutating func take() -> [(peer: PeerID, slots: Int)] {
        defer { slots = [:] }
        return slots.sorted { $0.key < $1.key }.map { (peer: $0.key, slots: $0.value) }
    }
}
