import P2PQWire

/// The executor's books of the calls it holds, per caller: which task each call runs in (its
/// own or, memoized, the one it joined).
///
/// A caller numbers its calls in increasing order and they mostly arrive and finish in about
/// that order, so each caller's calls live in a window by sequence number (`SequenceTable`):
/// finding, adding and removing a call hashes no `CallID`. The last caller's books are cached,
/// so a stream of calls from one caller hashes no peer ID either. A caller's books live only
/// while it has calls here (the last caller's stay while it is the last, so a caller with one
/// call at a time does not build and drop them per call).
struct CallIndex: Sendable {
    private struct Books: Sendable {
        let caller: PeerID
        /// Any order: a call below the window's end (a queued call overtaken by direct ones, a
        /// redelivery) lands in its slot or aside, and is found like the others.
        var window = SequenceTable<TaskID>()

        var count: Int { window.count }

        init(caller: PeerID) { self.caller = caller }

        func task(_ sequence: UInt64) -> TaskID? { window[sequence] }

        mutating func add(_ sequence: UInt64, _ task: TaskID) { window.append(sequence, task) }

        mutating func remove(_ sequence: UInt64, ifNaming task: TaskID?) {
            if let held = window[sequence], task == nil || held == task { window.remove(sequence) }
        }
    }

    private var books: [Books] = []
    private var index: [PeerID: Int] = [:]
    /// The slot of the caller used last, or -1.
    private var last = -1

    /// Calls held, over all callers.
    var count: Int { books.reduce(0) { $0 + $1.count } }
    /// Callers whose books are kept (those with calls here, and perhaps the last one used).
    var callers: Int { books.count }

    /// The task call `call` runs in.
    mutating func task(for call: CallID) -> TaskID? {
        guard let slot = find(call.caller) else { return nil }
        return books[slot].task(call.sequence)
    }

    /// Notes that `call` (not held yet) runs in `task`.
    mutating func add(_ call: CallID, task: TaskID) {
        let slot: Int
        if let found = find(call.caller) {
            slot = found
        } else {
            books.append(Books(caller: call.caller))
            index[call.caller] = books.count - 1
            slot = use(books.count - 1)
        }
        books[slot].add(call.sequence, task)
    }

    /// Forgets `call`; with `task`, only if it runs in that task.
    mutating func remove(_ call: CallID, ifNaming task: TaskID? = nil) {
        guard let slot = find(call.caller) else { return }
        books[slot].remove(call.sequence, ifNaming: task)
    }

    /// Forgets every call of `caller`; its calls and their tasks, by ascending sequence.
    mutating func removeAll(of caller: PeerID) -> [(sequence: UInt64, task: TaskID)] {
        guard let slot = find(caller) else { return [] }
        let taken = books[slot].window
        drop(slot)
        return taken.sequences { _ in true }.map { (sequence: $0, task: taken[$0]!) }
    }

    /// The slot of `caller`'s books, made the last one used.
    private mutating func find(_ caller: PeerID) -> Int? {
        if last >= 0 && books[last].caller == caller { return last }
        guard let slot = index[caller] else { return nil }
        return use(slot)
    }

    /// Makes `slot` the last one used, dropping the previous last one if it holds no call;
    /// where `slot`'s books are now.
    @discardableResult
    private mutating func use(_ slot: Int) -> Int {
        var slot = slot
        if last >= 0 && last != slot && books[last].count == 0 {
            // The final books move into the dropped slot.
            if slot == books.count - 1 { slot = last }
            drop(last)
        }
        last = slot
        return slot
    }

    /// Removes the books in `slot`, moving the final ones into it.
    private mutating func drop(_ slot: Int) {
        index[books[slot].caller] = nil
        let final = books.count - 1
        if slot != final {
            books.swapAt(slot, final)
            index[books[slot].caller] = slot
        }
        books.removeLast()
        if last == slot {
            last = -1
        } else if last == final {
            last = slot
        }
    }
}
