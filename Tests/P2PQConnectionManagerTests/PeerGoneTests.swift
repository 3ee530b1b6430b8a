import P2PQConnectionManager
import Testing

/// Keepalive far away, so only redial deadlines drive the timer.
private let quiet = ConnectionConfiguration(keepaliveInterval: 1000 * second, keepaliveTimeout: 3000 * second)

/// Membership's verdict (dead or left) stops the redials of a peer.
@Suite struct PeerGoneTests {
    /// A manager linked to peer 1 (inbound, L1) that learned peer 2's address from it and
    /// failed to dial it once: address(2) is backing off.
    private func backingOff() throws -> TestManager {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: LinkID(1), peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        #expect(m.peerListReceived(from: LinkID(1), entries: [Entry(peer: 2, address: address(2))], now: 0).dials
            == [address(2)])
        _ = m.dialFailed(address: address(2), now: ms)
        _ = try #require(m.backoffDeadline(of: address(2)))
        return m
    }

    @Test func goneStopsRedialsAndForgetsTheAddress() throws {
        var m = try backingOff()
        let actions = m.peerGone(2, now: 2 * ms)
        // Only the link's keepalive is left to time.
        #expect(actions == [.armTimer(at: 1000 * second)])
        #expect(m.record(at: address(2)) == nil)
        #expect(m.peers.map(\.peer) == [1])
        #expect(m.tick(now: 100 * second).dials.isEmpty)
        // News of the peer later is handled as for a stranger.
        #expect(m.peerListReceived(from: LinkID(1), entries: [Entry(peer: 2, address: address(2))],
                                   now: 101 * second).dials == [address(2)])
        _ = m.dialFailed(address: address(2), now: 102 * second)
        #expect(m.backoffDeadline(of: address(2)) != nil)
        _ = m.peerGone(2, now: 103 * second)
        #expect(m.discovered(peer: 2, address: address(2), now: 104 * second).dials == [address(2)])
        let up = m.linkUp(link: LinkID(2), peer: 2, direction: .outbound, peerAddress: address(2),
                          dialedAddress: address(2), now: 105 * second)
        #expect(up.connects == [2])
    }

    @Test func aGivenUpAddressIsForgottenToo() throws {
        var m = try backingOff()
        var now = ms
        for _ in 2...quiet.maxDialAttempts {
            now = try #require(m.backoffDeadline(of: address(2)))
            #expect(m.tick(now: now).dials == [address(2)])
            _ = m.dialFailed(address: address(2), now: now)
        }
        #expect(m.record(at: address(2))?.state == .failed)
        _ = m.peerGone(2, now: now)
        #expect(m.record(at: address(2)) == nil)
    }

    @Test func aDialInFlightThatFailsIsNotRetried() {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: LinkID(1), peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.peerListReceived(from: LinkID(1), entries: [Entry(peer: 2, address: address(2))], now: 0)
        #expect(m.record(at: address(2))?.state == .connecting)
        #expect(m.peerGone(2, now: ms).isEmpty)
        _ = m.dialFailed(address: address(2), now: 2 * ms)
        #expect(m.record(at: address(2)) == nil)
        #expect(m.tick(now: 100 * second).dials.isEmpty)
    }

    @Test func aDialInFlightThatSucceedsIsAnOrdinaryLink() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: LinkID(1), peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.peerListReceived(from: LinkID(1), entries: [Entry(peer: 2, address: address(2))], now: 0)
        _ = m.peerGone(2, now: ms)
        let up = m.linkUp(link: LinkID(2), peer: 2, direction: .outbound, peerAddress: address(2),
                          dialedAddress: address(2), now: 2 * ms)
        #expect(up.connects == [2])
        // The peer is back: losing it now is redialed as usual.
        _ = m.linkDown(link: LinkID(2), now: 3 * ms)
        _ = try #require(m.backoffDeadline(of: address(2)))
    }

    @Test func aLinkedPeerIsForgottenWhenItsLinkCloses() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: LinkID(2), peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        // The link is left alone while it lasts.
        #expect(m.peerGone(2, now: ms).isEmpty)
        #expect(m.link(to: 2) == LinkID(2))
        #expect(m.linkDown(link: LinkID(2), now: 2 * ms).disconnects == [2])
        #expect(m.peers.isEmpty)
        #expect(m.tick(now: 100 * second).dials.isEmpty)
        // It comes back on its own: an ordinary link, redialed when lost.
        #expect(m.linkUp(link: LinkID(3), peer: 2, direction: .inbound, peerAddress: address(2),
                         now: 101 * second).connects == [2])
        _ = m.linkDown(link: LinkID(3), now: 102 * second)
        _ = try #require(m.backoffDeadline(of: address(2)))
    }

    @Test func aRefutedVerdictOnALinkedPeerIsUndone() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: LinkID(2), peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        _ = m.peerGone(2, now: ms)
        #expect(m.peerJoined(2, now: 2 * ms).isEmpty)
        _ = m.linkDown(link: LinkID(2), now: 3 * ms)
        _ = try #require(m.backoffDeadline(of: address(2)))
        // Joined news of a peer without a link changes nothing.
        #expect(m.peerJoined(5, now: 4 * ms).isEmpty)
    }

    @Test func aLinkedPeerClosedForSilenceIsNotRedialed() {
        var m = makeManager(0, configuration: ConnectionConfiguration(keepaliveInterval: second,
                                                                             keepaliveTimeout: 3 * second))
        _ = m.linkUp(link: LinkID(2), peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        _ = m.peerGone(2, now: ms)
        let actions = m.tick(now: 3 * second)
        #expect(actions.closes.map(\.1) == [.keepaliveTimeout])
        #expect(actions.disconnects == [2])
        #expect(m.peers.isEmpty)
        #expect(m.tick(now: 100 * second).dials.isEmpty)
    }

    @Test func bootstrapAddressesAreStillRetried() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.start(bootstrap: [address(7)], now: 0)
        _ = m.linkUp(link: LinkID(7), peer: 7, direction: .outbound, peerAddress: address(7),
                     dialedAddress: address(7), now: ms)
        // Lost, backing off, then declared dead: the bootstrap redial stays.
        _ = m.linkDown(link: LinkID(7), now: 2 * ms)
        let until = try #require(m.backoffDeadline(of: address(7)))
        #expect(m.peerGone(7, now: 3 * ms).isEmpty)
        #expect(m.backoffDeadline(of: address(7)) == until)
        #expect(m.tick(now: until).dials == [address(7)])
        // Declared gone while linked: redialed at maxBackoff once the link closes.
        _ = m.linkUp(link: LinkID(8), peer: 7, direction: .outbound, peerAddress: address(7),
                     dialedAddress: address(7), now: until + ms)
        _ = m.peerGone(7, now: until + 2 * ms)
        _ = m.linkDown(link: LinkID(8), now: until + 3 * ms)
        let next = try #require(m.backoffDeadline(of: address(7)))
        #expect((5 * second ... 10 * second).contains(next - (until + 3 * ms)))
    }

    @Test func goneAfterStopOrForThisNodeDoesNothing() {
        var m = makeManager(0, configuration: quiet)
        #expect(m.peerGone(0, now: 0).isEmpty)
        _ = m.stop(now: 0)
        #expect(m.peerGone(2, now: 1).isEmpty)
    }
}
