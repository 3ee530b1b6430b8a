import DequeModule
import P2PQWire

/// A ``QueueMachine``'s local FIFO: runs of consecutive items (a pushed batch is one), their
/// bytes in the machine's ``PayloadStore``, and their item and byte counts. Every change goes
/// through a method here that keeps the counts equal to the runs' sums.
///
/// Items leave from the front in the order they entered; items put back (returned by a
/// transfer or a lease, released, re-queued) go to the front, in their order. The machine
/// decides what goes where; this only keeps the runs and their counts.
struct LocalQueue: Sendable {
    /// The runs, front first.
    private(set) var runs = Deque<QueueRun>()
    /// Items queued: the runs' counts together.
    private(set) var items = 0
    /// Payload bytes queued: the runs' bytes together.
    private(set) var bytes = 0

    var isEmpty: Bool { runs.isEmpty }

    /// The front run.
    var first: QueueRun? { runs.first }

    /// Appends `run` at the back.
    mutating func append(_ run: QueueRun) {
        items += Int(run.count)
        bytes += Int(run.bytes)
        runs.append(run)
    }

    /// Puts `back` at the front, in its order.
    mutating func putBack<C: Collection>(_ back: C) where C.Element == QueueRun {
        for run in back {
            items += Int(run.count)
            bytes += Int(run.bytes)
        }
        runs.insert(contentsOf: back, at: 0)
    }

    /// Removes the front run, or its first `count` items when it holds more (the rest stays in
    /// front): the run taken, and its array's table of item ends (from `store`).
    mutating func takeFront(upTo count: Int, in store: PayloadStore) -> (QueueRun, [UInt32]) {
        var run = runs.removeFirst()
        let ends = store.ends(run.slot)
        if Int(run.count) > count {
            let (head, tail) = ends.withUnsafeBufferPointer { run.split(at: count, $0) }
            runs.prepend(tail)
            run = head
        }
        items -= Int(run.count)
        bytes -= Int(run.bytes)
        return (run, ends)
    }

    /// Removes the front run; `rest` (the part of it not taken, if any) stays in front.
    mutating func removeFirst(leaving rest: QueueRun?) {
        let run = runs.removeFirst()
        items -= Int(run.count)
        bytes -= Int(run.bytes)
        if let rest {
            items += Int(rest.count)
            bytes += Int(rest.bytes)
            runs.prepend(rest)
        }
    }

    /// Removes the runs `matches` picks, keeping the others in order; the removed ones, in order.
    mutating func removeRuns(where matches: (QueueRun) -> Bool) -> [QueueRun] {
        var kept = Deque<QueueRun>()
        var removed: [QueueRun] = []
        for run in runs {
            if matches(run) {
                removed.append(run)
                items -= Int(run.count)
                bytes -= Int(run.bytes)
            } else {
                kept.append(run)
            }
        }
        runs = kept
        return removed
    }

    /// Removes the items whose payload `matches`, keeping the others in order (a run with
    /// removed items splits around them); the removed ones, in order, as runs of one.
    mutating func removeItems(in store: PayloadStore, where matches: (ItemPayload) -> Bool) -> [QueueRun] {
        var kept = Deque<QueueRun>()
        var removed: [QueueRun] = []
        for run in runs {
            let array = store.array(run.slot)
            store.ends(run.slot).withUnsafeBufferPointer { ends in
                var keptFrom: Int?
                func keep(upTo end: Int) {
                    guard let from = keptFrom else { return }
                    kept.append(run.items(from..<end, ends))
                    keptFrom = nil
                }
                for i in 0..<Int(run.count) {
                    let begin = run.itemStart(i, ends), end = run.itemEnd(i, ends)
                    if matches(ItemPayload(base: array, start: Int(begin), count: Int(end &- begin))) {
                        keep(upTo: i)
                        removed.append(run.items(i..<(i + 1), ends))
                    } else if keptFrom == nil {
                        keptFrom = i
                    }
                }
                keep(upTo: Int(run.count))
            }
        }
        runs = kept
        for run in removed {
            items -= Int(run.count)
            bytes -= Int(run.bytes)
        }
        return removed
    }

    /// Takes every run out, front first, leaving the queue empty: for a pass that appends
    /// back the runs (or parts) it keeps, in order, and moves the others elsewhere.
    mutating func removeAll() -> Deque<QueueRun> {
        let all = runs
        runs = Deque(minimumCapacity: all.count)
        items = 0
        bytes = 0
        return all
    }
}
