import P2PQMembership
import P2PQWire
import Testing

/// A partition that heals: both halves declared each other dead, then the links come back.
@Suite struct PartitionTests {
    /// Runs until every node sees every other alive, in 50 ms steps up to `bound`; returns the
    /// time it took, or nil.
    private func convergence(_ cluster: inout Cluster, bound: UInt64) -> UInt64? {
        let start = cluster.now
        while cluster.now - start <= bound {
            let allAlive = cluster.order.allSatisfy { observer in
                cluster.order.allSatisfy { $0 == observer || cluster.state(of: $0, at: observer) == .alive }
            }
            if allAlive { return cluster.now - start }
            cluster.run(until: cluster.now + 50 * ms)
        }
        return nil
    }

    /// The case: A and C on one side, B on the other, cut for 10 s. Before the fix B's
    /// stale verdicts reached A and C over the healed links, each then believed the other dead,
    /// and as nobody probes or gossips to a member it believes dead, A and C kept each other
    /// dead on a working link for good.
    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6, 7, 8])
    func healedPartitionConvergesToAllAlive(seed: UInt64) {
        var cluster = Cluster(size: 3, seed: seed)
        let (a, b, c) = (peer(0), peer(1), peer(2))
        cluster.run(until: 2 * second)
        cluster.partition([a, c], from: [b])
        cluster.run(until: cluster.now + 10 * second)
        #expect(cluster.state(of: b, at: a) == .dead)
        #expect(cluster.state(of: a, at: b) == .dead)
        #expect(cluster.state(of: c, at: b) == .dead)
        cluster.heal()
        let took = convergence(&cluster, bound: 5 * second)
        #expect(took != nil, "not all alive 5 s after the heal")
        if let took { #expect(took <= 2 * second, "converged after \(Double(took) / Double(second)) s") }
        // Failure detection works again: a crash of C is detected by both others.
        cluster.run(until: cluster.now + 2 * second)
        cluster.kill(c)
        cluster.run(until: cluster.now + 5 * second)
        #expect(cluster.state(of: c, at: a) == .dead)
        #expect(cluster.state(of: c, at: b) == .dead)
        #expect(cluster.state(of: a, at: b) == .alive)
        #expect(cluster.state(of: b, at: a) == .alive)
    }

    /// A larger cluster cut in two halves for 10 s converges back within the same bound.
    @Test func healedHalvesConverge() {
        var cluster = Cluster(size: 8, seed: 11)
        cluster.run(until: 2 * second)
        let left = Array(cluster.order.prefix(4))
        let right = Array(cluster.order.suffix(4))
        cluster.partition(left, from: right)
        cluster.run(until: cluster.now + 10 * second)
        #expect(cluster.state(of: right[0], at: left[0]) == .dead)
        cluster.heal()
        let took = convergence(&cluster, bound: 5 * second)
        #expect(took != nil, "not all alive 5 s after the heal")
        if let took { #expect(took <= 2 * second, "converged after \(Double(took) / Double(second)) s") }
    }
}
