@testable import P2PQQueue
import P2PQWire
import Testing

@Suite struct PeerViewsTests {
    /// Random inserts, updates and removals against a dictionary: the same views, always
    /// walked in ascending peer order whatever the order of insertion.
    @Test("Peer views behave like a dictionary walked in ascending ID order", arguments: [1, 2, 3] as [UInt64])
    func matchesADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        let ids = (0..<40).map { _ in PeerID(bytes: (0..<32).map { _ in UInt8(truncatingIfNeeded: random.next()) })! }
        var views = PeerViews()
        var model: [PeerID: PeerView] = [:]
        for step in 0..<3_000 {
            let peer = ids[Int(random.next() % UInt64(ids.count))]
            switch random.next() % 4 {
            case 0:
                views[peer] = nil
                model[peer] = nil
            case 1:
                views.update(peer) { $0.inFlight += 1 }  // nothing for an untracked peer
                model[peer]?.inFlight += 1
            default:
                var view = PeerView()
                view.inFlight = step
                views[peer] = view
                model[peer] = view
            }
            #expect(views.count == model.count)
            #expect(Array(views.keys) == model.keys.sorted())
            #expect(views.values.map(\.inFlight) == model.keys.sorted().map { model[$0]?.inFlight ?? -1 })
            #expect(views[peer]?.inFlight == model[peer]?.inFlight)
        }
        let connected = views.filter { $0.value.inFlight % 2 == 0 }
        #expect(Array(connected.keys) == model.filter { $0.value.inFlight % 2 == 0 }.keys.sorted())
    }
}
