/// A packet's source or destination: an IPv4 (4 bytes) or IPv6 (16 bytes) address and a port.
public struct MDNSAddress: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]
    public var port: UInt16

    public init(bytes: [UInt8], port: UInt16) {
        self.bytes = bytes
        self.port = port
    }

    /// In 127.0.0.0/8: on-link for the loopback interface.
    public var isLoopbackIPv4: Bool { bytes.count == 4 && bytes[0] == 127 }

    public var description: String {
        if bytes.count == 4 { return bytes.map { String($0) }.joined(separator: ".") + ":\(port)" }
        return "[" + bytes.map { String($0, radix: 16) }.joined(separator: " ") + "]:\(port)"
    }
}

/// What the discovery agent announces and looks for, and its timings (nanoseconds).
public struct MDNSConfiguration: Sendable {
    /// The DNS-SD service type browsed and announced.
    public var serviceType = DNSName("_p2pqueue._tcp.local")
    /// This node's instance label (unique: it carries the PeerID).
    public var instanceName: String
    /// This node's host name, the SRV target (unique: it carries the PeerID).
    public var hostName: DNSName
    /// The TCP port peers dial (the SRV port).
    public var servicePort: UInt16
    /// The host's IPv4 addresses (A records), 4 bytes each.
    public var addresses: [[UInt8]]
    /// TXT `id=`: the node's PeerID (hex).
    public var peerID: String
    /// TXT `cluster=`: the public cluster identifier; instances with another one are ignored.
    public var clusterIdentifier: String
    /// TXT `v=`: the protocol version.
    public var protocolVersion: String
    /// The mDNS port (5353; tests use a private one). Queries from any other port are legacy
    /// unicast queries; responses from any other port are ignored (RFC 6762 §6.7, §11).
    public var mdnsPort: UInt16 = 5353
    /// TTL of the SRV and A records (RFC 6762 §10: 120 s for records with a host name).
    public var hostRecordTTL: UInt32 = 120
    /// TTL of the PTR and TXT records (RFC 6762 §10: 75 minutes).
    public var otherRecordTTL: UInt32 = 4500
    /// Unsolicited announcements on start (RFC 6762 §8.3: at least 2, at most 8), the first
    /// immediately, then after `announceInterval`, doubling.
    public var announcements = 2
    public var announceInterval: UInt64 = 1_000_000_000
    /// First browse query after a random 20–120 ms (RFC 6762 §5.2), then after
    /// `initialQueryInterval`, doubling up to `maxQueryInterval`.
    public var initialQueryInterval: UInt64 = 1_000_000_000
    public var maxQueryInterval: UInt64 = 3600 * 1_000_000_000
    /// A record is multicast at most once per this interval (RFC 6762 §6).
    public var multicastRateLimit: UInt64 = 1_000_000_000
    /// Largest reply to a legacy unicast query (RFC 6762 §6.7 / RFC 1035 §4.2.1).
    public var legacyReplyLimit = 512
    /// Most source addresses whose last legacy reply is remembered for the per-source rate
    /// limit; when all are recent, further legacy queries go unanswered.
    public var maxLegacySources = 256
    /// Largest multicast or mDNS-unicast packet (RFC 6762 §17).
    public var maxPacketSize = 9000
    /// Most cached records (other nodes' records); more are ignored.
    public var maxCacheEntries = 1024
    /// Whether a source is on the link; packets from anywhere else are dropped unread. The
    /// default suits the loopback interface.
    public var isOnLink: @Sendable (MDNSAddress) -> Bool = { $0.isLoopbackIPv4 }

    public init(instanceName: String, hostName: DNSName, servicePort: UInt16, addresses: [[UInt8]],
                peerID: String, clusterIdentifier: String, protocolVersion: String) {
        self.instanceName = instanceName
        self.hostName = hostName
        self.servicePort = servicePort
        self.addresses = addresses
        self.peerID = peerID
        self.clusterIdentifier = clusterIdentifier
        self.protocolVersion = protocolVersion
    }

    /// `<instance>.<service type>`.
    public var instanceFullName: DNSName { serviceType.prepending(instanceName) }
}

/// A peer another node announced: where to dial it. Only a hint: the handshake decides.
public struct MDNSPeerHint: Hashable, Sendable {
    /// TXT `id=` (hex PeerID, as announced; unverified).
    public var peerID: String
    public var instance: DNSName
    public var host: DNSName
    /// The host's IPv4 addresses (4 bytes each), sorted.
    public var addresses: [[UInt8]]
    public var port: UInt16
    public var protocolVersion: String
}

/// What the shell does for the agent, in order.
public enum MDNSAction: Hashable, Sendable {
    /// Send to the mDNS group (224.0.0.251 on the configured port).
    case sendMulticast([UInt8])
    /// Send to one address (a unicast or legacy reply).
    case sendUnicast([UInt8], to: MDNSAddress)
    /// Call ``MDNSMachine/tick(now:)`` at this time (replaces any earlier arming).
    case armTimer(at: UInt64)
    /// A peer was found, or its address or port changed.
    case discovered(MDNSPeerHint)
    /// A peer's records expired or it said goodbye.
    case expired(peerID: String, instance: DNSName)
}

/// Counters for tests and status.
public struct MDNSStatistics: Hashable, Sendable {
    public var droppedOffLink = 0
    public var malformed = 0
    /// Responses ignored for coming from a port other than the mDNS port.
    public var ignoredResponses = 0
    /// Records left out of replies by the once-per-second rules (multicast and legacy).
    public var rateLimited = 0
    /// Of those, records left out of legacy (unicast) replies, per record or per source.
    public var legacyRateLimited = 0
    /// Records left out of replies because the query already listed them (known answers).
    public var suppressed = 0
}
