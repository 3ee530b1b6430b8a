import P2PQWire

/// One item as a queue keeps it: its identity and bookkeeping, and where its bytes are, as a
/// range of an array held elsewhere (by the machine's ``PayloadStore``, or by the
/// ``TransferItems`` it travels in). A plain value: queues and transfers of entries are moved,
/// copied and dropped without a reference-count operation per item.
struct QueueEntry: Sendable, Equatable {
    var id: ItemID
    var attempt: UInt32
    var hops: UInt32
    var extent: PayloadExtent
}

/// The items of a transfer message, with their payloads as ranges of a few shared arrays: the
/// small items of a received transfer all point into the one array they were read into, and
/// the items of a pushed batch into the batch's buffer. Reading an element makes a
/// ``QueueItem`` (a new reference to its array); the queue itself never does.
public struct TransferItems: Sendable {
    var buffers: [[UInt8]]
    var entries: [QueueEntry]

    init(buffers: [[UInt8]], entries: [QueueEntry]) {
        self.buffers = buffers
        self.entries = entries
    }

    /// `items`, sharing their payloads' arrays (consecutive items of one array share an entry).
    public init(_ items: some Sequence<QueueItem>) {
        var entries: [QueueEntry] = []
        var lastAddress: UnsafeRawPointer?
        var buffers: [[UInt8]] = []
        for item in items {
            let address = item.payload.storageAddress
            if buffers.isEmpty || address == nil || address != lastAddress {
                buffers.append(item.payload.storage)
                lastAddress = address
            }
            entries.append(QueueEntry(id: item.id, attempt: item.attempt, hops: item.hops, extent: PayloadExtent(
                buffer: UInt32(buffers.count - 1), start: UInt32(item.payload.storageOffset), length: UInt32(item.payload.count))))
        }
        self.init(buffers: buffers, entries: entries)
    }

    /// Payload bytes of all the items.
    public var payloadBytes: Int { entries.reduce(0) { $0 + Int($1.extent.length) } }

    /// Calls `body` with the payload of the item at `position`, in place.
    public func withUnsafePayload<R>(at position: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let extent = entries[position].extent
        return buffers[Int(extent.buffer)].withUnsafeBytes { all in
            body(UnsafeRawBufferPointer(rebasing: all[Int(extent.start)..<Int(extent.start) + Int(extent.length)]))
        }
    }
}

extension TransferItems: RandomAccessCollection {
    public typealias Index = Int
    public typealias Indices = Range<Int>

    public var startIndex: Int { 0 }
    public var endIndex: Int { entries.count }

    /// The item at `position` (its payload a new reference to its array).
    public subscript(position: Int) -> QueueItem {
        let entry = entries[position]
        return QueueItem(id: entry.id, attempt: entry.attempt, hops: entry.hops, payload: ItemPayload(
            base: buffers[Int(entry.extent.buffer)], start: Int(entry.extent.start), count: Int(entry.extent.length)))
    }
}

extension TransferItems: Equatable {
    /// The same items (identity, attempt, hops and payload bytes), wherever the bytes are stored.
    public static func == (lhs: TransferItems, rhs: TransferItems) -> Bool {
        guard lhs.entries.count == rhs.entries.count else { return false }
        for index in lhs.entries.indices {
            let a = lhs.entries[index], b = rhs.entries[index]
            guard a.id == b.id, a.attempt == b.attempt, a.hops == b.hops, a.extent.length == b.extent.length,
                  lhs.withUnsafePayload(at: index, { x in rhs.withUnsafePayload(at: index) { y in x.elementsEqual(y) } })
            else { return false }
        }
        return true
    }
}

extension TransferItems: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: QueueItem...) { self.init(elements) }
}

/// Numbers the arrays a run of entries points into, in first-seen order, for a message or a
/// popped batch that carries each array once: consecutive entries mostly share one, so the
/// common case is a comparison, and a lookup happens only where the array changes.
struct ArrayNumbering {
    private var lastSlot: UInt32 = .max
    private var lastIndex: UInt32 = 0
    private var seen: [UInt32: UInt32] = [:]
    private(set) var count: UInt32 = 0

    /// The number of `slot`, and whether it is new (the caller then adds its array).
    mutating func number(of slot: UInt32) -> (index: UInt32, isNew: Bool) {
        if slot == lastSlot && count > 0 { return (lastIndex, false) }
        if count == 1 && seen.isEmpty { seen[lastSlot] = lastIndex }
        if count > 0, let known = seen[slot] {
            lastSlot = slot
            lastIndex = known
            return (known, false)
        }
        let index = count
        count += 1
        if count > 1 { seen[slot] = index }
        lastSlot = slot
        lastIndex = index
        return (index, true)
    }
}
