import P2PQNodeMachine
import P2PQWire
import Testing

/// The rules of ``PeerEventRouting``: which layer hears which peer event, in what order.
@Suite struct PeerEventRoutingTests {
    let peer = PeerID(bytes: [UInt8](repeating: 7, count: 32))!

    @Test func linkUpReachesMembershipThenQueuesThenCalls() {
        #expect(PeerEventRouting.route(.linkUp(peer, incarnation: 42)) == [
            .membership(.linkUp(peer, incarnation: 42)), .queues(.connected(peer)), .calls(.connected(peer)),
        ])
    }

    @Test func aReplacedLinkIsNoNewsToMembership() {
        #expect(PeerEventRouting.route(.linkReplaced(peer)) == [.queues(.linkReplaced(peer)), .calls(.linkReplaced(peer))])
    }

    @Test func aLinkLostToTheNodesOwnStopIsNotProbed() {
        #expect(PeerEventRouting.route(.linkDown(peer, nodeStopping: false)) == [
            .membership(.linkDown(peer, probe: true)), .queues(.disconnected(peer)), .calls(.disconnected(peer)),
        ])
        // Closed by the peer itself (it refused the link): alive, so membership does not probe.
        #expect(PeerEventRouting.route(.linkDown(peer, nodeStopping: false, peerClosed: true)) == [
            .membership(.linkDown(peer, probe: false)), .queues(.disconnected(peer)), .calls(.disconnected(peer)),
        ])
        #expect(PeerEventRouting.route(.linkDown(peer, nodeStopping: true)) == [
            .queues(.disconnected(peer)), .calls(.disconnected(peer)),
        ])
        // Closed by the peer as a duplicate of a link it keeps: queues keep their transfers for it.
        #expect(PeerEventRouting.route(.linkDown(peer, nodeStopping: false, peerClosed: true, asDuplicate: true)) == [
            .membership(.linkDown(peer, probe: false)), .queues(.disconnected(peer, keepingTransfers: true)), .calls(.disconnected(peer)),
        ])
    }

    @Test func verdicts() {
        #expect(PeerEventRouting.route(.joined(peer, linked: true)) == [
            .calls(.joined(peer)), .queues(.rejoined(peer, linked: true)), .manager(.joined(peer)),
        ])
        #expect(PeerEventRouting.route(.dead(peer)) == [.queues(.died(peer)), .calls(.died(peer))])
        // A new process with no verdict on the old one: a death, then a join.
        #expect(PeerEventRouting.route(.restarted(peer, linked: true)) == [
            .queues(.restarted(peer, linked: true)), .calls(.died(peer)), .calls(.joined(peer)), .manager(.joined(peer)),
        ])
        #expect(PeerEventRouting.route(.refuted) == [.queues(.declaredDead)])
        // A leaver's owners take back what it could not hand on, as after a death.
        #expect(PeerEventRouting.route(.left(peer)) == [.queues(.died(peer)), .calls(.left(peer)), .manager(.gone(peer))])
    }

    @Test func noDisconnectAloneReQueuesHeldItems() {
        let events: [PeerEvent] = [.linkUp(peer, incarnation: 1), .linkReplaced(peer), .linkDown(peer, nodeStopping: false)]
        for event in events {
            #expect(!PeerEventRouting.route(event).contains(.queues(.died(peer))))
        }
    }
}
