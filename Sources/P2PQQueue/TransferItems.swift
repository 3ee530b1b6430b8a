import P2PQWire

/// Consecutive items as a queue keeps them: one origin, attempt and hop count, sequences
/// `first ..< first + count`, and bytes back to back in one array held elsewhere (by the
/// machine's ``PayloadStore``, or by the ``TransferItems`` the run travels in). A pushed batch is
/// one run, and so is each run of a received transfer, so queueing, sending, acknowledging and
/// popping work a run at a time; only the bytes are touched per item.
///
/// Item `i`'s bytes start at `start` for the first, else at `ends[index + i - 1]`, and end at
/// `start + bytes` for the last, else at `ends[index + i]`, where `ends` is the array's table of
/// item ends. A run of one item needs no table (re-queued copies are such runs).
struct QueueRun: Sendable, Equatable {
    var origin: PeerID
    var first: UInt64
    var count: UInt32
    var attempt: UInt32
    var hops: UInt32
    /// The array: a store slot, or a message's buffer index.
    var slot: UInt32
    /// Where the run's items are in the array's table of ends.
    var index: UInt32
    /// Where the first item starts in the array.
    var start: UInt32
    /// Payload bytes of all the run's items.
    var bytes: UInt32

    /// Whether `next` continues this run on the wire (one run header for both).
    func isContinued(by next: QueueRun) -> Bool {
        next.origin == origin && next.first == first &+ UInt64(count) && next.attempt == attempt && next.hops == hops
    }

    /// Where item `i` starts, with `ends` the array's table.
    @inline(__always)
    func itemStart(_ i: Int, _ ends: UnsafeBufferPointer<UInt32>) -> UInt32 {
        i == 0 ? start : ends[Int(index) + i - 1]
    }

    /// Where item `i` ends.
    @inline(__always)
    func itemEnd(_ i: Int, _ ends: UnsafeBufferPointer<UInt32>) -> UInt32 {
        i == Int(count) - 1 ? start &+ bytes : ends[Int(index) + i]
    }

    /// Items `range` (not empty) as a run of their own.
    func items(_ range: Range<Int>, _ ends: UnsafeBufferPointer<UInt32>) -> QueueRun {
        precondition(!range.isEmpty && range.upperBound <= Int(count))
        var part = self
        part.first = first &+ UInt64(range.lowerBound)
        part.count = UInt32(range.count)
        part.index = index + UInt32(range.lowerBound)
        part.start = itemStart(range.lowerBound, ends)
        part.bytes = itemEnd(range.upperBound - 1, ends) &- part.start
        return part
    }

    /// The first `n` items (`0 < n < count`) as a run, and the rest as another.
    func split(at n: Int, _ ends: UnsafeBufferPointer<UInt32>) -> (QueueRun, QueueRun) {
        precondition(n > 0 && n < Int(count))
        return (items(0..<n, ends), items(n..<Int(count), ends))
    }
}

/// The items of a transfer message: runs of consecutive items (one origin, attempt and hop
/// count), their payloads back to back in a few shared arrays, each with its table of item
/// ends. A received transfer of small items is one array; a sent one carries the arrays of the
/// pushed batches its runs come from. Reading an element makes a ``QueueItem`` (a new reference
/// to its array); the queue itself never does.
public struct TransferItems: Sendable {
    var buffers: [[UInt8]]
    var ends: [[UInt32]]
    var runs: [QueueRun]
    /// How many items come before each run (for element access).
    private var runStarts: [Int]
    public let count: Int

    init(buffers: [[UInt8]], ends: [[UInt32]], runs: [QueueRun]) {
        self.buffers = buffers
        self.ends = ends
        self.runs = runs
        var starts: [Int] = []
        starts.reserveCapacity(runs.count)
        var total = 0
        for run in runs {
            starts.append(total)
            total += Int(run.count)
        }
        runStarts = starts
        count = total
    }

    /// `items`, as runs sharing their payloads' arrays where consecutive items lie back to back
    /// in one array.
    public init(_ items: some Sequence<QueueItem>) {
        var buffers: [[UInt8]] = []
        var ends: [[UInt32]] = []
        var runs: [QueueRun] = []
        var lastAddress: UnsafeRawPointer?
        for item in items {
            let address = item.payload.storageAddress
            if buffers.isEmpty || address == nil || address != lastAddress {
                buffers.append(item.payload.storage)
                ends.append([])
                lastAddress = address
            }
            let slot = UInt32(buffers.count - 1)
            let start = UInt32(item.payload.storageOffset)
            let length = UInt32(item.payload.count)
            let next = QueueRun(origin: item.id.origin, first: item.id.sequence, count: 1, attempt: item.attempt,
                                hops: item.hops, slot: slot, index: UInt32(ends[Int(slot)].count), start: start, bytes: length)
            if var last = runs.last, last.slot == slot, last.start &+ last.bytes == start, last.isContinued(by: next) {
                last.count += 1
                last.bytes += length
                runs[runs.count - 1] = last
            } else {
                runs.append(next)
            }
            ends[Int(slot)].append(start + length)
        }
        self.init(buffers: buffers, ends: ends, runs: runs)
    }

    /// Payload bytes of all the items.
    public var payloadBytes: Int { runs.reduce(0) { $0 + Int($1.bytes) } }

    /// The run holding item `position`, and the item's place in it.
    private func locate(_ position: Int) -> (run: Int, offset: Int) {
        precondition(position >= 0 && position < count, "TransferItems: index out of range")
        var low = 0, high = runs.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if runStarts[mid] <= position { low = mid } else { high = mid - 1 }
        }
        return (low, position - runStarts[low])
    }
}

extension TransferItems: RandomAccessCollection {
    public typealias Index = Int
    public typealias Indices = Range<Int>

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    /// The item at `position` (its payload a new reference to its array).
    public subscript(position: Int) -> QueueItem {
        let (r, i) = locate(position)
        let run = runs[r]
        let (start, end) = ends[Int(run.slot)].withUnsafeBufferPointer { (run.itemStart(i, $0), run.itemEnd(i, $0)) }
        return QueueItem(id: ItemID(origin: run.origin, sequence: run.first &+ UInt64(i)), attempt: run.attempt, hops: run.hops,
                         payload: ItemPayload(base: buffers[Int(run.slot)], start: Int(start), count: Int(end - start)))
    }
}

extension TransferItems: Equatable {
    /// The same items (identity, attempt, hops and payload bytes), however they are stored.
    public static func == (lhs: TransferItems, rhs: TransferItems) -> Bool {
        guard lhs.count == rhs.count else { return false }
        for index in 0..<lhs.count {
            let a = lhs[index], b = rhs[index]
            guard a.id == b.id, a.attempt == b.attempt, a.hops == b.hops, a.payload == b.payload else { return false }
        }
        return true
    }
}

extension TransferItems: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: QueueItem...) { self.init(elements) }
}
