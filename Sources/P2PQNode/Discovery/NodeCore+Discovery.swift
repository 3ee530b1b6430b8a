import P2PQReactor
import P2PQWire
import P2PQLink

extension NodeCore {
    /// Starts mDNS discovery; what it finds goes to the connection manager as dial hints.
    ///
    /// A bad discovery configuration fails the start. A socket the system refuses (the port
    /// held by a program that does not share it, say) only costs discovery, not the node.
    func startDiscovery() throws(NodeError) -> MDNSDiscovery? {
        let key = configuration.clusterKey ?? LinkSecurity.developmentKey
        // Insecure nodes cannot talk to Noise nodes: a cluster of their own keeps them apart.
        let clusterIdentifier = configuration.insecure ? "insecure" : key.clusterID
        let discovery = try MDNSDiscovery(
            reactor: reactor, configuration: configuration.discovery, peerID: identity.peerID, advertised: advertised,
            clusterIdentifier: clusterIdentifier, logger: logger, clock: environment.monotonicNanoseconds,
            random: splitRandom()
        ) { [unowned self] peer, address in
            self.discovered(peer, at: address)
        }
        do {
            try discovery.start()
        } catch {
            logger.warning("discovery unavailable: \(error)")
            return nil
        }
        return discovery
    }

    /// An mDNS hint: dialed like a peer-list entry (the handshake checks who answers).
    func discovered(_ peer: PeerID, at address: SocketAddress) {
        guard !isStopped else { return }
        perform(machine.discovered(peer, at: address, now: now))
    }
}
