/// Records by sequence number: a queue's ownership records, a caller's calls in flight.
///
/// Sequence numbers are handed out in increasing order and mostly retired in about that
/// order, so the records live in a window indexed by `sequence - base`: lookups, in-place
/// updates and removals cost no hashing, and confirmed slots at the front are dropped as the
/// window slides. A record left far behind (an item a slow peer holds for long) would pin the
/// window open, so when the window is more than twice as long as the records it holds (plus
/// some slack) the oldest records move to a dictionary: memory stays proportional to the
/// records, whatever the confirmation order.
public struct SequenceTable<Record: Sendable>: Sendable {
    @usableFromInline var base: UInt64 = 0
    /// The window is `slots[head...]`: slot `head + i` holds sequence `base + i`. An array with
    /// a moving head rather than a deque: an array's elements can be changed in place (a
    /// deque's element accessor moves the element out and copies it back: a retain and a
    /// release of the record's payload per change), and confirmed slots at the front are dropped
    /// by moving `head`, the array being shifted down only once the dead prefix is as long as
    /// the rest (amortized O(1) per slot).
    @usableFromInline var slots: [Record?] = []
    @usableFromInline var head = 0
    /// Records outside the window (below it: none ever lies inside, so a lookup reads one
    /// place), and the highest sequence put there since it was last empty.
    @usableFromInline var stragglers: [UInt64: Record] = [:]
    @usableFromInline var stragglerCeiling: UInt64 = 0
    /// Records held.
    @inlinable public var count: Int { held }
    @usableFromInline var held = 0
    /// Slots of the window (for tests of the memory bound).
    @inlinable public var windowSlots: Int { slots.count - head }

    /// Slack before the window is compacted (slots, not records).
    @inlinable static var slack: Int { 4096 }

    public init() {}

    @inlinable public subscript(sequence: UInt64) -> Record? {
        if let index = slot(of: sequence) { return slots[index] }
        return stragglers.isEmpty ? nil : stragglers[sequence]
    }

    /// Adds (or replaces) a record, made for sequence numbers above every one added before
    /// (the cheap case); one that is not lands in its window slot, or aside below the window,
    /// and is found like any other.
    @inlinable public mutating func append(_ sequence: UInt64, _ record: consuming Record) {
        let grownFrom: UInt64
        if windowSlots == 0 {
            base = sequence
            grownFrom = sequence
        } else if sequence < base &+ UInt64(windowSlots) {
            if let index = slot(of: sequence) {
                if isEmpty(index) { held += 1 }
                slots[index] = record
            } else if putAside(sequence, record) {
                held += 1
            }
            return
        } else {
            grownFrom = base &+ UInt64(windowSlots)
        }
        let gap = Int(sequence - base) - windowSlots
        if gap > 0 {
            if gap > Self.slack {
                // A jump (a restart's new first sequence): start a fresh window.
                moveWindowToStragglers()
                base = sequence
            } else {
                slots.append(contentsOf: repeatElement(nil, count: gap))
            }
        }
        slots.append(record)
        held += 1
        // Records put aside when the window lay elsewhere move into the slots it now covers.
        if !stragglers.isEmpty && stragglerCeiling >= grownFrom { adoptStragglers(from: grownFrom) }
        if windowSlots > 2 * count + Self.slack { compact() }
    }

    /// Adds records for `count` consecutive sequence numbers from `first`, above every one
    /// added before (a push): no per-record gap test.
    @inlinable public mutating func append(first: UInt64, count n: Int, _ record: (Int) -> Record) {
        guard n > 0 else { return }
        if windowSlots == 0 || first != base &+ UInt64(windowSlots) || (!stragglers.isEmpty && stragglerCeiling >= first) {
            for index in 0..<n { append(first &+ UInt64(index), record(index)) }
            return
        }
        for index in 0..<n { slots.append(record(index)) }
        held += n
        if windowSlots > 2 * count + Self.slack { compact() }
    }

    /// Changes the record in place (no copy of its payload); false if there is none.
    @discardableResult
    @inlinable public mutating func modify(_ sequence: UInt64, _ body: (inout Record) -> Void) -> Bool {
        if let index = slot(of: sequence) {
            guard !isEmpty(index) else { return false }
            body(&slots[index]!)
            return true
        }
        guard !stragglers.isEmpty, stragglers[sequence] != nil else { return false }
        body(&stragglers[sequence]!)
        return true
    }

    /// Removes and returns the record.
    @discardableResult
    @inlinable public mutating func remove(_ sequence: UInt64) -> Record? {
        if let index = slot(of: sequence) {
            // Moved out (no copy): the caller's use is the payload's last.
            guard let record = slots[index].take() else { return nil }
            held -= 1
            if index == head { trimFront() }
            return record
        }
        guard !stragglers.isEmpty, let record = stragglers.removeValue(forKey: sequence) else { return nil }
        held -= 1
        return record
    }

    /// Removes the records of sequences `first ..< first + count` (those held), showing each to
    /// `body` as it goes; how many there were. A run inside the window costs no lookup per
    /// sequence (pop confirmations arrive as runs).
    @inlinable @discardableResult
    public mutating func removeRun(first: UInt64, count: Int, _ body: (borrowing Record) -> Void) -> Int {
        guard count > 0 else { return 0 }
        let end = first &+ UInt64(count)
        let low = Swift.max(first, base)
        let high = Swift.min(end, base &+ UInt64(windowSlots))
        var removed = 0
        if low < high {
            let from = head + Int(low - base)
            let to = head + Int(high - base)
            slots.withUnsafeMutableBufferPointer { slots in
                for index in from..<to {
                    if let record = slots[index].take() {
                        body(record)
                        removed += 1
                    }
                }
            }
        }
        for sequence in stragglerSequences(first: first, end: end, skipping: low..<Swift.max(low, high)) {
            if let record = stragglers.removeValue(forKey: sequence) {
                body(record)
                removed += 1
            }
        }
        held -= removed
        if low < high && low == base { trimFront() }
        return removed
    }

    /// Changes, in place, the records held for sequences `first ..< first + count`.
    @inlinable
    public mutating func modifyRun(first: UInt64, count: Int, _ body: (UInt64, inout Record) -> Void) {
        guard count > 0 else { return }
        let end = first &+ UInt64(count)
        let low = Swift.max(first, base)
        let high = Swift.min(end, base &+ UInt64(windowSlots))
        if low < high {
            let from = head + Int(low - base)
            let to = head + Int(high - base)
            let base = self.base
            let head = self.head
            slots.withUnsafeMutableBufferPointer { slots in
                for index in from..<to where slots[index] != nil {
                    body(base &+ UInt64(index - head), &slots[index]!)
                }
            }
        }
        for sequence in stragglerSequences(first: first, end: end, skipping: low..<Swift.max(low, high)) {
            body(sequence, &stragglers[sequence]!)
        }
    }

    /// The stragglers' sequences in `first ..< end` outside `window`, ascending. Walks the run or
    /// the stragglers, whichever is shorter: a run's length comes from a peer's message.
    @inlinable
    func stragglerSequences(first: UInt64, end: UInt64, skipping window: Range<UInt64>) -> [UInt64] {
        guard !stragglers.isEmpty else { return [] }
        if end - first <= UInt64(stragglers.count) {
            return (first..<end).filter { !window.contains($0) && stragglers[$0] != nil }
        }
        return stragglers.keys.filter { $0 >= first && $0 < end && !window.contains($0) }.sorted()
    }

    /// Sequence numbers of the records matching `predicate`, ascending.
    @inlinable public func sequences(where predicate: (Record) -> Bool) -> [UInt64] {
        var result: [UInt64] = []
        for (sequence, record) in stragglers where predicate(record) { result.append(sequence) }
        result.sort()
        for index in head..<slots.count {
            if let record = slots[index], predicate(record) { result.append(base &+ UInt64(index - head)) }
        }
        return result
    }

    /// The index in `slots` of `sequence`'s slot, if it is in the window.
    @inlinable func slot(of sequence: UInt64) -> Int? {
        guard sequence >= base else { return nil }
        let offset = sequence - base
        return offset < UInt64(windowSlots) ? head + Int(offset) : nil
    }

    /// Whether the slot holds no record (read in place: no copy of the record).
    @inlinable func isEmpty(_ index: Int) -> Bool {
        slots.withUnsafeBufferPointer { $0[index] == nil }
    }

    /// Drops the empty slots at the front of the window.
    @inlinable mutating func trimFront() {
        while head < slots.count && isEmpty(head) {
            head += 1
            base &+= 1
        }
        dropDeadPrefix()
    }

    /// Shifts the window down once the dropped slots before `head` are as many as the rest.
    @inlinable mutating func dropDeadPrefix() {
        if head == slots.count {
            slots.removeAll(keepingCapacity: true)
            head = 0
            base = 0
        } else if head >= 1024 && head >= slots.count - head {
            slots.removeFirst(head)
            head = 0
        }
    }

    /// Puts a record aside (outside the window); whether the sequence was new there.
    @inlinable mutating func putAside(_ sequence: UInt64, _ record: consuming Record) -> Bool {
        stragglerCeiling = stragglers.isEmpty ? sequence : Swift.max(stragglerCeiling, sequence)
        return stragglers.updateValue(record, forKey: sequence) == nil
    }

    /// Moves the records aside whose sequences the window now covers, from `low` to its end,
    /// into their slots; one whose slot was just filled by an append is replaced by it. After a
    /// jump the window starts above `low`: records aside below its new base stay aside.
    @inlinable mutating func adoptStragglers(from low: UInt64) {
        let low = Swift.max(low, base)
        let high = base &+ UInt64(windowSlots)
        guard low < high else { return }
        let covered = high - low <= UInt64(stragglers.count)
            ? (low..<high).filter { stragglers[$0] != nil }
            : stragglers.keys.filter { $0 >= low && $0 < high }
        for sequence in covered {
            let record = stragglers.removeValue(forKey: sequence)!
            let index = head + Int(sequence - base)
            if isEmpty(index) { slots[index] = record } else { held -= 1 }
        }
    }

    /// Moves the oldest records aside until the window is dense enough again.
    @inlinable mutating func compact() {
        while windowSlots > count - stragglers.count + Self.slack {
            if let record = slots[head].take() { _ = putAside(base, record) }
            head += 1
            base &+= 1
        }
        trimFront()
    }

    @inlinable mutating func moveWindowToStragglers() {
        for index in head..<slots.count {
            if let record = slots[index].take() { _ = putAside(base &+ UInt64(index - head), record) }
        }
        slots.removeAll(keepingCapacity: true)
        head = 0
    }
}
