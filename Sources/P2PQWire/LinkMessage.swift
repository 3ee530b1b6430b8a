/// The hello each side sends as its first message after the handshake.
public struct Hello: Sendable, Equatable {
    /// The protocol version of the link: the one its handshake settled (see
    /// ``WireProtocol/supportedVersions``).
    public var protocolVersion: UInt16
    /// SHA-256 of the sender's Noise static public key.
    public var peerID: PeerID
    /// The port peers should dial back; 0 when the sender accepts no inbound links.
    public var listenPort: UInt16
    /// The host peers should dial back (at most 255 UTF-8 bytes); empty means "the address
    /// this connection came from".
    public var listenHost: String
    /// Changes on every restart, so peers can tell a new process from a reconnect.
    public var incarnation: UInt64
    /// Optional capabilities; bits a receiver does not know are ignored.
    public var features: UInt64

    public init(
        protocolVersion: UInt16 = WireProtocol.version, peerID: PeerID, listenPort: UInt16,
        listenHost: String, incarnation: UInt64, features: UInt64 = 0
    ) {
        self.protocolVersion = protocolVersion
        self.peerID = peerID
        self.listenPort = listenPort
        self.listenHost = listenHost
        self.incarnation = incarnation
        self.features = features
    }
}

/// Why a side says goodbye.
public enum GoodbyeReason: UInt8, Sendable, CaseIterable {
    /// The peer is leaving this link (e.g. it has enough links).
    case leaving = 0
    /// The process is shutting down.
    case shuttingDown = 1
    /// The other side broke the protocol (the detail says how).
    case protocolError = 2
    /// Another link between the same two peers exists; this one is dropped.
    case duplicateLink = 3
}

/// One entry of a peers message: a peer and the address it listens on.
public struct PeerAddress: Sendable, Equatable {
    public var peerID: PeerID
    /// Host name or IP literal, 1...255 UTF-8 bytes.
    public var host: String
    /// Nonzero port.
    public var port: UInt16

    public init(peerID: PeerID, host: String, port: UInt16) {
        self.peerID = peerID
        self.host = host
        self.port = port
    }
}

/// A link-level message (types `0x01–0x0F`): the messages two peers exchange about the link
/// itself, below membership, queue and remote calls.
public enum LinkMessage: Sendable, Equatable, WireMessage, WireDecodable {
    case hello(Hello)
    /// `sentAt` is the sender's monotonic clock in ns, opaque to the receiver.
    case ping(nonce: UInt64, sentAt: UInt64)
    /// Echoes the ping's `nonce` and `sentAt`.
    case pong(nonce: UInt64, sentAt: UInt64)
    /// `detail` is at most 256 UTF-8 bytes.
    case goodbye(reason: GoodbyeReason, detail: String)
    /// At most 1024 entries.
    case peers([PeerAddress])
    /// Where the sender's operations endpoint listens (host at most 255 UTF-8 bytes; empty
    /// means "the address this link came from"; port nonzero). Only to peers whose hello set
    /// ``WireProtocol/featureOperationsAddress``.
    case operations(host: String, port: UInt16)

    public var messageType: MessageType {
        switch self {
        case .hello: return .hello
        case .ping: return .ping
        case .pong: return .pong
        case .goodbye: return .goodbye
        case .peers: return .peers
        case .operations: return .operations
        }
    }

    // MARK: Decoding

    /// Decodes the body of a message of `type`, checking every limit and that no byte is left.
    ///
    /// - Throws: ``WireError/truncated(field:needed:available:)`` naming the short field,
    ///   ``WireError/malformed(field:reason:)`` (bad UTF-8, string or count over its limit,
    ///   unknown goodbye reason, empty host or zero port in a peers entry),
    ///   ``WireError/unsupportedVersion(received:supported:)``, ``WireError/trailingBytes(type:count:)``.
    public static func decode(type: MessageType, body: UnsafeRawBufferPointer) throws(WireError) -> LinkMessage {
        var reader = WireReader(body)
        let message: LinkMessage
        switch type {
        case .benchmark, .membershipPing, .membershipAck, .membershipPingRequest, .membershipNack, .membershipGossip,
             .queueStats, .queueStealRequest, .queueStealEmpty, .queueTransfer, .queueTransferAck, .queueOwnerUpdate,
             .queueOwnerUpdateAck, .queueOwnerChange, .queueCustodyCheck, .queueCustodyVerdict,
             .queueReplicaRelease, .queueReplicaCheck, .queueReplicaVerdict:
            // Not a link message (benchmark payload, upper layers): not this layer's to decode.
            throw .unknownMessageType(type.rawValue)
        case .hello:
            // The version comes first and is checked first: the rest of the layout is v1's.
            let version = try reader.readU16(field: "hello.protocolVersion")
            guard WireProtocol.supportedVersions.contains(version) else {
                throw .unsupportedVersion(received: version, supported: WireProtocol.supportedVersions)
            }
            let peerID = try reader.readPeerID(field: "hello.peerID")
            let listenPort = try reader.readU16(field: "hello.listenPort")
            let listenHost = try reader.readString(field: "hello.listenHost", maxLength: WireProtocol.maxHostLength)
            let incarnation = try reader.readU64(field: "hello.incarnation")
            let features = try reader.readU64(field: "hello.features")
            message = .hello(Hello(
                protocolVersion: version, peerID: peerID, listenPort: listenPort,
                listenHost: listenHost, incarnation: incarnation, features: features
            ))
        case .ping:
            let nonce = try reader.readU64(field: "ping.nonce")
            message = .ping(nonce: nonce, sentAt: try reader.readU64(field: "ping.sentAt"))
        case .pong:
            let nonce = try reader.readU64(field: "pong.nonce")
            message = .pong(nonce: nonce, sentAt: try reader.readU64(field: "pong.sentAt"))
        case .goodbye:
            let raw = try reader.readU8(field: "goodbye.reason")
            guard let reason = GoodbyeReason(rawValue: raw) else {
                throw .malformed(field: "goodbye.reason", reason: "unknown reason \(raw)")
            }
            let detail = try reader.readString(field: "goodbye.detail", maxLength: WireProtocol.maxGoodbyeDetailLength)
            message = .goodbye(reason: reason, detail: detail)
        case .peers:
            let count = Int(try reader.readU16(field: "peers.count"))
            guard count <= WireProtocol.maxPeersPerMessage else {
                throw .malformed(field: "peers.count", reason: "\(count) exceeds the limit of \(WireProtocol.maxPeersPerMessage)")
            }
            var entries: [PeerAddress] = []
            // Reserve only what the remaining bytes could hold (an entry is at least 39 bytes),
            // so a lying count cannot make us allocate for 1024 entries.
            entries.reserveCapacity(Swift.min(count, reader.remaining / 39))
            for index in 0..<count {
                do throws(WireError) {
                    entries.append(try readPeerAddress(&reader))
                } catch {
                    throw error.nested(under: "peers[\(index)]")
                }
            }
            message = .peers(entries)
        case .operations:
            let host = try reader.readString(field: "operations.host", maxLength: WireProtocol.maxHostLength)
            let port = try reader.readU16(field: "operations.port")
            guard port != 0 else { throw .malformed(field: "operations.port", reason: "port 0") }
            message = .operations(host: host, port: port)
        case .remoteCallResults, .remoteCallStarted, .remoteCallCancel, .remoteCallDirect, .remoteCallCredit,
             .remoteCallDirectRun, .remoteCallResultRun:
            // Remote-call messages: decoded by P2PQRemoteCall, not by this layer.
            throw .unknownMessageType(type.rawValue)
        }
        try reader.finish(type: type)
        return message
    }

    private static func readPeerAddress(_ reader: inout WireReader) throws(WireError) -> PeerAddress {
        let peerID = try reader.readPeerID(field: "peerID")
        let host = try reader.readString(field: "host", maxLength: WireProtocol.maxHostLength)
        guard !host.isEmpty else { throw .malformed(field: "host", reason: "empty") }
        let port = try reader.readU16(field: "port")
        guard port != 0 else { throw .malformed(field: "port", reason: "port 0") }
        return PeerAddress(peerID: peerID, host: host, port: port)
    }



    // MARK: Encoding

    public func validate() throws(WireError) {
        switch self {
        case .hello(let hello):
            try Self.checkLength(hello.listenHost, field: "hello.listenHost", limit: WireProtocol.maxHostLength)
        case .ping, .pong:
            break
        case .operations(let host, let port):
            try Self.checkLength(host, field: "operations.host", limit: WireProtocol.maxHostLength)
            guard port != 0 else { throw .malformed(field: "operations.port", reason: "port 0") }
        case .goodbye(_, let detail):
            try Self.checkLength(detail, field: "goodbye.detail", limit: WireProtocol.maxGoodbyeDetailLength)
        case .peers(let entries):
            guard entries.count <= WireProtocol.maxPeersPerMessage else {
                throw .malformed(field: "peers.count", reason: "\(entries.count) exceeds the limit of \(WireProtocol.maxPeersPerMessage)")
            }
            for (index, entry) in entries.enumerated() {
                do throws(WireError) {
                    try Self.checkLength(entry.host, field: "host", limit: WireProtocol.maxHostLength)
                    guard !entry.host.isEmpty else { throw .malformed(field: "host", reason: "empty") }
                    guard entry.port != 0 else { throw .malformed(field: "port", reason: "port 0") }
                } catch {
                    throw error.nested(under: "peers[\(index)]")
                }
            }
        }
    }

    private static func checkLength(_ string: String, field: String, limit: Int) throws(WireError) {
        let length = string.utf8.count
        guard length <= limit else {
            throw .malformed(field: field, reason: "length \(length) exceeds the limit of \(limit) bytes")
        }
    }

    public var bodySize: Int {
        switch self {
        case .hello(let hello):
            return 2 + WireProtocol.peerIDSize + 2 + 4 + hello.listenHost.utf8.count + 8 + 8
        case .ping, .pong:
            return 16
        case .goodbye(_, let detail):
            return 1 + 4 + detail.utf8.count
        case .peers(let entries):
            return entries.reduce(2) { $0 + WireProtocol.peerIDSize + 4 + $1.host.utf8.count + 2 }
        case .operations(let host, _):
            return 4 + host.utf8.count + 2
        }
    }

    public func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        switch self {
        case .hello(let hello):
            writer.writeU16(hello.protocolVersion)
            hello.peerID.write(into: &writer)
            writer.writeU16(hello.listenPort)
            writer.writeString(hello.listenHost)
            writer.writeU64(hello.incarnation)
            writer.writeU64(hello.features)
        case .ping(let nonce, let sentAt), .pong(let nonce, let sentAt):
            writer.writeU64(nonce)
            writer.writeU64(sentAt)
        case .goodbye(let reason, let detail):
            writer.writeU8(reason.rawValue)
            writer.writeString(detail)
        case .peers(let entries):
            writer.writeU16(UInt16(entries.count))
            for entry in entries {
                entry.peerID.write(into: &writer)
                writer.writeString(entry.host)
                writer.writeU16(entry.port)
            }
        case .operations(let host, let port):
            writer.writeString(host)
            writer.writeU16(port)
        }
    }

    /// Validates the message and appends its body (no length, no type) to `writer`.
    public func encodeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) throws(WireError) {
        try validate()
        writeBody(into: &writer)
    }

    /// Validates the message and appends it framed (`[u32 L][type][body]`) to `bytes`.
    public func encode(into bytes: inout [UInt8], maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) {
        try MessageEncoder.encode(self, into: &bytes, maxFrameSize: maxFrameSize)
    }

    /// The framed message (`[u32 L][type][body]`).
    public func encoded(maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) -> [UInt8] {
        var bytes: [UInt8] = []
        try encode(into: &bytes, maxFrameSize: maxFrameSize)
        return bytes
    }
}
