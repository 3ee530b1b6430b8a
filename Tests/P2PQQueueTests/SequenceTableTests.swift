@testable import P2PQQueue
import P2PQWire
import Testing

@Suite struct SequenceTableTests {
    /// Random appends, updates and removals in and out of order, against a dictionary.
    @Test("The window table behaves like a dictionary, and its memory follows the records", arguments: [1, 2, 3, 4] as [UInt64])
    func matchesADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var table = SequenceTable<Int>()
        var model: [UInt64: Int] = [:]
        var next: UInt64 = 1000
        for step in 0..<6_000 {
            switch random.next() % 10 {
            case 0...3:
                // A batch of fresh sequence numbers, sometimes after a jump (a restart).
                if random.next() % 500 == 0 { next += 100_000 }
                let n = Int(random.next() % 8 + 1)
                if random.next() % 2 == 0 {
                    // A push's bulk append.
                    let first = next
                    table.append(first: first, count: n) { Int(first) + $0 }
                    for k in 0..<n { model[first + UInt64(k)] = Int(first) + k }
                    next += UInt64(n)
                } else {
                    for _ in 0..<n {
                        table.append(next, Int(next))
                        model[next] = Int(next)
                        next += 1
                    }
                }
            case 4...6:
                // Mostly the oldest first, sometimes any.
                guard let oldest = model.keys.min() else { continue }
                let key = random.next() % 4 == 0 ? next - 1 - random.next() % 512 : oldest
                let removed = table.remove(key)
                if removed != model.removeValue(forKey: key) { Issue.record("remove \(key): \(String(describing: removed))") }
            case 7:
                let key = next - 1 - random.next() % 64
                let changed = table.modify(key) { $0 += 1 }
                if changed != (model[key] != nil) { Issue.record("modify \(key)") }
                if model[key] != nil { model[key]! += 1 }
            case 8 where random.next() % 2 == 0:
                // A run, mostly at the front (pop confirmations), sometimes anywhere, across
                // held and missing sequences, stragglers included.
                let start = random.next() % 3 == 0 ? next &- random.next() % 600 : (model.keys.min() ?? next)
                let length = Int(random.next() % 40)
                if random.next() % 2 == 0 {
                    if let failure = Self.modifyRun(&table, &model, first: start, count: length, adding: 7) { Issue.record("\(failure)") }
                } else {
                    if let failure = Self.removeRun(&table, &model, first: start, count: length) { Issue.record("\(failure)") }
                }
            default:
                let key = next &- random.next() % 128
                if table[key] != model[key] || table.remove(next + 5) != nil { Issue.record("lookup \(key)") }
            }
            if table.count != model.count { Issue.record("count \(table.count) != \(model.count) at step \(step)") }
            if step % 500 == 0 {
                #expect(table.sequences { $0 % 3 == 0 } == model.filter { $0.value % 3 == 0 }.keys.sorted())
            }
        }
        // A record never confirmed does not keep the window open: push and confirm a lot more.
        let pinned = next
        table.append(pinned, 0)
        next += 1
        var removedAll = true
        for _ in 0..<20_000 {
            table.append(next, 1)
            removedAll = removedAll && table.remove(next) == 1
            next += 1
        }
        #expect(removedAll)
        #expect(table[pinned] == 0)
        #expect(table.windowSlots <= table.count * 2 + 4096 + 1)
    }
}

extension SequenceTableTests {
    /// A window sliding far past its first slots: the storage drops its dead prefix again and
    /// again, and changes in place must still land on the right record.
    @Test("A sequence appended below the window's end, inside the window or below it, is found, changed and removed like any other")
    func outOfOrderAppends() {
        var table = SequenceTable<Int>()
        for sequence in stride(from: 100 as UInt64, to: 200, by: 2) { table.append(sequence, Int(sequence)) }
        // Odd sequences inside the window (their slots are empty), and some below it.
        for sequence in stride(from: 101 as UInt64, to: 200, by: 2) { table.append(sequence, Int(sequence)) }
        for sequence in [7, 50, 99] as [UInt64] { table.append(sequence, Int(sequence)) }
        #expect(table.count == 103)
        for sequence in (100 as UInt64)..<200 { #expect(table[sequence] == Int(sequence), "sequence \(sequence)") }
        #expect(table[7] == 7 && table[99] == 99 && table[98] == nil)
        // Appended again: replaced, not counted twice.
        table.append(101, -101)
        table.append(50, -50)
        #expect(table.count == 103 && table[101] == -101 && table[50] == -50)
        #expect(table.modify(103) { $0 = -103 } && table[103] == -103)
        #expect(table.sequences(where: { $0 < 0 }) == [50, 101, 103])
        var seen: [Int] = []
        #expect(table.removeRun(first: 95, count: 10) { seen.append($0) } == 6)
        #expect(seen.sorted() == [-103, -101, 99, 100, 102, 104])
        for sequence in [7, 50] as [UInt64] { #expect(table.remove(sequence) != nil) }
        for sequence in (105 as UInt64)..<200 { #expect(table.remove(sequence) == Int(sequence)) }
        #expect(table.count == 0 && table.windowSlots == 0)
    }

    @Test("A record put aside below the window is found once a later window grows over it")
    func windowGrowsOverARecordAside() {
        var table = SequenceTable<Int>()
        for sequence in (100 as UInt64)..<110 { table.append(sequence, Int(sequence)) }
        table.append(50, 50)  // below the window: aside
        for sequence in (100 as UInt64)..<110 { table.remove(sequence) }
        // The window restarts below the record aside, then grows over it.
        table.append(40, 40)
        table.append(60, 60)
        #expect(table[50] == 50 && table[40] == 40 && table[60] == 60 && table.count == 3)
        #expect(table.modify(50) { $0 = -50 } && table[50] == -50)
        #expect(table.sequences(where: { _ in true }) == [40, 50, 60])
        // Appending a sequence that is aside replaces it.
        table.append(45, 45)
        table.remove(45)
        table.append(30, 30)  // aside again
        table.append(first: 61, count: 3) { 61 + $0 }
        table.append(30, -30)
        #expect(table[30] == -30 && table.count == 7)
        #expect(table.removeRun(first: 0, count: 100) { _ in } == 7 && table.count == 0)
    }

    @Test("modify changes the right record while the window slides and its storage shifts down")
    func modifyWhileSliding() {
        var table = SequenceTable<[Int]>()
        var first: UInt64 = 1
        var next: UInt64 = 1
        for _ in 0..<100 {
            table.append(next, [Int(next)])
            next += 1
        }
        for _ in 0..<5_000 {
            for sequence in first..<next where sequence % 3 == 0 {
                table.modify(sequence) { $0.append(Int(sequence)) }
            }
            guard let oldest = table.remove(first) else {
                Issue.record("record \(first) missing")
                return
            }
            let expected = first % 3 == 0 ? Array(repeating: Int(first), count: 1 + Int(min(first, 100))) : [Int(first)]
            if oldest.count != expected.count || oldest.contains(where: { $0 != Int(first) }) {
                Issue.record("record \(first) is \(oldest.prefix(4))… (\(oldest.count)), expected \(expected.count) copies")
                return
            }
            first += 1
            table.append(next, [Int(next)])
            next += 1
        }
        #expect(table.count == 100)
    }
}

@Suite struct DedupTests {
    @Test("Sequence runs behave like a set of numbers, in and out of order")
    func sequenceRunsMatchASet() {
        var random = SplitMix64(seed: 7)
        var runs = SequenceRuns()
        var model = Set<UInt64>()
        var mismatches = 0
        for step in 0..<20_000 {
            // Mostly ascending, sometimes back in the past or a jump ahead.
            let sequence: UInt64 = switch random.next() % 8 {
            case 0: random.next() % 400  // scattered in the past: few enough to stay under maxRuns
            case 1: UInt64(step / 2) + 50
            default: UInt64(step / 2)
            }
            if runs.insert(sequence) != model.insert(sequence).inserted { mismatches += 1 }
            let probe = random.next() % 12_000
            if runs.contains(probe) != model.contains(probe) { mismatches += 1 }
        }
        #expect(mismatches == 0)
        #expect(runs.runCount < SequenceRuns.maxRuns)
    }

    @Test("Scattered sequence numbers keep at most maxRuns runs; the newest are still recognised")
    func sequenceRunsAreBounded() {
        var runs = SequenceRuns()
        // Every other number, descending: each one a run of its own, inserted at the front.
        for k in stride(from: 10_000, to: 0, by: -1) { _ = runs.insert(UInt64(2 * k)) }
        #expect(runs.runCount <= SequenceRuns.maxRuns)
        #expect(runs.contains(2 * 10_000))
        let again = runs.insert(2 * 10_000)
        #expect(!again)
    }

    @Test("A retransmitted copy is dropped; a re-queued one (new attempt) or a further hop is not; old copies are forgotten")
    func dedupGenerations() {
        let origin = PeerID(bytes: [UInt8](repeating: 5, count: 32))!
        var dedup = DedupSet(capacity: 100)
        for sequence in 1...50 as ClosedRange<UInt64> {
            do { let inserted = dedup.insert(ItemID(origin: origin, sequence: sequence), attempt: 0, hops: 1); #expect(inserted) }
        }
        do { let inserted = dedup.insert(ItemID(origin: origin, sequence: 7), attempt: 0, hops: 1); #expect(!inserted) }
        do { let inserted = dedup.insert(ItemID(origin: origin, sequence: 7), attempt: 1, hops: 1); #expect(inserted) }
        do { let inserted = dedup.insert(ItemID(origin: origin, sequence: 7), attempt: 0, hops: 2); #expect(inserted) }
        // 200 more copies: two rotations later, sequence 7 of hop 1 is forgotten.
        for sequence in 1_000..<1_200 as Range<UInt64> {
            do { let inserted = dedup.insert(ItemID(origin: origin, sequence: sequence), attempt: 0, hops: 1); #expect(inserted) }
        }
        #expect(dedup.count <= 200)
        do { let inserted = dedup.insert(ItemID(origin: origin, sequence: 1_150), attempt: 0, hops: 1); #expect(!inserted) }
        do { let inserted = dedup.insert(ItemID(origin: origin, sequence: 7), attempt: 0, hops: 1); #expect(inserted) }
    }

    @Test("A run of new copies is remembered at once; one that overlaps, or would fill the generation, changes nothing")
    func dedupRuns() {
        let origin = PeerID(bytes: [UInt8](repeating: 5, count: 32))!
        var dedup = DedupSet(capacity: 100)
        func run(_ first: UInt64, _ count: Int, hops: UInt32 = 1) -> Bool {
            dedup.insertRun(origin: origin, first: first, count: count, attempt: 0, hops: hops)
        }
        func one(_ sequence: UInt64, hops: UInt32 = 1) -> Bool {
            dedup.insert(ItemID(origin: origin, sequence: sequence), attempt: 0, hops: hops)
        }
        #expect(run(1, 50))
        #expect(dedup.count == 50)
        #expect(!one(7) && !one(50))
        // Overlapping the remembered ones: refused, nothing recorded.
        #expect(!run(40, 20))
        #expect(dedup.count == 50)
        #expect(one(55))
        // Past a gap, and for another hop count: accepted.
        #expect(run(100, 10))
        #expect(!one(105) && one(99))
        #expect(run(1, 10, hops: 2))
        // One that would fill the generation goes item by item instead.
        let left = 100 - dedup.count
        #expect(!run(200, left))
        // After a rotation the previous generation still refuses a run below its copies.
        for sequence in 1_000..<1_100 as Range<UInt64> { _ = one(sequence, hops: 3) }
        #expect(!run(5, 3))
        #expect(!one(5))
        #expect(run(2_000, 3))
    }
}

extension SequenceTableTests {
    /// A run's length comes from a peer (pop confirmations): a run of four billion sequences
    /// must cost what the table holds, not what the run spans.
    @Test("removeRun and modifyRun over a huge run touch only the records held, stragglers included")
    func hugeRun() {
        var table = SequenceTable<Int>()
        table.append(10, 10)
        // A jump far ahead moves the first window aside: 10 becomes a straggler.
        table.append(1_000_000, 1)
        table.append(1_000_001, 2)
        var seen: [UInt64] = []
        table.modifyRun(first: 0, count: Int(UInt32.max)) { sequence, value in
            seen.append(sequence)
            value += 100
        }
        #expect(seen.sorted() == [10, 1_000_000, 1_000_001])
        var values: [Int] = []
        let removed = table.removeRun(first: 0, count: Int(UInt32.max)) { values.append($0) }
        #expect(removed == 3)
        #expect(values.sorted() == [101, 102, 110])
        #expect(table.count == 0)
    }
}

@Suite struct HolderTableTests {
    @Test("A holder keeps its handle until forgotten; a freed handle is reused for the next peer, never confused with the old one")
    func handlesAreReused() {
        let a = PeerID(bytes: [UInt8](repeating: 1, count: 32))!
        let b = PeerID(bytes: [UInt8](repeating: 2, count: 32))!
        let c = PeerID(bytes: [UInt8](repeating: 3, count: 32))!
        var table = HolderTable()
        let ha = table.handle(for: a)
        let hb = table.handle(for: b)
        #expect(ha != HolderTable.here && hb != HolderTable.here && ha != hb)
        #expect(table.handle(for: a) == ha)
        #expect(table.handle(of: b) == hb)
        #expect(table.count == 2)
        // a was asked for last: forgetting it must also drop the cached answer.
        _ = table.handle(for: a)
        table.forget(a)
        #expect(table.handle(of: a) == nil)
        #expect(table.count == 1)
        let hc = table.handle(for: c)
        #expect(hc == ha)  // the freed handle, reused
        let again = table.handle(for: a)
        #expect(again != hc && again != hb && again != HolderTable.here)
        #expect(table.handle(of: c) == hc)
        #expect(table.count == 3)
    }
}

extension SequenceTableTests {
    /// Appends in any order (records re-added below, inside and above the window, after it was
    /// compacted or emptied), against a dictionary: every operation agrees with it at every step.
    @Test("Appends in any order, across compactions and emptied windows, behave like a dictionary", arguments: [5, 6, 7, 8, 9, 10] as [UInt64])
    func outOfOrderMatchesADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var table = SequenceTable<Int>()
        var model: [UInt64: Int] = [:]
        var next: UInt64 = 20_000  // above every offset subtracted below
        var value = 0
        func check(_ what: @autoclosure () -> String, _ step: Int) -> Bool {
            if table.count != model.count {
                Issue.record("count \(table.count) != \(model.count) after \(what()) at step \(step)")
                return false
            }
            return true
        }
        for step in 0..<40_000 {
            value += 1
            switch random.next() % 16 {
            case 0...5:
                // Fresh sequences; now and then a jump past the slack.
                if random.next() % 2_000 == 0 { next += 10_000 }
                table.append(next, value)
                model[next] = value
                next += 1
            case 6:
                // An old sequence re-added (an item back with its owner), anywhere below.
                let key = next &- 1 &- random.next() % 12_000
                table.append(key, value)
                model[key] = value
            case 7:
                // A bulk append, fresh or not.
                let n = Int(random.next() % 16 + 1)
                let first = random.next() % 3 == 0 ? next &- random.next() % 9_000 : next
                let base = value
                table.append(first: first, count: n) { base + $0 }
                for k in 0..<n { model[first + UInt64(k)] = base + k }
                next = Swift.max(next, first + UInt64(n))
                value += n
            case 8...10:
                // Mostly the oldest, so the window slides while a few records stay behind.
                let key: UInt64
                if random.next() % 8 == 0, let any = model.keys.randomElement(using: &random) {
                    key = any
                } else if let oldest = model.keys.min(), random.next() % 5 != 0 {
                    key = oldest
                } else {
                    key = next &- 1 &- random.next() % 12_000
                }
                let removed = table.remove(key)
                if removed != model.removeValue(forKey: key) { Issue.record("remove \(key): \(String(describing: removed)) at step \(step)") }
            case 11:
                let start = random.next() % 2 == 0 ? (model.keys.min() ?? next) : next &- random.next() % 12_000
                let length = Int(random.next() % 300)
                if let failure = Self.removeRun(&table, &model, first: start, count: length) { Issue.record("\(failure) at step \(step)") }
            case 12:
                let start = next &- random.next() % 12_000
                let length = Int(random.next() % 300)
                if let failure = Self.modifyRun(&table, &model, first: start, count: length, adding: 1) {
                    Issue.record("\(failure) at step \(step)")
                }
            case 13 where random.next() % 16 == 0:
                // Everything recent confirmed at once: the window empties while records put
                // aside stay, and the next appends (old sequences among them) start a new one.
                let start = next &- 6_000
                let removed = table.removeRun(first: start, count: 6_000) { _ in }
                let expected = (start..<next).compactMap { model.removeValue(forKey: $0) }
                if removed != expected.count { Issue.record("emptying removeRun: \(removed) != \(expected.count) at step \(step)") }
            case 13:
                let key = next &- random.next() % 12_000
                let changed = table.modify(key) { $0 -= 1 }
                if changed != (model[key] != nil) { Issue.record("modify \(key) at step \(step)") }
                if model[key] != nil { model[key]! -= 1 }
            default:
                for _ in 0..<4 {
                    let key = next &- random.next() % 12_000
                    if table[key] != model[key] { Issue.record("lookup \(key): \(String(describing: table[key])) != \(String(describing: model[key])) at step \(step)") }
                }
            }
            guard check("step", step) else { return }
            if step % 4_000 == 0 {
                #expect(table.sequences { _ in true } == model.keys.sorted(), "sequences at step \(step)")
            }
        }
        // Every record the model holds is found, and nothing else.
        for (key, expected) in model where table[key] != expected { Issue.record("final lookup \(key)") }
        #expect(table.sequences { _ in true } == model.keys.sorted())
    }
}

extension SequenceTableTests {
    /// A window restarted below a record aside, then a jump past the slack: the record lies
    /// between the old window and the new one and stays aside (adopting it computed a slot
    /// below the new base: an arithmetic overflow, a trap).
    @Test("A jump past a record aside above the old window keeps it aside, found")
    func jumpOverRecordAside() {
        var table = SequenceTable<Int>()
        table.append(100, 1)
        table.append(50, 2)  // below the window: aside
        #expect(table.remove(100) == 1)  // the window empties; 50 stays aside
        table.append(10, 3)  // a new window at 10, below the record aside at 50
        table.append(10 + 4_096 + 100, 4)  // a jump: the window restarts far above
        #expect(table[50] == 2 && table[10] == 3 && table[4_206] == 4)
        #expect(table.count == 3)
        #expect(table.sequences { _ in true } == [10, 50, 4_206])
        #expect(table.remove(50) == 2 && table.count == 2)
    }
}

extension SequenceTableTests {
    /// `modifyRun` on the table and the same change on the model; what differed, if anything.
    static func modifyRun(_ table: inout SequenceTable<Int>, _ model: inout [UInt64: Int], first: UInt64, count: Int,
                          adding delta: Int) -> String? {
        var seen: [UInt64] = []
        table.modifyRun(first: first, count: count) { sequence, value in
            seen.append(sequence)
            value += delta
        }
        let expected = (first..<first + UInt64(count)).filter { model[$0] != nil }
        for sequence in expected { model[sequence]! += delta }
        return seen.sorted() == expected ? nil : "modifyRun \(first)+\(count): \(seen.sorted()) != \(expected)"
    }

    /// `removeRun` on the table and on the model; what differed, if anything.
    static func removeRun(_ table: inout SequenceTable<Int>, _ model: inout [UInt64: Int], first: UInt64, count: Int) -> String? {
        var values: [Int] = []
        let removed = table.removeRun(first: first, count: count) { values.append($0) }
        let expected = (first..<first + UInt64(count)).compactMap { model.removeValue(forKey: $0) }
        guard removed != expected.count || values.sorted() != expected.sorted() else { return nil }
        return "removeRun \(first)+\(count): \(removed) \(values.sorted()) != \(expected.sorted())"
    }
}
