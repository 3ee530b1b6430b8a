import DequeModule

/// The ownership records of one queue, by sequence number.
///
/// Sequence numbers are handed out in increasing order and mostly confirmed in about that
/// order, so the records live in a window indexed by `sequence - base`: lookups, in-place
/// updates and removals cost no hashing, and confirmed slots at the front are dropped as the
/// window slides. A record left far behind (an item a slow peer holds for long) would pin the
/// window open, so when the window is more than twice as long as the records it holds (plus
/// some slack) the oldest records move to a dictionary: memory stays proportional to the
/// records, whatever the confirmation order.
struct OwnedTable<Record: Sendable>: Sendable {
    private var base: UInt64 = 0
    private var window = Deque<Record?>()
    private var stragglers: [UInt64: Record] = [:]
    /// Records held.
    private(set) var count = 0
    /// Slots of the window (for tests of the memory bound).
    var windowSlots: Int { window.count }

    /// Slack before the window is compacted (slots, not records).
    private static var slack: Int { 4096 }

    init() {}

    subscript(sequence: UInt64) -> Record? {
        if let index = slot(of: sequence) { return window[index] }
        return stragglers.isEmpty ? nil : stragglers[sequence]
    }

    /// Adds a record for a sequence number above every one added before.
    mutating func append(_ sequence: UInt64, _ record: consuming Record) {
        if window.isEmpty {
            base = sequence
        } else if sequence < base &+ UInt64(window.count) {
            // Not above the window (never happens for fresh sequence numbers): keep it aside.
            if stragglers.updateValue(record, forKey: sequence) == nil { count += 1 }
            return
        }
        let gap = Int(sequence - base) - window.count
        if gap > 0 {
            if gap > Self.slack {
                // A jump (a restart's new first sequence): start a fresh window.
                moveWindowToStragglers()
                base = sequence
            } else {
                window.append(contentsOf: repeatElement(nil, count: gap))
            }
        }
        window.append(record)
        count += 1
        if window.count > 2 * count + Self.slack { compact() }
    }

    /// Adds records for `count` consecutive sequence numbers from `first`, above every one
    /// added before (a push): no per-record gap test.
    mutating func append(first: UInt64, count n: Int, _ record: (Int) -> Record) {
        guard n > 0 else { return }
        if window.isEmpty || first != base &+ UInt64(window.count) {
            for index in 0..<n { append(first &+ UInt64(index), record(index)) }
            return
        }
        for index in 0..<n { window.append(record(index)) }
        count += n
        if window.count > 2 * count + Self.slack { compact() }
    }

    /// Changes the record in place (no copy of its payload); false if there is none.
    @discardableResult
    mutating func modify(_ sequence: UInt64, _ body: (inout Record) -> Void) -> Bool {
        if let index = slot(of: sequence) {
            // In place through the buffer when the ring is not wrapped: Deque's element
            // `_modify` moves the element out and copies it back, a retain and a release of the
            // record's payload each time.
            if let done = window.withContiguousMutableStorageIfAvailable({ buffer -> Bool in
                guard buffer[index] != nil else { return false }
                body(&buffer[index]!)
                return true
            }) {
                return done
            }
            guard window[index] != nil else { return false }
            body(&window[index]!)
            return true
        }
        guard !stragglers.isEmpty, stragglers[sequence] != nil else { return false }
        body(&stragglers[sequence]!)
        return true
    }

    /// Removes and returns the record.
    @discardableResult
    mutating func remove(_ sequence: UInt64) -> Record? {
        if let index = slot(of: sequence) {
            // Moved out (no copy): the caller's use is the payload's last.
            guard let record = window[index].take() else { return nil }
            count -= 1
            if index == 0 { trimFront() }
            return record
        }
        guard !stragglers.isEmpty, let record = stragglers.removeValue(forKey: sequence) else { return nil }
        count -= 1
        return record
    }

    /// Sequence numbers of the records matching `predicate`, ascending.
    func sequences(where predicate: (Record) -> Bool) -> [UInt64] {
        var result: [UInt64] = []
        for (sequence, record) in stragglers where predicate(record) { result.append(sequence) }
        result.sort()
        for (offset, slot) in window.enumerated() {
            if let record = slot, predicate(record) { result.append(base &+ UInt64(offset)) }
        }
        return result
    }

    private func slot(of sequence: UInt64) -> Int? {
        guard sequence >= base else { return nil }
        let offset = sequence - base
        return offset < UInt64(window.count) ? Int(offset) : nil
    }

    private mutating func trimFront() {
        while let first = window.first, first == nil {
            window.removeFirst()
            base &+= 1
        }
        if window.isEmpty { base = 0 }
    }

    /// Moves the oldest records aside until the window is dense enough again.
    private mutating func compact() {
        while window.count > count - stragglers.count + Self.slack, let first = window.popFirst() {
            if let record = first { stragglers[base] = record }
            base &+= 1
        }
        trimFront()
    }

    private mutating func moveWindowToStragglers() {
        for (offset, slot) in window.enumerated() {
            if let record = slot { stragglers[base &+ UInt64(offset)] = record }
        }
        window.removeAll()
    }
}
