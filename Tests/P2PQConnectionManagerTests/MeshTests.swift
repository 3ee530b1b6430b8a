import Testing
import P2PQConnectionManager

@Suite struct MeshTests {
    /// Five nodes, node i bootstrapping only to node i-1, end fully meshed with one link per
    /// pair, both ends agreeing, and stay so under keepalive traffic. Seed 0 delivers
    /// instantly; other seeds use random latency (per-connection order kept) to vary the
    /// interleavings, which produces simultaneous dials.
    @Test(arguments: 0..<12)
    func fiveNodesFormFullMesh(seed: Int) {
        var sim = Simulator(nodes: 5, seed: UInt64(seed), maxLatency: seed == 0 ? 0 : 3 * ms)
        for node in 0..<5 {
            sim.start(node, bootstrap: node == 0 ? [] : [address(node - 1)])
        }
        sim.run(until: 2 * second)
        assertMesh(sim, nodes: 5)

        let disconnectsBefore = sim.log.map(\.disconnects.count)
        sim.run(until: 10 * second)
        assertMesh(sim, nodes: 5)
        #expect(sim.log.map(\.disconnects.count) == disconnectsBefore, "links flapped after convergence")
        // Keepalive traffic kept the idle links up (a node that hears a ping first needs none).
        #expect(sim.log.joined().contains { if case .sendPing = $0 { true } else { false } })
    }

    private func assertMesh(_ sim: Simulator, nodes: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        for node in 0..<nodes {
            #expect(sim.managers[node].connectedPeerCount == nodes - 1, "node \(node)", sourceLocation: sourceLocation)
            let connected = sim.managers[node].peers.filter { $0.state == .connected }.compactMap(\.peer)
            #expect(Set(connected) == Set(0..<nodes).subtracting([node]), sourceLocation: sourceLocation)
            for other in 0..<nodes where other > node {
                #expect(sim.linked(node, other), "\(node)-\(other) not on one connection", sourceLocation: sourceLocation)
            }
        }
        #expect(sim.openConnections == nodes * (nodes - 1) / 2, "extra connections open", sourceLocation: sourceLocation)
        #expect(sim.eventPairingViolation() == nil, sourceLocation: sourceLocation)
    }

    /// Two nodes bootstrap to each other at the same moment, under many random latencies
    /// (including a duplicate's close overtaking the winner's hello): they always settle on
    /// one link, the same one on both sides.
    @Test func simultaneousBootstrapConvergesUnderRandomInterleavings() {
        for seed in 0..<200 as Range<UInt64> {
            var sim = Simulator(nodes: 2, seed: seed, maxLatency: 5 * ms)
            sim.start(0, bootstrap: [address(1)])
            sim.start(1, bootstrap: [address(0)])
            sim.run(until: 5 * second)
            #expect(sim.linked(0, 1), "seed \(seed)")
            #expect(sim.openConnections == 1, "seed \(seed)")
            #expect(sim.eventPairingViolation() == nil, "seed \(seed)")
        }
    }

    /// A and B dial each other; both links come up in every one of the 24 orders of the four
    /// `linkUp`s, then the closes are delivered. Exactly one link survives, the one initiated
    /// by the smaller PeerID, the same on both sides, and no disconnect is ever announced.
    @Test(arguments: [(1, 2), (2, 1)])
    func simultaneousDialEveryOrder(aID: Int, bID: Int) {
        // Connection X: A dialed (A's end 10, B's end 20). Connection Y: B dialed (B's 21, A's 11).
        let ends: [LinkID: LinkID] = [
            LinkID(10): LinkID(20), LinkID(11): LinkID(21), LinkID(20): LinkID(10), LinkID(21): LinkID(11),
        ]
        let smallerDialedFirst = aID < bID
        for order in permutations([0, 1, 2, 3]) {
            var a = makeManager(aID)
            var b = makeManager(bID)
            var aActions = a.start(bootstrap: [address(bID)], now: 0)
            var bActions = b.start(bootstrap: [address(aID)], now: 0)
            #expect(aActions.dials == [address(bID)])
            #expect(bActions.dials == [address(aID)])
            for step in order {
                switch step {
                case 0:
                    aActions += a.linkUp(link: LinkID(10), peer: bID, direction: .outbound,
                                         peerAddress: address(bID), dialedAddress: address(bID), now: 1)
                case 1:
                    aActions += a.linkUp(link: LinkID(11), peer: bID, direction: .inbound,
                                         peerAddress: address(bID), now: 1)
                case 2:
                    bActions += b.linkUp(link: LinkID(20), peer: aID, direction: .inbound,
                                         peerAddress: address(aID), now: 1)
                default:
                    bActions += b.linkUp(link: LinkID(21), peer: aID, direction: .outbound,
                                         peerAddress: address(aID), dialedAddress: address(aID), now: 1)
                }
            }
            // Each closed end is reported down locally, and the far end sees the connection drop.
            let aCloses = aActions.closes
            let bCloses = bActions.closes
            for (link, _) in aCloses {
                aActions += a.linkDown(link: link, now: 2)
                bActions += b.linkDown(link: ends[link]!, now: 2)
            }
            for (link, _) in bCloses {
                bActions += b.linkDown(link: link, now: 2)
                aActions += a.linkDown(link: ends[link]!, now: 2)
            }

            let keptA = smallerDialedFirst ? LinkID(10) : LinkID(11)
            let keptB = ends[keptA]!
            #expect(a.link(to: bID) == keptA, "order \(order)")
            #expect(b.link(to: aID) == keptB, "order \(order)")
            let losingA = keptA == LinkID(10) ? LinkID(11) : LinkID(10)
            #expect(aCloses.map(\.0) == [losingA], "order \(order)")
            #expect(bCloses.map(\.0) == [ends[losingA]!], "order \(order)")
            #expect(aCloses.allSatisfy { $0.1 == .duplicate } && bCloses.allSatisfy { $0.1 == .duplicate })
            #expect(aActions.disconnects.isEmpty && bActions.disconnects.isEmpty, "order \(order)")
            #expect(aActions.connects == [bID] && bActions.connects == [aID], "order \(order)")
            // Nothing is redialed: the duplicate's close is not a loss.
            #expect(a.peers.count == 1 && b.peers.count == 1)
        }
    }
}

func permutations<T>(_ items: [T]) -> [[T]] {
    guard items.count > 1 else { return [items] }
    return items.indices.flatMap { index -> [[T]] in
        var rest = items
        let first = rest.remove(at: index)
        return permutations(rest).map { [first] + $0 }
    }
}
