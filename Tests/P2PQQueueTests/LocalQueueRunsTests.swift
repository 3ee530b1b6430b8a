@testable import P2PQQueue
import P2PQWire
import Testing

@Suite struct LocalQueueRunsTests {
    /// The queue's items in order, as (sequence, length), read from its runs.
    private func contents(_ queue: LocalQueue, _ store: PayloadStore) -> [(UInt64, UInt32)] {
        var out: [(UInt64, UInt32)] = []
        for run in queue.runs {
            store.ends(run.slot).withUnsafeBufferPointer { ends in
                for i in 0..<Int(run.count) {
                    out.append((run.first &+ UInt64(i), run.itemEnd(i, ends) &- run.itemStart(i, ends)))
                }
            }
        }
        return out
    }

    /// Random appends, takes from the front (whole runs and parts), put-backs and removals,
    /// against an array of items: same items in the same order, and counts that match.
    @Test("The local queue keeps its order and its counts through every change", arguments: [1, 2, 3, 4] as [UInt64])
    func matchesAnArray(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var store = PayloadStore()
        var queue = LocalQueue()
        var model: [(UInt64, UInt32)] = []
        var next: UInt64 = 1
        let origin = peer(1)
        for step in 0..<3_000 {
            switch random.next() % 7 {
            case 0, 1:
                // A pushed batch: one array, one run of `n` items of sizes 1...16.
                let n = Int(random.next() % 6 + 1)
                var ends: [UInt32] = []
                var end: UInt32 = 0
                for _ in 0..<n {
                    end += UInt32(random.next() % 16 + 1)
                    ends.append(end)
                }
                let slot = store.hold([UInt8](repeating: 0, count: Int(end)), ends: ends, holders: n)
                queue.append(QueueRun(origin: origin, first: next, count: UInt32(n), attempt: 0, hops: 0,
                                      slot: slot, index: 0, start: 0, bytes: end))
                for i in 0..<n { model.append((next + UInt64(i), ends[i] - (i == 0 ? 0 : ends[i - 1]))) }
                next += UInt64(n)
            case 2 where !queue.isEmpty:
                let want = Int(random.next() % 5 + 1)
                let (run, _) = queue.takeFront(upTo: want, in: store)
                #expect(Int(run.count) <= want)
                let taken = model.prefix(Int(run.count))
                #expect(run.first == taken.first?.0 && Int(run.bytes) == taken.reduce(0) { $0 + Int($1.1) })
                // Half the time the taken run comes back to the front.
                if random.next() % 2 == 0 { queue.putBack([run]) } else { model.removeFirst(Int(run.count)) }
            case 3 where !queue.isEmpty:
                // A transfer's take: part of the front run, the rest left in front.
                guard let run = queue.first else { break }
                let n = Int(random.next() % UInt64(run.count)) + 1
                let rest = n < Int(run.count) ? store.ends(run.slot).withUnsafeBufferPointer { run.split(at: n, $0).1 } : nil
                queue.removeFirst(leaving: rest)
                model.removeFirst(n)
            case 4:
                let parity = random.next() % 2
                let removed = queue.removeItems(in: store) { _ in random.next() % 3 == parity }
                let gone = Set(removed.map(\.first))
                #expect(removed.allSatisfy { $0.count == 1 })
                model.removeAll { gone.contains($0.0) }
            case 5:
                let removed = queue.removeRuns { $0.count == 1 }
                let gone = Set(removed.map(\.first))
                model.removeAll { gone.contains($0.0) }
            case 6:
                // A rebuilding pass: everything out, every other run back.
                var keep = true
                var gone = Set<UInt64>()
                for run in queue.removeAll() {
                    if keep { queue.append(run) } else { for i in 0..<UInt64(run.count) { gone.insert(run.first + i) } }
                    keep.toggle()
                }
                model.removeAll { gone.contains($0.0) }
            default:
                break
            }
            let items = contents(queue, store)
            #expect(items.map(\.0) == model.map(\.0), "step \(step)")
            #expect(items.map(\.1) == model.map(\.1), "step \(step)")
            #expect(queue.items == model.count && queue.items == queue.runs.reduce(0) { $0 + Int($1.count) }, "step \(step)")
            #expect(queue.bytes == model.reduce(0) { $0 + Int($1.1) }, "step \(step)")
            #expect(queue.isEmpty == model.isEmpty)
            if !(queue.items == model.count) { return }
        }
    }
}
