import P2PQWire

/// The caller's books of direct runs: calls made together, sent together to one executor and
/// kept as one record per run instead of a flight and a ticket per call.
///
/// A run's record keeps what a per-call flight would (the run as sent, so its arguments stay
/// at hand for a retry; its executor; its deadline) and one bit per call still waiting. A
/// result clears a bit; the run's record goes when its last bit does. Anything that treats
/// one call of a run apart from the others (a cancel, a deadline, a lost executor, a started
/// notice) first turns the run's waiting calls into per-call flights (``CallerMachine``'s
/// *explode*), so every rare path stays the per-call one.
///
/// Records are kept in sequence order (sequences only grow, and runs are booked as their
/// calls are made), so the record of a sequence is the last one starting at or before it: the
/// last record hit, or a binary search. Finished records at the front are dropped as results
/// come in; finished ones behind a record still waiting are dropped once they dominate, so
/// memory stays proportional to the runs waiting.
struct RunBook: Sendable {
    struct Record: Sendable {
        /// The run as sent; nil once every call is answered or the run was exploded.
        var run: CallRun?
        let firstSequence: UInt64
        let count: Int
        let executor: PeerID
        /// Monotonic deadline of every call of the run, nil = none.
        let deadline: UInt64?
        /// Waiting calls: bit `i` is call `firstSequence + i`; the first 64 inline, no
        /// allocation for a run of up to 64 calls.
        var low: UInt64
        var high: [UInt64]
        var waiting: Int

        init(run: CallRun, executor: PeerID, deadline: UInt64?) {
            self.run = run
            firstSequence = run.firstSequence
            count = run.count
            self.executor = executor
            self.deadline = deadline
            low = count >= 64 ? .max : (1 << UInt64(count)) &- 1
            high = []
            if count > 64 {
                let rest = count - 64
                high = Array(repeating: .max, count: (rest + 63) / 64)
                if rest % 64 != 0 { high[high.count - 1] = (1 << UInt64(rest % 64)) &- 1 }
            }
            waiting = count
        }

        func contains(_ sequence: UInt64) -> Bool {
            sequence &- firstSequence < UInt64(count)  // wraps past the count below the run
        }

        func isWaiting(_ offset: Int) -> Bool {
            offset < 64 ? low & (1 << UInt64(offset)) != 0 : high[(offset - 64) / 64] & (1 << UInt64(offset % 64)) != 0
        }

        mutating func clear(_ offset: Int) {
            if offset < 64 {
                low &= ~(1 << UInt64(offset))
            } else {
                high[(offset - 64) / 64] &= ~(1 << UInt64(offset % 64))
            }
            waiting -= 1
        }
    }

    /// Records by first sequence, ascending; `records[head...]` is the book.
    private var records: [Record] = []
    private var head = 0
    /// The record hit last (results of a run arrive together).
    private var last = 0
    /// Records with calls waiting.
    private(set) var runs = 0
    /// Calls waiting, all runs together.
    private(set) var calls = 0
    /// Records with calls waiting and a deadline.
    private(set) var runsWithDeadline = 0

    var isEmpty: Bool { runs == 0 }
    /// Records kept, finished ones not yet dropped included (for tests of the memory bound).
    var recordsHeld: Int { records.count - head }

    /// Books `run` (sequences above every run booked before), sent to `executor`.
    mutating func book(_ run: CallRun, executor: PeerID, deadline: UInt64?) {
        precondition(run.count > 0, "an empty run")
        records.append(Record(run: run, executor: executor, deadline: deadline))
        runs += 1
        calls += run.count
        if deadline != nil { runsWithDeadline += 1 }
    }

    /// The position of the record holding `sequence` with that call still waiting.
    func find(_ sequence: UInt64) -> Int? {
        guard runs > 0 else { return nil }
        let index: Int
        if last >= head, last < records.count, records[last].contains(sequence) {
            index = last
        } else if last + 1 < records.count, last + 1 >= head, records[last + 1].contains(sequence) {
            index = last + 1
        } else {
            guard let found = findAny(sequence) else { return nil }
            index = found
        }
        let record = records[index]
        guard record.waiting > 0, record.isWaiting(Int(sequence &- record.firstSequence)) else { return nil }
        return index
    }

    subscript(index: Int) -> Record { records[index] }

    /// Call `sequence` of the record at `index` (from ``find(_:)``) is answered; the function
    /// of its run.
    mutating func answer(_ sequence: UInt64, at index: Int) -> String {
        last = index
        let function = records[index].run!.function
        records[index].clear(Int(sequence &- records[index].firstSequence))
        calls -= 1
        if records[index].waiting == 0 { retire(index) }
        return function
    }

    /// Takes the record at `index` out of the book (its waiting calls become the caller's
    /// per-call flights): the run and which of its calls still wait.
    mutating func remove(at index: Int) -> Record {
        let record = records[index]
        calls -= record.waiting
        records[index].waiting = 0
        retire(index)
        return record
    }

    /// The position of the first record with calls waiting that `executor` runs. A position is
    /// good until the next change (a record taken out may compact the book).
    func firstIndex(runningOn executor: PeerID) -> Int? {
        guard runs > 0 else { return nil }
        return (head..<records.count).first { records[$0].waiting > 0 && records[$0].executor == executor }
    }

    /// The position of the waiting record whose first sequence is `sequence`.
    func index(startingAt sequence: UInt64) -> Int? {
        guard runs > 0, let index = findAny(sequence), records[index].firstSequence == sequence,
              records[index].waiting > 0 else { return nil }
        return index
    }

    /// The record holding `sequence` whether that call waits or not: the last one starting at
    /// or before it.
    private func findAny(_ sequence: UInt64) -> Int? {
        var low = head
        var high = records.count
        while low < high {
            let middle = (low + high) / 2
            if records[middle].firstSequence <= sequence { low = middle + 1 } else { high = middle }
        }
        guard low > head, records[low - 1].contains(sequence) else { return nil }
        return low - 1
    }

    /// The deadlines of the runs waiting, each under its first sequence (to rebuild a heap).
    var deadlines: [(sequence: UInt64, deadline: UInt64)] {
        records[head...].compactMap { record in
            guard record.waiting > 0, let deadline = record.deadline else { return nil }
            return (record.firstSequence, deadline)
        }
    }

    /// The record at `index` has no call waiting any more.
    private mutating func retire(_ index: Int) {
        records[index].run = nil  // the arguments' buffer goes now
        records[index].high = []
        runs -= 1
        if records[index].deadline != nil { runsWithDeadline -= 1 }
        while head < records.count, records[head].waiting == 0 { head += 1 }
        if head == records.count {
            records.removeAll(keepingCapacity: true)
            head = 0
            last = 0
        } else if head > 64 && head * 2 > records.count {
            records.removeFirst(head)
            last = Swift.max(0, last - head)
            head = 0
        } else if records.count - head > 2 * runs + 64 {
            // Finished records behind one still waiting: keep only the waiting ones.
            records = records[head...].filter { $0.waiting > 0 }
            head = 0
            last = 0
        }
    }
}
