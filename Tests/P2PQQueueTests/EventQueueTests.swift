import P2PQTestSupport
import Testing

/// The simulations replay from their seeds only if the event order is total: by time, then by
/// scheduling order.
@Suite struct EventQueueTests {
    @Test func sameTimeComesOutInSchedulingOrder() {
        var queue = EventQueue<String>()
        queue.schedule("c1", at: 30)
        queue.schedule("a1", at: 10)
        queue.schedule("b1", at: 20)
        queue.schedule("a2", at: 10)
        queue.schedule("c2", at: 30)
        queue.schedule("a3", at: 10)
        #expect(queue.nextTime == 10)
        var out: [String] = []
        while let (time, event) = queue.pop() {
            #expect(event.hasPrefix(["a", "b", "c"][Int(time / 10) - 1]))
            out.append(event)
        }
        #expect(out == ["a1", "a2", "a3", "b1", "c1", "c2"])
        #expect(queue.isEmpty && queue.nextTime == nil)
    }

    @Test func removalKeepsTheOrderOfTheRest() {
        var queue = EventQueue<Int>()
        for n in 0..<40 { queue.schedule(n, at: UInt64(n % 4)) }
        queue.removeAll { $0 % 3 == 0 }
        var out: [Int] = []
        while let (_, event) = queue.pop() { out.append(event) }
        let kept = (0..<40).filter { $0 % 3 != 0 }
        #expect(out == kept.sorted { ($0 % 4, $0) < ($1 % 4, $1) })
    }
}
