/// Disjoint sorted runs of sequence numbers, for ``DedupSet``; appending the next number of the
/// last run (the common case) is O(1). At most ``maxRuns`` runs: past that the lowest half is
/// forgotten, so a sender whose items arrive in a scattered order costs bounded time per item
/// (at worst a copy it sent long ago is no longer recognised: a counted duplicate, not a loss).
struct SequenceRuns: Sendable {
    static let maxRuns = 1024
    private var starts: [UInt64] = []
    private var ends: [UInt64] = []  // exclusive

    /// Runs held (for tests of the bound).
    var runCount: Int { starts.count }

    @inline(__always)
    func contains(_ sequence: UInt64) -> Bool {
        // A new item's number is past the last run (the common case): no search.
        guard let lastEnd = ends.last, sequence < lastEnd else { return false }
        return containsBeforeEnd(sequence)
    }

    @inline(never)
    private func containsBeforeEnd(_ sequence: UInt64) -> Bool {
        if sequence >= starts[starts.count - 1] { return true }
        let index = runIndex(startingAtOrBefore: sequence)
        return index >= 0 && sequence < ends[index]
    }

    /// Whether every number held is below `sequence`.
    func isAllBelow(_ sequence: UInt64) -> Bool {
        guard let lastEnd = ends.last else { return true }
        return lastEnd <= sequence
    }

    /// Adds `first ..< first + count` if all of it comes after every number held (extending
    /// the last run when it starts where that one ends); false, changing nothing, otherwise.
    mutating func appendRun(first: UInt64, count: UInt64) -> Bool {
        guard count > 0, first <= UInt64.max - count else { return false }
        if let lastEnd = ends.last {
            guard first >= lastEnd else { return false }
            if first == lastEnd {
                ends[ends.count - 1] = first + count
                return true
            }
        }
        starts.append(first)
        ends.append(first + count)
        trim()
        return true
    }

    /// Adds `sequence`; false if it was there.
    @inline(__always)
    mutating func insert(_ sequence: UInt64) -> Bool {
        // The next number of the last run (the common case) extends it in place.
        if let lastEnd = ends.last, sequence == lastEnd {
            ends[ends.count - 1] = lastEnd &+ 1
            return true
        }
        return insertElsewhere(sequence)
    }

    @inline(never)
    private mutating func insertElsewhere(_ sequence: UInt64) -> Bool {
        if let lastEnd = ends.last, sequence >= starts[starts.count - 1] {
            if sequence < lastEnd { return false }
            if sequence == lastEnd {
                ends[ends.count - 1] = lastEnd &+ 1
                return true
            }
        } else if !ends.isEmpty {
            // Before the last run: find its place (retransmissions and re-queued items).
            let index = runIndex(startingAtOrBefore: sequence)
            if index >= 0 && sequence < ends[index] { return false }
            let joinsLeft = index >= 0 && ends[index] == sequence
            let joinsRight = index + 1 < starts.count && starts[index + 1] == sequence &+ 1
            switch (joinsLeft, joinsRight) {
            case (true, true):
                ends[index] = ends[index + 1]
                starts.remove(at: index + 1)
                ends.remove(at: index + 1)
            case (true, false):
                ends[index] = sequence &+ 1
            case (false, true):
                starts[index + 1] = sequence
            case (false, false):
                starts.insert(sequence, at: index + 1)
                ends.insert(sequence &+ 1, at: index + 1)
                trim()
            }
            return true
        }
        starts.append(sequence)
        ends.append(sequence &+ 1)
        trim()
        return true
    }

    private mutating func trim() {
        guard starts.count > Self.maxRuns else { return }
        starts.removeFirst(Self.maxRuns / 2)
        ends.removeFirst(Self.maxRuns / 2)
    }

    /// The last run starting at or before `sequence`, or -1.
    private func runIndex(startingAtOrBefore sequence: UInt64) -> Int {
        var low = 0
        var high = starts.count
        while low < high {
            let middle = (low + high) / 2
            if starts[middle] <= sequence { low = middle + 1 } else { high = middle }
        }
        return low - 1
    }
}
