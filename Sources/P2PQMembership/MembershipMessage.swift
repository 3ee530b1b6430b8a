import P2PQWire

/// What a membership update says about a member.
public enum MemberUpdateKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The member is alive at this incarnation (announced by itself, or relayed).
    case alive = 0
    /// `origin` suspects the member at this incarnation.
    case suspect = 1
    /// `origin` declared the member dead at this incarnation.
    case dead = 2
    /// The member announced it is leaving, at this incarnation.
    case left = 3

    public var description: String {
        switch self {
        case .alive: return "alive"
        case .suspect: return "suspect"
        case .dead: return "dead"
        case .left: return "left"
        }
    }
}

/// One piggybacked membership update: `kind` of `member` at `incarnation`, said by `origin`.
///
/// For `alive` and `left` only the member itself can originate the news (refutation and leave
/// need its own incarnation), so `origin == member` is enforced on the wire.
public struct MemberUpdate: Sendable, Hashable, CustomStringConvertible {
    public var kind: MemberUpdateKind
    public var member: PeerID
    public var incarnation: UInt64
    public var origin: PeerID

    public init(kind: MemberUpdateKind, member: PeerID, incarnation: UInt64, origin: PeerID) {
        self.kind = kind
        self.member = member
        self.incarnation = incarnation
        self.origin = origin
    }

    /// Bytes of one encoded update: kind, member, incarnation, origin.
    public static let encodedSize = 1 + WireProtocol.peerIDSize + 8 + WireProtocol.peerIDSize

    public var description: String {
        "\(kind)(\(member.short)@\(incarnation) by \(origin.short))"
    }
}

/// Limits of the membership messages.
public enum MembershipWire {
    /// Most updates one message may carry (the decoder rejects more).
    public static let maxUpdatesPerMessage = 255
}

/// A membership message (types `0x10–0x14`); every one carries piggybacked updates.
///
/// Body layouts (big-endian):
/// - ping `0x10`, ack `0x11`, nack `0x13`: `u64 sequence`, updates
/// - ping-req `0x12`: `u64 sequence`, `target[32]`, updates
/// - gossip `0x14`: updates
///
/// where updates = `u8 count` (≤ 255), then `count` × (`u8 kind`, `member[32]`,
/// `u64 incarnation`, `origin[32]`).
public enum MembershipMessage: Sendable, Hashable, WireMessage, WireDecodable {
    /// Probe: "are you alive?"; answered with an ack carrying the same sequence.
    case ping(sequence: UInt64, updates: [MemberUpdate])
    /// Answer to a ping (or, relayed by a helper, to a ping-req).
    case ack(sequence: UInt64, updates: [MemberUpdate])
    /// Asks the receiver to probe `target` and relay its ack under `sequence`.
    case pingRequest(sequence: UInt64, target: PeerID, updates: [MemberUpdate])
    /// A helper's probe of the ping-req target got no ack in time.
    case nack(sequence: UInt64, updates: [MemberUpdate])
    /// Updates alone.
    case gossip(updates: [MemberUpdate])

    public var messageType: MessageType {
        switch self {
        case .ping: return .membershipPing
        case .ack: return .membershipAck
        case .pingRequest: return .membershipPingRequest
        case .nack: return .membershipNack
        case .gossip: return .membershipGossip
        }
    }

    /// The piggybacked updates.
    public var updates: [MemberUpdate] {
        switch self {
        case .ping(_, let updates), .ack(_, let updates), .nack(_, let updates),
             .pingRequest(_, _, let updates), .gossip(let updates):
            return updates
        }
    }

    private static func name(_ type: MessageType) -> String {
        switch type {
        case .membershipPing: return "ping"
        case .membershipAck: return "ack"
        case .membershipPingRequest: return "pingReq"
        case .membershipNack: return "nack"
        default: return "gossip"
        }
    }

    // MARK: Encoding

    public func validate() throws(WireError) {
        let updates = self.updates
        let name = Self.name(messageType)
        guard updates.count <= MembershipWire.maxUpdatesPerMessage else {
            throw .malformed(field: "\(name).updates.count",
                             reason: "\(updates.count) exceeds the limit of \(MembershipWire.maxUpdatesPerMessage)")
        }
        for (index, update) in updates.enumerated() where update.kind == .alive || update.kind == .left {
            guard update.origin == update.member else {
                throw .malformed(field: "\(name).updates[\(index)].origin",
                                 reason: "\(update.kind) must come from the member itself")
            }
        }
    }

    public var bodySize: Int {
        let updates = 1 + self.updates.count * MemberUpdate.encodedSize
        switch self {
        case .ping, .ack, .nack: return 8 + updates
        case .pingRequest: return 8 + WireProtocol.peerIDSize + updates
        case .gossip: return updates
        }
    }

    public func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        switch self {
        case .ping(let sequence, _), .ack(let sequence, _), .nack(let sequence, _):
            writer.writeU64(sequence)
        case .pingRequest(let sequence, let target, _):
            writer.writeU64(sequence)
            target.write(into: &writer)
        case .gossip:
            break
        }
        let updates = self.updates
        writer.writeU8(UInt8(updates.count))
        for update in updates {
            writer.writeU8(update.kind.rawValue)
            update.member.write(into: &writer)
            writer.writeU64(update.incarnation)
            update.origin.write(into: &writer)
        }
    }

    /// Validates the message and returns it framed (`[u32 L][type][body]`).
    public func encoded(maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) -> [UInt8] {
        var bytes: [UInt8] = []
        try MessageEncoder.encode(self, into: &bytes, maxFrameSize: maxFrameSize)
        return bytes
    }

    // MARK: Decoding

    /// Decodes the body of a membership message of `type`, checking every limit and that no
    /// byte is left over.
    ///
    /// - Throws: `WireError.unknownMessageType` for a type outside membership,
    ///   `WireError.truncated` naming the short field,
    ///   `WireError.malformed` (unknown update kind, an alive or left update
    ///   not from the member itself), `WireError.trailingBytes`.
    public static func decode(type: MessageType, body: UnsafeRawBufferPointer) throws(WireError) -> MembershipMessage {
        var reader = WireReader(body)
        let name = name(type)
        let message: MembershipMessage
        switch type {
        case .membershipPing, .membershipAck, .membershipNack:
            let sequence = try reader.readU64(field: "\(name).sequence")
            let updates = try readUpdates(&reader, name: name)
            switch type {
            case .membershipPing: message = .ping(sequence: sequence, updates: updates)
            case .membershipAck: message = .ack(sequence: sequence, updates: updates)
            default: message = .nack(sequence: sequence, updates: updates)
            }
        case .membershipPingRequest:
            let sequence = try reader.readU64(field: "pingReq.sequence")
            let target = try reader.readPeerID(field: "pingReq.target")
            message = .pingRequest(sequence: sequence, target: target, updates: try readUpdates(&reader, name: name))
        case .membershipGossip:
            message = .gossip(updates: try readUpdates(&reader, name: name))
        default:
            throw .unknownMessageType(type.rawValue)
        }
        try reader.finish(type: type)
        return message
    }


    private static func readUpdates(_ reader: inout WireReader, name: String) throws(WireError) -> [MemberUpdate] {
        let count = Int(try reader.readU8(field: "\(name).updates.count"))
        var updates: [MemberUpdate] = []
        // Reserve only what the remaining bytes can hold, so a lying count allocates nothing.
        updates.reserveCapacity(Swift.min(count, reader.remaining / MemberUpdate.encodedSize))
        for index in 0..<count {
            let field = "\(name).updates[\(index)]"
            let raw = try reader.readU8(field: field + ".kind")
            guard let kind = MemberUpdateKind(rawValue: raw) else {
                throw .malformed(field: field + ".kind", reason: "unknown kind \(raw)")
            }
            let member = try reader.readPeerID(field: field + ".member")
            let incarnation = try reader.readU64(field: field + ".incarnation")
            let origin = try reader.readPeerID(field: field + ".origin")
            if (kind == .alive || kind == .left) && origin != member {
                throw .malformed(field: field + ".origin", reason: "\(kind) must come from the member itself")
            }
            updates.append(MemberUpdate(kind: kind, member: member, incarnation: incarnation, origin: origin))
        }
        return updates
    }
}

extension PeerID {
    /// The first 8 hex digits, for logs.
    var short: String { String(description.prefix(8)) }
}
