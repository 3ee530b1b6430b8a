import Foundation
import P2PQMembership
import P2PQTestSupport
import Testing

/// Membership draws its randomness from its seeded generator only and never from dictionary or
/// set order (seeded afresh in every process): a cluster run again from the same seeds sends
/// the same messages and reports the same events, here and in another process.
@Suite("Determinism: a simulated membership cluster does the same, run again here or in another process")
struct MembershipDeterminismTests {
    static let hashPrefix = "membership-determinism-hash: "

    /// Eight members: a death, a stopped member that comes back, a partition healed.
    static func scenario() throws -> (hash: TraceHash, events: Int) {
        var cluster = Cluster(size: 8, seed: 11)
        cluster.run(until: 3 * second)
        cluster.kill(peer(3))
        cluster.stopped.insert(peer(5))
        cluster.run(until: 9 * second)
        cluster.stopped.remove(peer(5))
        cluster.partition([peer(0), peer(1), peer(2)], from: [peer(4), peer(5), peer(6), peer(7)])
        cluster.run(until: 16 * second)
        cluster.heal()
        cluster.run(until: 30 * second)
        var hash = TraceHash()
        for (from, to, message) in cluster.sent {
            hash.add(cluster.order.firstIndex(of: from) ?? -1)
            hash.add(cluster.order.firstIndex(of: to) ?? -1)
            hash.add(bytes: try message.encoded())
        }
        for event in cluster.events {
            hash.add(event.at)
            hash.add(cluster.order.firstIndex(of: event.observer) ?? -1)
            hash.add(bytes: Array("\(event.event)".utf8))
        }
        return (hash, cluster.events.count)
    }

    @Test("Run twice in this process: the same messages and events")
    func sameInThisProcess() throws {
        let first = try Self.scenario()
        #expect(first.events > 0)
        #expect(first.hash == (try Self.scenario()).hash)
    }

    @Test("Run in two other processes (their own hash seeds): the same trace as here")
    func sameAcrossProcesses() throws {
        guard !DeterminismChild.isChild else { return }
        let here = try Self.scenario().hash.description
        for lines in try DeterminismChild.hashes(printedBy: "MembershipDeterminismTests/childPrintsHash", prefix: Self.hashPrefix) {
            #expect(lines == [here], "this process \(here), the child printed \(lines)")
        }
    }

    /// What the child processes run.
    @Test("(child) prints the scenario's hash", .enabled(if: DeterminismChild.isChild))
    func childPrintsHash() throws {
        print(Self.hashPrefix + (try Self.scenario()).hash.description)
    }
}
