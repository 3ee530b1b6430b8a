import Logging
import P2PQDiscovery
import P2PQReactor
import P2PQWire

/// Where and whether a node looks for peers with mDNS / DNS-SD (see docs/discovery.md).
public struct DiscoveryConfiguration: Sendable {
    /// Announce this node and browse for others. On by default (on loopback).
    public var enabled = true
    /// The mDNS port: 5353 is what standard tools use; tests pick a private one so that
    /// unrelated nodes on the host do not find each other.
    public var port = 5353
    /// The IPv4 address of the interface to announce on and browse (multicast goes out of it,
    /// never another). Loopback by default.
    public var interfaceAddress = "127.0.0.1"
    /// Must be set to use an interface other than loopback: discovery then announces this
    /// node to the LAN (the handshake still keeps strangers out).
    public var allowNonLoopbackInterface = false

    public init() {}

    /// Discovery switched off.
    public static var disabled: DiscoveryConfiguration {
        var configuration = DiscoveryConfiguration()
        configuration.enabled = false
        return configuration
    }
}

/// The mDNS responder and browser on the node's reactor thread: one UDP socket joined to
/// 224.0.0.251 on the configured interface, one timer, and an ``MDNSMachine`` deciding what to
/// send. Discovered peers go to `onHint`; the handshake decides who gets in.
final class MDNSDiscovery {
    static let group = "224.0.0.251"

    let reactor: Reactor
    let configuration: DiscoveryConfiguration
    private var agent: MDNSMachine
    private var socket: UDPSocket?
    private lazy var driver = ShellDriver<MDNSAction>(handle: { [unowned self] in self.handle($0) })
    private lazy var timer = ShellTimer(reactor: reactor) { [unowned self] in
        self.perform(self.agent.tick(now: self.now))
    }
    private let groupAddress: SocketAddress
    private let logger: Logger
    private let clock: @Sendable () -> UInt64
    private let onHint: (PeerID, SocketAddress) -> Void

    /// - Parameters:
    ///   - advertised: the address peers dial (its host is announced when it is a specific
    ///     IPv4 address, else the interface address).
    ///   - clusterIdentifier: the public identifier of the cluster key.
    ///   - clock: monotonic nanoseconds; `random`: the agent's generator.
    init(reactor: Reactor, configuration: DiscoveryConfiguration, peerID: PeerID, advertised: SocketAddress,
         clusterIdentifier: String, logger: Logger, clock: @escaping @Sendable () -> UInt64, random: SplitMix64,
         onHint: @escaping (PeerID, SocketAddress) -> Void) throws(NodeError) {
        guard (1...65535).contains(configuration.port) else {
            throw .invalidConfiguration("discovery port \(configuration.port) is out of range")
        }
        guard let interface = Self.ipv4Bytes(configuration.interfaceAddress) else {
            throw .invalidConfiguration("discovery interface '\(configuration.interfaceAddress)' is not an IPv4 address")
        }
        let isLoopback = interface[0] == 127
        guard isLoopback || configuration.allowNonLoopbackInterface else {
            throw .notLoopback("discovery is loopback only unless allowNonLoopbackInterface is set; refusing \(configuration.interfaceAddress)")
        }
        self.reactor = reactor
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.onHint = onHint
        do {
            groupAddress = try SocketAddress(host: Self.group, port: configuration.port)
        } catch {
            throw .reactor(error)
        }
        let announced = Self.ipv4Bytes(advertised.host).flatMap { $0 == [0, 0, 0, 0] ? nil : $0 } ?? interface
        // 16 hex digits of the PeerID keep labels short and names unique.
        let tag = String(peerID.description.prefix(16))
        var mdns = MDNSConfiguration(
            instanceName: "p2pq-\(tag)", hostName: DNSName("p2pq-\(tag).local"),
            servicePort: UInt16(clamping: advertised.port), addresses: [announced], peerID: peerID.description,
            clusterIdentifier: clusterIdentifier, protocolVersion: String(WireProtocol.version)
        )
        mdns.mdnsPort = UInt16(configuration.port)
        if !isLoopback {
            // Without the interface's netmask at hand, the link is taken as its /24.
            let prefix = Array(interface.prefix(3))
            mdns.isOnLink = { $0.bytes.count == 4 && Array($0.bytes.prefix(3)) == prefix }
        }
        agent = MDNSMachine(configuration: mdns, randomNumberGenerator: random)
    }

    var now: UInt64 { clock() }

    /// Binds the shared mDNS port, joins the group and announces.
    func start() throws(NodeError) {
        do {
            // Bound to the group address, the socket sees only mDNS multicast (not every group
            // the host joined); SO_REUSEPORT lets several nodes and standard tools share the port.
            let socket = try reactor.bindUDP(on: groupAddress, reuseAddress: true, reusePort: true) { [weak self] bytes, source in
                // Weak: after stop the socket outlives this object for a moment (see stop()).
                self?.received(bytes, from: source)
            }
            self.socket = socket
            try socket.joinMulticastGroup(Self.group, interfaceAddress: configuration.interfaceAddress)
            try socket.setMulticastInterface(configuration.interfaceAddress)
            // RFC 6762 §11: 255, so receivers can tell on-link packets; loop on, so the other
            // nodes on this host hear us.
            try socket.setMulticastTTL(255)
            try socket.setMulticastLoopback(true)
        } catch {
            socket?.close()
            socket = nil
            throw .reactor(error)
        }
        logger.debug("discovery on \(configuration.interfaceAddress) port \(configuration.port)")
        perform(agent.start(now: now))
    }

    /// Sends goodbyes and closes the socket once they have left.
    func stop() {
        timer.cancel()
        perform(agent.stop(now: now))
        guard let socket else { return }
        self.socket = nil
        // Queued datagrams leave at the end of this turn; closing now would drop the goodbye.
        _ = reactor.schedule(after: .milliseconds(1)) { socket.close() }
    }

    private func received(_ bytes: UnsafeRawBufferPointer, from source: SocketAddress) {
        guard socket != nil else { return }
        let address = MDNSAddress(bytes: Self.ipv4Bytes(source.host) ?? [], port: UInt16(clamping: source.port))
        perform(agent.received(Array(bytes), from: address, now: now))
    }

    private func perform(_ actions: [MDNSAction]) {
        driver.perform(actions)
    }

    private func handle(_ action: MDNSAction) {
        switch action {
        case .sendMulticast(let bytes):
            socket?.send(bytes, to: groupAddress)
        case .sendUnicast(let bytes, let to):
            guard to.bytes.count == 4,
                  let address = try? SocketAddress(host: to.bytes.map { String($0) }.joined(separator: "."), port: Int(to.port))
            else { return }
            socket?.send(bytes, to: address)
        case .armTimer(let at):
            timer.arm(at: at)
        case .discovered(let hint):
            guard let peer = Self.peerID(hex: hint.peerID), let first = hint.addresses.first,
                  let address = try? SocketAddress(host: first.map { String($0) }.joined(separator: "."), port: Int(hint.port))
            else {
                logger.debug("discovery: unusable announcement \(hint.instance)")
                return
            }
            logger.debug("discovered \(peer.short) at \(address)")
            onHint(peer, address)
        case .expired(let peer, _):
            logger.debug("discovery: \(peer.prefix(12)) expired")
        }
    }

    static func ipv4Bytes(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        let bytes = parts.compactMap { UInt8($0) }
        return bytes.count == 4 ? bytes : nil
    }

    static func peerID(hex: String) -> PeerID? {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for i in stride(from: 0, to: 64, by: 2) {
            guard let high = nibble(digits[i]), let low = nibble(digits[i + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        return PeerID(bytes: bytes)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
