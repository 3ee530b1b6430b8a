import P2PQMembership
import P2PQWire
import Testing

/// A member with the cluster key can gossip anything; these rumours must not evict a live
/// member for good (docs/protocol.md §8, "Incarnations").
@Suite("Membership: forged incarnations")
struct IncarnationBoundTests {
    @Test("dead(X) at UInt64.max is refused and counted: X's incarnation does not wrap, X stays alive")
    func deadAtMaxIsRefused() {
        // X itself hears the rumour.
        var x = Driver(peer(0), members: [1])
        x.receive(.gossip(updates: [update(.dead, 0, .max, by: 1)]), from: 1)
        #expect(x.membership.incarnation == 100)
        #expect(x.membership.refusedUpdates == 1)
        // A third node hears it about X.
        var observer = Driver(peer(2), members: [0, 1])
        observer.receive(.gossip(updates: [update(.dead, 0, .max, by: 1), update(.suspect, 0, .max, by: 1),
                                           update(.left, 0, .max)]), from: 1)
        #expect(observer.membership.state(of: peer(0)) == .alive)
        #expect(observer.membership.refusedUpdates == 3)
        #expect(observer.events.isEmpty)
    }

    @Test("A verdict just below the ceiling is refuted within it, and the refutation brings X back everywhere")
    func refutationSaturates() {
        let top = MembershipMachine.maxIncarnation
        var x = Driver(peer(0), members: [1])
        x.receive(.gossip(updates: [update(.dead, 0, top - 1, by: 1)]), from: 1)
        #expect(x.membership.incarnation == top)
        #expect(x.membership.refusedUpdates == 0)
        var observer = Driver(peer(2), members: [0, 1])
        observer.receive(.gossip(updates: [update(.dead, 0, top - 1, by: 1)]), from: 1)
        #expect(observer.membership.state(of: peer(0)) == .dead)
        observer.receive(.gossip(updates: [update(.alive, 0, x.membership.incarnation)]), from: 0)
        #expect(observer.membership.state(of: peer(0)) == .alive)
        // An alive above the ceiling is refused too; one at it does not push X past it.
        observer.receive(.gossip(updates: [update(.alive, 0, .max)]), from: 1)
        #expect(observer.membership.refusedUpdates == 1)
        x.receive(.gossip(updates: [update(.alive, 0, top)]), from: 1)
        #expect(x.membership.incarnation == top)
    }

    @Test("A hello's incarnation is held to the ceiling")
    func helloIncarnationClamped() {
        var node = Driver(peer(0), members: [])
        node.take(node.membership.linkUp(peer(1), incarnation: .max, now: 0))
        #expect(node.membership.members.first { $0.peer == peer(1) }?.incarnation == MembershipMachine.maxIncarnation)
    }
}
