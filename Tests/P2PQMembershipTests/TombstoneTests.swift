import P2PQMembership
import P2PQWire
import Testing

@Suite("Membership tombstones")
struct TombstoneTests {
    /// A retention that is no multiple of any protocol timer, so only the tombstone's own
    /// deadline can make a tick land exactly on it.
    static let retention: UInt64 = 5 * second + 7 * ms

    static func configuration(fanout: Int = 3, maxMembers: Int = 4096) -> MembershipConfiguration {
        var config = MembershipConfiguration()
        config.tombstoneRetention = retention
        config.gossipFanout = fanout
        config.maxMembers = maxMembers
        return config
    }

    /// Updates about `member` on every send so far.
    static func mentions(_ member: Int, in sends: [(MembershipMessage, PeerID)]) -> Bool {
        sends.contains { $0.0.updates.contains { $0.member == peer(member) } }
    }

    @Test("A dead member is kept until its retention ends, then forgotten by the timer alone")
    func prunedAfterRetention() {
        var node = Driver(members: [1, 2, 3], configuration: Self.configuration())
        node.autoAck = Set([1, 3].map(peer))
        node.advance(to: 1 * ms)
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        #expect(node.events == [.dead(peer(2))])
        let expiry = 1 * ms + Self.retention
        #expect(node.membership.tombstoneExpiry(of: peer(2)) == expiry)
        node.advance(to: expiry - 1)
        #expect(node.membership.state(of: peer(2)) == .dead)
        // No input but the timer: the machine armed it for the expiry itself.
        node.advance(to: expiry)
        #expect(node.membership.state(of: peer(2)) == nil)
        #expect(node.membership.tombstoneExpiry(of: peer(2)) == nil)
        #expect(node.membership.members.map(\.peer) == [peer(1), peer(3)])
        // A left member is forgotten the same way.
        node.receive(.gossip(updates: [update(.left, 3, 100)]), from: 3)
        #expect(node.membership.state(of: peer(3)) == .left)
        node.advance(to: node.now + Self.retention)
        #expect(node.membership.state(of: peer(3)) == nil)
    }

    @Test("A later verdict at a higher incarnation keeps the tombstone longer")
    func laterVerdictExtends() {
        var node = Driver(members: [1, 2], configuration: Self.configuration())
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        node.advance(to: 2 * second)
        node.receive(.gossip(updates: [update(.dead, 2, 101, by: 1)]), from: 1)
        #expect(node.membership.tombstoneExpiry(of: peer(2)) == 2 * second + Self.retention)
        // The same verdict again is old news and does not.
        node.receive(.gossip(updates: [update(.dead, 2, 101, by: 1)]), from: 1)
        #expect(node.membership.tombstoneExpiry(of: peer(2)) == 2 * second + Self.retention)
    }

    @Test("A forgotten member leaves nothing behind: no suspicion, probe, gossip or view entry")
    func forgottenStateIsFreed() {
        // Piggyback only, and no one else to tell: the verdict stays queued until forgotten.
        var node = Driver(members: [2], configuration: Self.configuration(fanout: 0))
        node.receive(.gossip(updates: [update(.suspect, 2, 100, by: 5)]), from: 2)
        #expect(node.membership.suspicionDeadline(of: peer(2)) != nil)
        node.advance(to: 10 * ms)
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 5)]), from: 2)
        #expect(node.membership.state(of: peer(2)) == .dead)
        #expect(node.membership.suspicionDeadline(of: peer(2)) == nil)
        node.advance(to: 10 * ms + Self.retention)
        #expect(node.membership.state(of: peer(2)) == nil)
        _ = node.drainSends()
        // A newcomer learns nothing about it, neither in its view nor piggybacked later.
        node.autoAck = [peer(3)]
        node.take(node.membership.linkUp(peer(3), incarnation: 100, now: node.now))
        node.advance(to: node.now + 5 * second)
        let sends = node.drainSends()
        #expect(!Self.mentions(2, in: sends))
        #expect(sends.allSatisfy { $0.1 == peer(3) })
        #expect(sends.contains { if case .ping = $0.0 { true } else { false } })
    }

    @Test("After it is forgotten, a member rejoins like a stranger")
    func rejoinAfterPruning() {
        var node = Driver(members: [1, 2], configuration: Self.configuration())
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        node.advance(to: Self.retention)
        #expect(node.membership.state(of: peer(2)) == nil)
        node.events = []
        // A new link of the same process joins it again.
        node.take(node.membership.linkUp(peer(2), incarnation: 100, now: node.now))
        #expect(node.events == [.joined(peer(2))])
        #expect(node.membership.state(of: peer(2)) == .alive)
        // It is probed again.
        node.autoAck = [peer(1), peer(2)]
        _ = node.drainSends()
        node.advance(to: node.now + 3 * second)
        #expect(node.drainSends().contains { if case .ping = $0.0 { $0.1 == peer(2) } else { false } })
        // Declared dead and forgotten again, a restart announced by gossip joins it too.
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        node.advance(to: node.now + Self.retention)
        #expect(node.membership.state(of: peer(2)) == nil)
        node.events = []
        node.receive(.gossip(updates: [update(.alive, 2, 101)]), from: 1)
        #expect(node.events == [.joined(peer(2))])
        #expect(node.members(at: 2) == 101)
    }

    @Test("A stale alive during the retention does not resurrect; a newer incarnation does")
    func staleAliveDoesNotResurrect() {
        var node = Driver(members: [1, 2], configuration: Self.configuration())
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        node.events = []
        node.autoAck = [peer(1)]
        node.advance(to: Self.retention - 1)
        node.receive(.gossip(updates: [update(.alive, 2, 100)]), from: 1)
        node.take(node.membership.linkUp(peer(2), incarnation: 100, now: node.now))
        #expect(node.membership.state(of: peer(2)) == .dead)
        #expect(node.events.isEmpty)
        node.receive(.gossip(updates: [update(.alive, 2, 101)]), from: 2)
        #expect(node.events == [.joined(peer(2))])
        #expect(node.membership.tombstoneExpiry(of: peer(2)) == nil)
        // Alive again, it is not forgotten when the old tombstone would have expired.
        node.autoAck = [peer(1), peer(2)]
        node.advance(to: Self.retention + 1 * second)
        #expect(node.membership.state(of: peer(2)) == .alive)
    }

    @Test("The table is bounded: the oldest tombstone makes room, live members never do")
    func boundedTable() {
        var node = Driver(members: [1, 2, 3], configuration: Self.configuration(maxMembers: 3))
        node.events = []
        node.receive(.gossip(updates: [update(.alive, 4, 100)]), from: 1)
        #expect(node.membership.state(of: peer(4)) == nil)
        #expect(node.events.isEmpty)
        node.receive(.gossip(updates: [update(.dead, 3, 100, by: 1)]), from: 1)
        node.advance(to: 1 * ms)
        node.receive(.gossip(updates: [update(.left, 2, 100)]), from: 2)
        node.events = []
        // Full with two tombstones: the one that expires first goes.
        node.receive(.gossip(updates: [update(.alive, 4, 100)]), from: 1)
        #expect(node.events == [.joined(peer(4))])
        #expect(node.membership.state(of: peer(3)) == nil)
        #expect(node.membership.state(of: peer(2)) == .left)
        #expect(node.membership.members.count == 3)
        // A verdict about a stranger takes the last tombstone's place, never a live member's.
        node.receive(.gossip(updates: [update(.dead, 5, 100, by: 1)]), from: 1)
        #expect(node.membership.state(of: peer(5)) == .dead)
        #expect(node.membership.state(of: peer(2)) == nil)
        node.receive(.gossip(updates: [update(.dead, 6, 100, by: 1)]), from: 1)
        #expect(node.membership.state(of: peer(6)) == .dead)
        #expect(node.membership.state(of: peer(5)) == nil)
        #expect(node.membership.members.map(\.peer) == [peer(1), peer(4), peer(6)])
    }
}

extension Driver {
    /// The incarnation this node knows for member `n`.
    func members(at n: Int) -> UInt64? {
        membership.members.first { $0.peer == peer(n) }?.incarnation
    }
}
