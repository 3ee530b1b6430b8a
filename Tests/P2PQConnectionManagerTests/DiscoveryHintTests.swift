import Testing
import P2PQConnectionManager

@Suite struct DiscoveryHintTests {
    /// A discovered peer is dialed once; repeats, itself, linked peers and our own address are not.
    @Test func discoveredPeersAreDialedOnce() {
        var m = makeManager(0)
        _ = m.start(bootstrap: [], now: 0)
        #expect(m.discovered(peer: 2, address: address(2), now: ms).dials == [address(2)])
        #expect(m.discovered(peer: 2, address: address(2), now: 2 * ms).dials.isEmpty, "already dialing")
        #expect(m.discovered(peer: 0, address: address(9), now: 3 * ms).dials.isEmpty, "this node")
        #expect(m.discovered(peer: 9, address: address(0), now: 3 * ms).dials.isEmpty, "our own address")
        _ = m.linkUp(link: LinkID(1), peer: 2, direction: .outbound, peerAddress: address(2), dialedAddress: address(2), now: 4 * ms)
        #expect(m.discovered(peer: 2, address: address(2), now: 5 * ms).dials.isEmpty, "linked")
        // A failed dial backs off like any other; the redial comes from the timer.
        #expect(m.discovered(peer: 3, address: address(3), now: 6 * ms).dials == [address(3)])
        let actions = m.dialFailed(address: address(3), now: 7 * ms)
        #expect(m.record(at: address(3))?.state != nil)
        #expect(actions.dials.isEmpty)
        _ = m.stop(now: 8 * ms)
        #expect(m.discovered(peer: 4, address: address(4), now: 9 * ms).isEmpty)
    }
}
