import P2PQDiscovery
import P2PQTestSupport
import Testing

@Suite struct MDNSSeedTests {
    /// The answer delays and query jitter come from the injected generator alone: the same
    /// seed gives the same actions, another seed other ones.
    @Test func theSameSeedGivesTheSameActions() {
        func run(seed: UInt64) -> [MDNSAction] {
            var a = MDNSMachine(configuration: configuration(1), randomNumberGenerator: SplitMix64(seed: seed))
            var all = a.start(now: 0)
            var now: UInt64 = 0
            for _ in 0..<8 {
                now = max(now + ms, all.timer ?? now + second)
                all += a.tick(now: now)
            }
            return all
        }
        #expect(run(seed: 3) == run(seed: 3))
        #expect(run(seed: 3) != run(seed: 4))
    }
}
