import P2PQConnectionManager
import Testing

private let quiet = ConnectionConfiguration(keepaliveInterval: 1000 * second, keepaliveTimeout: 3000 * second)
private let L1 = LinkID(1)

@Suite struct SeedTests {
    /// The backoff jitter comes from the injected generator alone: the same seed gives the same
    /// actions, another seed other ones.
    @Test func theSameSeedGivesTheSameActions() {
        func run(seed: UInt64) -> [Action] {
            var m = makeManager(0, configuration: quiet, seed: seed)
            var all = m.linkUp(link: L1, peer: 1, direction: .inbound, peerAddress: address(1), now: 0)
            all += m.peerListReceived(from: L1, entries: [Entry(peer: 2, address: address(2))], now: 0)
            var now: UInt64 = 0
            for _ in 1...6 {
                now += ms
                all += m.dialFailed(address: address(2), now: now)
                now += 20 * second
                all += m.tick(now: now)
            }
            return all
        }
        #expect(run(seed: 7) == run(seed: 7))
        #expect(run(seed: 7) != run(seed: 8))
    }
}
