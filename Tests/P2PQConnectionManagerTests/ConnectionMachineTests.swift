import Testing
import P2PQConnectionManager

private let L1 = LinkID(1)
private let L2 = LinkID(2)
private let L3 = LinkID(3)

/// Keepalive far away, so only redial deadlines drive the timer.
private let quiet = ConnectionConfiguration(keepaliveInterval: 1000 * second, keepaliveTimeout: 3000 * second)

private func expectedDelay(failures: Int, base: UInt64 = 100 * ms, cap: UInt64 = 10 * second) -> ClosedRange<UInt64> {
    let delay = failures >= 63 ? cap : min(cap, base << UInt64(failures))
    return delay / 2 ... delay
}

@Suite struct BackoffTests {
    /// A peer-list address: each failure doubles the delay (jittered within [d/2, d], capped at
    /// 10 s); after 10 failed dials the address is given up.
    @Test func exponentialJitteredCappedThenGivesUp() throws {
        var firstDelays = Set<UInt64>()
        for seed in 1...20 as ClosedRange<UInt64> {
            var m = makeManager(0, configuration: quiet, seed: seed)
            _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
            var actions = m.peerListReceived(from: L1, entries: [Entry(peer: 2, address: address(2))], now: 0)
            #expect(actions.dials == [address(2)])
            var now: UInt64 = 0
            for failure in 1...10 {
                now += ms
                actions = m.dialFailed(address: address(2), now: now)
                if failure == 10 {
                    #expect(m.record(at: address(2))?.state == .failed)
                    break
                }
                let until = try #require(m.backoffDeadline(of: address(2)))
                #expect(expectedDelay(failures: failure).contains(until - now), "failure \(failure)")
                #expect(actions.contains(.armTimer(at: until)))
                if failure == 1 { firstDelays.insert(until - now) }
                #expect(m.tick(now: until - 1).dials.isEmpty)
                now = until
                #expect(m.tick(now: now).dials == [address(2)])
            }
            #expect(m.tick(now: now + 100 * second).dials.isEmpty)
            // Given up, but a fresh mention earns one more try (and straight back to failed).
            actions = m.peerListReceived(from: L1, entries: [Entry(peer: 2, address: address(2))], now: now + 101 * second)
            #expect(actions.dials == [address(2)])
            _ = m.dialFailed(address: address(2), now: now + 102 * second)
            #expect(m.record(at: address(2))?.state == .failed)
        }
        #expect(firstDelays.count > 1, "no jitter")
    }

    /// Bootstrap addresses never give up; their delay stays capped at maxBackoff.
    @Test func bootstrapRetriedForever() throws {
        var m = makeManager(0)
        #expect(m.start(bootstrap: [address(7), address(7)], now: 0).dials == [address(7)])
        var now: UInt64 = 0
        for failure in 1...40 {
            now += ms
            _ = m.dialFailed(address: address(7), now: now)
            let until = try #require(m.backoffDeadline(of: address(7)), "failure \(failure)")
            #expect(expectedDelay(failures: failure).contains(until - now))
            if failure >= 7 { #expect(until - now >= 5 * second) }
            now = until
            #expect(m.tick(now: now).dials == [address(7)])
        }
    }

    /// A successful link resets the count: the next loss redials after baseBackoff.
    @Test func successResetsAttempts() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.start(bootstrap: [address(1)], now: 0)
        var now: UInt64 = 0
        for _ in 1...5 {
            _ = m.dialFailed(address: address(1), now: now)
            now = try #require(m.backoffDeadline(of: address(1)))
            #expect(m.tick(now: now).dials == [address(1)])
        }
        let up = m.linkUp(link: L1, peer: 1, direction: .outbound, peerAddress: address(1),
                          dialedAddress: address(1), now: now)
        #expect(up.connects == [1])
        now += second
        #expect(m.linkDown(link: L1, now: now).disconnects == [1])
        let until = try #require(m.backoffDeadline(of: address(1)))
        #expect(expectedDelay(failures: 0).contains(until - now))
        now = until
        #expect(m.tick(now: now).dials == [address(1)])
        _ = m.dialFailed(address: address(1), now: now)
        #expect(expectedDelay(failures: 1).contains(try #require(m.backoffDeadline(of: address(1))) - now))
    }

    /// A goodbye is not redialed, except for a bootstrap peer (at maxBackoff); a lost inbound
    /// peer is redialed at the address it advertised; one without an address is not.
    @Test func whatGetsRedialedAfterALoss() throws {
        var m = makeManager(0, configuration: quiet)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkDown(link: L1, now: 10, peerLeft: true)
        #expect(m.peers.isEmpty)

        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 20)
        #expect(m.linkDown(link: L2, now: 30).disconnects == [2])
        #expect(expectedDelay(failures: 0).contains(try #require(m.backoffDeadline(of: address(2))) - 30))

        _ = m.linkUp(link: L3, peer: 3, direction: .inbound, peerAddress: nil, now: 40)
        _ = m.linkDown(link: L3, now: 50)
        #expect(m.peers.count == 1)

        _ = m.start(bootstrap: [address(4)], now: 60)
        _ = m.linkUp(link: LinkID(4), peer: 4, direction: .outbound, peerAddress: address(4),
                     dialedAddress: address(4), now: 70)
        _ = m.linkDown(link: LinkID(4), now: 80, peerLeft: true)
        let until = try #require(m.backoffDeadline(of: address(4)))
        #expect((5 * second ... 10 * second).contains(until - 80))
    }
}

@Suite struct KeepaliveTests {
    @Test func pingAfterIntervalCloseAfterTimeoutHeardResets() throws {
        var m = makeManager(0)
        #expect(m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
            == [.peerConnected(1, L1), .armTimer(at: second)])
        #expect(m.tick(now: second - 1).isEmpty)
        #expect(m.tick(now: second) == [.sendPing(L1), .armTimer(at: 2 * second)])
        #expect(m.tick(now: 1500 * ms).isEmpty, "at most one ping per interval")
        #expect(m.tick(now: 2 * second) == [.sendPing(L1), .armTimer(at: 3 * second)])
        m.heard(link: L1, now: 2500 * ms)
        // The timer was not moved by `heard`; the tick finds nothing due and re-arms.
        #expect(m.tick(now: 3 * second) == [.armTimer(at: 3500 * ms)])
        #expect(m.tick(now: 3500 * ms) == [.sendPing(L1), .armTimer(at: 4500 * ms)])
        #expect(m.tick(now: 4500 * ms) == [.sendPing(L1), .armTimer(at: 5500 * ms)])
        let closing = m.tick(now: 5500 * ms)
        let until = try #require(m.backoffDeadline(of: address(1)))
        #expect(closing == [
            .closeLink(L1, reason: .keepaliveTimeout),
            .peerDisconnected(1, reason: .keepaliveTimeout),
            .armTimer(at: until),
        ])
        #expect(expectedDelay(failures: 0).contains(until - 5500 * ms))
        #expect(m.connectedPeerCount == 0)
        #expect(m.linkDown(link: L1, now: 5600 * ms).isEmpty, "the manager already forgot the link")
        #expect(m.record(at: address(1))?.lastSeen == 2500 * ms)
    }
}

@Suite struct LinkPolicyTests {
    @Test func selfConnectionIsClosedAndNeverDialedAgain() {
        var m = makeManager(0)
        #expect(m.start(bootstrap: ["alias", address(0)], now: 0).dials == ["alias"])
        let outbound = m.linkUp(link: L1, peer: 0, direction: .outbound, peerAddress: address(0),
                                dialedAddress: "alias", now: 1)
        #expect(outbound.closes.map(\.1) == [.selfConnection] && outbound.closes.map(\.0) == [L1])
        let inbound = m.linkUp(link: L2, peer: 0, direction: .inbound, peerAddress: address(0), now: 1)
        #expect(inbound == [.closeLink(L2, reason: .selfConnection)])
        #expect(m.linkDown(link: L1, now: 2).isEmpty && m.linkDown(link: L2, now: 2).isEmpty)
        #expect(m.tick(now: 60 * second).dials.isEmpty)
        #expect(m.start(bootstrap: ["alias"], now: 61 * second).dials.isEmpty)
        _ = m.linkUp(link: L3, peer: 1, direction: .inbound, peerAddress: address(1), now: 62 * second)
        let list = m.peerListReceived(from: L3, entries: [
            Entry(peer: 2, address: "alias"), Entry(peer: 0, address: "elsewhere"), Entry(peer: 3, address: address(0)),
        ], now: 62 * second)
        #expect(list.dials.isEmpty)
        #expect(m.peers.map(\.state) == [.connected])
    }

    @Test("A full node makes room for a newcomer short of links: one of its links goes (not redialed), the newcomer's is kept")
    func fullNodeMakesRoomForNewcomer() throws {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxPeers: 2, minPeers: 1))
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        #expect(!m.needsLinks)
        let actions = m.linkUp(link: L3, peer: 3, direction: .inbound, peerAddress: address(3), peerNeedsLinks: true, now: 0)
        #expect(actions.closes.count == 1 && actions.closes.allSatisfy { $0.1 == .tooManyPeers && $0.0 != L3 })
        #expect(actions.connects == [3])
        let evicted = try #require(actions.compactMap { if case .peerDisconnected(let p, .evicted) = $0 { p } else { nil } }.first)
        #expect(evicted == 1 || evicted == 2)
        #expect(Set(m.linkedPeers) == Set([1, 2, 3].filter { $0 != evicted }))
        // Not redialed: it is full here.
        #expect(m.tick(now: 60 * second).dials.isEmpty)
    }

    @Test("A peer that closes the link itself (full) is redialed only after maxBackoff, and news of it brings no dial before")
    func refusedPeerWaitsMaxBackoff() {
        var m = makeManager(0, configuration: ConnectionConfiguration(baseBackoff: 100 * ms, maxBackoff: 10 * second))
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.peerListReceived(from: L1, entries: [Entry(peer: 2, address: address(2))], now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .outbound, peerAddress: address(2), dialedAddress: address(2), now: 1)
        #expect(m.linkDown(link: L2, now: 2, peerClosed: true).contains(.peerDisconnected(2, reason: .peerClosed)))
        let deadline = m.backoffDeadline(of: address(2)) ?? 0
        #expect(deadline >= 2 + 5 * second && deadline <= 2 + 10 * second, "redial at \(deadline)")
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 2, address: address(2))], now: 3).dials.isEmpty)
        #expect(m.tick(now: deadline).dials == [address(2)])
    }

    @Test("Short of links below minPeers, capped at half of maxPeers (a node that made room never becomes short)")
    func needsLinksBelowMinPeers() {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxPeers: 8, minPeers: 2))
        #expect(m.needsLinks)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        #expect(m.needsLinks)
        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        #expect(!m.needsLinks)
        var capped = makeManager(0, configuration: ConnectionConfiguration(maxPeers: 4, minPeers: 8))
        _ = capped.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        #expect(capped.needsLinks)
        _ = capped.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        #expect(!capped.needsLinks)
        #expect(!makeManager(0, configuration: ConnectionConfiguration(maxPeers: 1)).needsLinks)
    }

    @Test func maxPeers() throws {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxPeers: 2))
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        // Refused, with the addresses it may link to instead.
        #expect(m.linkUp(link: L3, peer: 3, direction: .inbound, peerAddress: address(3), now: 0)
            == [.sendPeerList(L3, [Entry(peer: 1, address: address(1)), Entry(peer: 2, address: address(2))]),
                .closeLink(L3, reason: .tooManyPeers)])
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 4, address: address(4))], now: 1).dials.isEmpty)
        _ = m.linkDown(link: L1, now: 2, peerLeft: true)
        // One free slot, and an in-flight dial takes it.
        let list = m.peerListReceived(from: L2, entries: [
            Entry(peer: 4, address: address(4)), Entry(peer: 5, address: address(5)),
        ], now: 3)
        #expect(list.dials == [address(4)])
        // A redial due while at the limit is postponed, not dropped and not counted.
        _ = m.dialFailed(address: address(4), now: 4)
        let due = try #require(m.backoffDeadline(of: address(4)))
        _ = m.linkUp(link: LinkID(6), peer: 6, direction: .inbound, peerAddress: address(6), now: 5)
        #expect(m.tick(now: due).dials.isEmpty)
        let later = try #require(m.backoffDeadline(of: address(4)))
        #expect((due + 5 * second ... due + 10 * second).contains(later))
    }

    @Test func stopClosesEverythingAndThenIgnoresInputs() {
        var m = makeManager(0)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .outbound, peerAddress: address(2), now: 0)
        _ = m.peerListReceived(from: L1, entries: [Entry(peer: 3, address: address(3))], now: 1)
        _ = m.dialFailed(address: address(3), now: 2)
        #expect(m.stop(now: 3) == [
            .closeLink(L1, reason: .leaving), .peerDisconnected(1, reason: .stopped),
            .closeLink(L2, reason: .leaving), .peerDisconnected(2, reason: .stopped),
            .cancelTimer,
        ])
        #expect(m.isStopped && m.peers.isEmpty && m.connectedPeerCount == 0)
        #expect(m.linkDown(link: L1, now: 4).isEmpty)
        #expect(m.linkUp(link: L3, peer: 4, direction: .inbound, peerAddress: address(4), now: 4).isEmpty)
        #expect(m.dialFailed(address: address(3), now: 4).isEmpty)
        #expect(m.tick(now: 100 * second).isEmpty)
        #expect(m.start(bootstrap: [address(5)], now: 5).isEmpty)
        #expect(m.peerListReceived(from: L3, entries: [Entry(peer: 6, address: address(6))], now: 6).isEmpty)
        #expect(m.stop(now: 7).isEmpty)
    }

    /// Same initiator twice (a peer that restarted and redialed): the newer link wins, and
    /// upper layers see a link change, not a disconnect.
    @Test func sameInitiatorNewerLinkWins() {
        var m = makeManager(0)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        #expect(m.linkUp(link: L3, peer: 1, direction: .inbound, peerAddress: address(1), now: 5) == [
            .closeLink(L1, reason: .duplicate),
            .peerLinkChanged(1, from: L1, to: L3),
            .sendPeerList(L3, [Entry(peer: 2, address: address(2))]),
        ])
        #expect(m.link(to: 1) == L3 && m.peer(on: L1) == nil)
        #expect(m.linkDown(link: L1, now: 6).isEmpty)
    }
}

@Suite struct PeerExchangeTests {
    @Test func newPeerGetsTheListAndTheOthersGetTheNews() {
        var m = makeManager(0)
        #expect(m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
            == [.peerConnected(1, L1), .armTimer(at: second)])
        // No address advertised: it learns the others but is not shared.
        #expect(m.linkUp(link: L2, peer: 2, direction: .outbound, peerAddress: nil, now: 0) == [
            .peerConnected(2, L2), .sendPeerList(L2, [Entry(peer: 1, address: address(1))]),
        ])
        #expect(m.linkUp(link: L3, peer: 3, direction: .inbound, peerAddress: address(3), now: 0) == [
            .peerConnected(3, L3),
            .sendPeerList(L3, [Entry(peer: 1, address: address(1))]),
            .sendPeerList(L1, [Entry(peer: 3, address: address(3))]),
            .sendPeerList(L2, [Entry(peer: 3, address: address(3))]),
        ])
    }

    @Test("A new peer's list holds at most maxPeerListEntries entries, the lowest peer IDs")
    func peerListCapped() {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxPeerListEntries: 2))
        for (n, link) in [(4, L1), (2, L2), (3, L3)] {
            _ = m.linkUp(link: link, peer: n, direction: .inbound, peerAddress: address(n), now: 0)
        }
        let actions = m.linkUp(link: LinkID(9), peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        #expect(actions.contains(.sendPeerList(LinkID(9), [Entry(peer: 2, address: address(2)), Entry(peer: 3, address: address(3))])))
    }

    @Test func peerListDialsOnlyWhatIsNew() {
        var m = makeManager(0)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
        _ = m.linkUp(link: L2, peer: 2, direction: .inbound, peerAddress: address(2), now: 0)
        let first = m.peerListReceived(from: L1, entries: [
            Entry(peer: 0, address: "me-elsewhere"),   // us
            Entry(peer: 2, address: "node-2b"),        // linked
            Entry(peer: 4, address: address(4)),
            Entry(peer: 4, address: "node-4b"),        // same peer again
            Entry(peer: 5, address: address(4)),       // same address again
            Entry(peer: 6, address: address(0)),       // our address
            Entry(peer: 7, address: address(7)),
        ], now: 1)
        #expect(first.dials == [address(4), address(7)])
        let second = m.peerListReceived(from: L2, entries: [
            Entry(peer: 4, address: address(4)),       // being dialed (by address)
            Entry(peer: 7, address: "node-7b"),        // being dialed (by peer)
            Entry(peer: 8, address: address(8)),
        ], now: 2)
        #expect(second.dials == [address(8)])
        _ = m.dialFailed(address: address(8), now: 3)
        #expect(m.peerListReceived(from: L2, entries: [Entry(peer: 8, address: address(8))], now: 4).dials.isEmpty,
                "in backoff")
        #expect(m.peerListReceived(from: LinkID(99), entries: [Entry(peer: 9, address: address(9))], now: 5).isEmpty,
                "lists from unknown links are ignored")
    }
}

@Suite struct PeerTableTests {
    @Test func statesAndLastSeen() throws {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxDialAttempts: 1))
        _ = m.start(bootstrap: ["seed"], now: 0)
        _ = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 5)
        _ = m.peerListReceived(from: L1, entries: [
            Entry(peer: 2, address: address(2)), Entry(peer: 3, address: address(3)),
        ], now: 6)
        _ = m.dialFailed(address: "seed", now: 10)
        _ = m.dialFailed(address: address(2), now: 10)
        m.heard(link: L1, now: 20)
        let until = try #require(m.backoffDeadline(of: "seed"))
        #expect(m.peers == [
            PeerRecord(peer: 1, address: address(1), state: .connected, lastSeen: 20, link: L1, direction: .inbound),
            PeerRecord(peer: nil, address: "seed", state: .backoff(until: until), lastSeen: 0),
            PeerRecord(peer: 2, address: address(2), state: .failed, lastSeen: 0),
            PeerRecord(peer: 3, address: address(3), state: .connecting, lastSeen: 0),
        ])
    }

    /// The address table is capped: the oldest failed address goes first; addresses that are
    /// pending or belong to a linked peer are kept, and when only those are left nothing new
    /// is dialed.
    @Test func addressTableIsBounded() {
        var m = makeManager(0, configuration: ConnectionConfiguration(maxDialAttempts: 1, maxKnownAddresses: 3))
        _ = m.linkUp(link: L1, peer: 9, direction: .inbound, peerAddress: address(9), now: 0)
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 1, address: "a"), Entry(peer: 2, address: "b")],
                                   now: 0).dials == ["a", "b"])
        _ = m.dialFailed(address: "a", now: 1)
        _ = m.dialFailed(address: "b", now: 2)
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 3, address: "c")], now: 3).dials == ["c"])
        #expect(m.record(at: "a") == nil && m.record(at: "b")?.state == .failed)
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 4, address: "d")], now: 4).dials == ["d"])
        #expect(m.record(at: "b") == nil)
        #expect(m.peerListReceived(from: L1, entries: [Entry(peer: 5, address: "e")], now: 5).dials.isEmpty)
        #expect(m.peers.compactMap(\.address) == [address(9), "c", "d"])
    }
}
