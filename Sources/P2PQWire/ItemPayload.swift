/// The bytes of one queue item.
///
/// A payload is a range of a byte array that may hold other items' bytes too: the small items
/// of one received transfer share one allocation (when the queue's consumers read in place),
/// and so do the items of one pushed ``ItemBatch``; so neither side of a link allocates per
/// item. Like an `ArraySlice`, a payload keeps its whole array alive; ``bytes`` gives an array
/// of its own (no copy when the payload is a whole array, as for items pushed as `[UInt8]`).
public struct ItemPayload: Sendable {
    // 16 bytes: a queue entry stays small, and a range needs no second reference.
    @usableFromInline var base: [UInt8]
    @usableFromInline var start: UInt32
    @usableFromInline var length: UInt32

    /// The whole of `bytes` (no copy).
    @inlinable
    public init(_ bytes: [UInt8]) {
        precondition(bytes.count <= Int(UInt32.max), "ItemPayload: more than 4 GiB")
        base = bytes
        start = 0
        length = UInt32(truncatingIfNeeded: bytes.count)
    }

    /// `count` bytes of `base` from `start` (no copy: the payload shares `base`).
    @inlinable
    public init(base: [UInt8], start: Int, count: Int) {
        precondition(start >= 0 && count >= 0 && start + count <= base.count && start + count <= Int(UInt32.max))
        self.base = base
        self.start = UInt32(truncatingIfNeeded: start)
        self.length = UInt32(truncatingIfNeeded: count)
    }

    /// The bytes as an array of their own: the array itself when the payload is a whole array,
    /// a copy otherwise.
    @inlinable
    public var bytes: [UInt8] {
        if start == 0 && Int(length) == base.count { return base }
        // Through the buffer, not a slice: a slice would retain and release the shared array.
        let start = Int(self.start), count = Int(length)
        return base.withUnsafeBufferPointer { all in Array(UnsafeBufferPointer(rebasing: all[start..<start + count])) }
    }

    /// The bytes as a slice of the shared array (no copy).
    @inlinable
    public var slice: ArraySlice<UInt8> { base[Int(start)..<Int(start + length)] }

    /// Calls `body` with the bytes in place.
    @inlinable
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let start = Int(self.start), count = Int(length)
        // The array's buffer outlives the call; the result is carried out of the closure because
        // a typed throw cannot cross withUnsafeBytes.
        let result: Result<R, E> = base.withUnsafeBytes { all in
            Result { () throws(E) -> R in try body(UnsafeRawBufferPointer(rebasing: all[start..<start + count])) }
        }
        return try result.get()
    }
}

extension ItemPayload {
    /// The whole array the payload is a range of (shared, not copied).
    @inlinable public var storage: [UInt8] { base }

    /// Where the payload starts in ``storage``.
    @inlinable public var storageOffset: Int { Int(start) }

    /// The address of ``storage``'s bytes: payloads with the same address share one array, for
    /// as long as some payload keeps it alive. Reads no reference count.
    @inlinable public var storageAddress: UnsafeRawPointer? { base.withUnsafeBytes { $0.baseAddress } }
}

extension ItemPayload: RandomAccessCollection {
    public typealias Index = Int
    public typealias Indices = Range<Int>
    public typealias SubSequence = Slice<ItemPayload>

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { Int(length) }
    @inlinable public var count: Int { Int(length) }

    @inlinable
    public subscript(position: Int) -> UInt8 {
        precondition(position >= 0 && position < Int(length), "ItemPayload: index out of range")
        return base[Int(start) + position]
    }

    @inlinable
    public func withContiguousStorageIfAvailable<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R? {
        let start = Int(self.start), count = Int(length)
        return try base.withUnsafeBufferPointer { all in try body(UnsafeBufferPointer(rebasing: all[start..<start + count])) }
    }
}

extension ItemPayload: Equatable {
    /// Equal bytes (wherever they are stored).
    public static func == (lhs: ItemPayload, rhs: ItemPayload) -> Bool {
        guard lhs.length == rhs.length else { return false }
        return lhs.withUnsafeBytes { a in rhs.withUnsafeBytes { b in a.elementsEqual(b) } }
    }
}

extension ItemPayload: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: UInt8...) { self.init(elements) }
}

extension ItemPayload: CustomStringConvertible {
    public var description: String { "\(Array(self))" }
}

/// Items built into one byte buffer: a push of an ``ItemBatch`` makes one allocation for all of
/// its items, where `[[UInt8]]` makes one per item.
///
/// ```swift
/// var batch = ItemBatch(capacity: 1000, bytes: 64_000)
/// for n in 0..<1000 { batch.append(count: 64) { $0.storeBytes(of: UInt64(n), as: UInt64.self) } }
/// try await queue.push(batch)
/// ```
///
/// The items a consumer pops keep sharing the buffers they arrived in (see ``ItemPayload``).
public struct ItemBatch: Sendable {
    @usableFromInline var storage: [UInt8] = []
    /// Where each item ends in `storage`.
    @usableFromInline var ends: [UInt32] = []

    /// An empty batch with room for `items` items of `bytes` bytes in all.
    public init(capacity items: Int = 0, bytes: Int = 0) {
        ends.reserveCapacity(items)
        storage.reserveCapacity(bytes)
    }

    /// Items made of `items`' bytes.
    @inlinable
    public init(_ items: some Sequence<some Collection<UInt8>>) {
        for item in items { append(item) }
    }

    /// Total bytes of the items.
    public var byteCount: Int { storage.count }

    /// Appends an item with a copy of `bytes`.
    @inlinable
    public mutating func append(_ bytes: some Collection<UInt8>) {
        precondition(storage.count + bytes.count <= Int(UInt32.max), "ItemBatch: more than 4 GiB")
        storage.append(contentsOf: bytes)
        ends.append(UInt32(truncatingIfNeeded: storage.count))
    }

    /// Appends an item that `write` appends to the batch's buffer (for an encoder that writes
    /// into an array: no array of its own per item). If `write` throws, the batch is as before.
    @inlinable
    public mutating func append<E: Error>(writing write: (inout [UInt8]) throws(E) -> Void) throws(E) {
        let start = storage.count
        do throws(E) {
            try write(&storage)
        } catch {
            storage.removeSubrange(Swift.min(start, storage.count)...)
            throw error
        }
        precondition(storage.count >= start && storage.count <= Int(UInt32.max), "ItemBatch: the writer removed bytes, or more than 4 GiB")
        ends.append(UInt32(truncatingIfNeeded: storage.count))
    }

    /// Appends an item of `count` bytes, zeroed, then filled in place by `body`.
    @inlinable
    public mutating func append<E: Error>(count: Int, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> Void) throws(E) {
        precondition(count >= 0 && storage.count + count <= Int(UInt32.max), "ItemBatch: more than 4 GiB")
        let start = storage.count
        storage.appendZeros(count)
        let result: Result<Void, E> = storage.withUnsafeMutableBytes { all in
            Result { () throws(E) in try body(UnsafeMutableRawBufferPointer(rebasing: all[start..<start + count])) }
        }
        if case .failure = result { storage.removeLast(count) }
        try result.get()
        ends.append(UInt32(truncatingIfNeeded: storage.count))
    }
}

extension ItemBatch: RandomAccessCollection {
    public typealias Index = Int
    public typealias Indices = Range<Int>

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { ends.count }

    /// The size of the item at `position`.
    @inlinable
    public func byteCount(at position: Int) -> Int {
        Int(ends[position]) - (position == 0 ? 0 : Int(ends[position - 1]))
    }

    /// Where the item at `position` starts in ``storage``.
    @inlinable
    public func storageOffset(at position: Int) -> Int {
        position == 0 ? 0 : Int(ends[position - 1])
    }

    /// The buffer holding all the items back to back (shared, not copied).
    @inlinable public var bytes: [UInt8] { storage }

    /// Where each item ends in ``bytes`` (the first starts at 0; shared, not copied).
    @inlinable public var itemEnds: [UInt32] { ends }

    /// The item at `position`, sharing the batch's buffer.
    @inlinable
    public subscript(position: Int) -> ItemPayload {
        let start = position == 0 ? 0 : Int(ends[position - 1])
        return ItemPayload(base: storage, start: start, count: Int(ends[position]) - start)
    }

    /// All items, sharing the batch's buffer.
    public var payloads: [ItemPayload] {
        var out: [ItemPayload] = []
        out.reserveCapacity(ends.count)
        var start = 0
        for end in ends {
            out.append(ItemPayload(base: storage, start: start, count: Int(end) - start))
            start = Int(end)
        }
        return out
    }
}

/// Where one payload lies: a range of one of a collection's shared arrays. Plain values (no
/// reference), so lists of them are copied and dropped without touching a reference count.
public struct PayloadExtent: Sendable, Hashable {
    /// The array, as an index into the collection's arrays (or a holder's table).
    public var buffer: UInt32
    public var start: UInt32
    public var length: UInt32

    @inlinable
    public init(buffer: UInt32, start: UInt32, length: UInt32) {
        self.buffer = buffer
        self.start = start
        self.length = length
    }
}

/// A batch of item payloads kept as ranges of a few shared arrays: what a pop returns.
///
/// The arrays are held once each, however many items point into them, so a batch of thousands
/// of small items is handed over, and let go, with a reference-count operation per array rather
/// than per item. An element (``ItemPayload``) takes its own reference when read;
/// ``withUnsafeBytes(at:_:)`` reads an item in place without one.
public struct ItemPayloads: Sendable {
    @usableFromInline var buffers: [[UInt8]] = []
    @usableFromInline var extents: [PayloadExtent] = []

    /// No items.
    @inlinable
    public init() {}

    /// `payloads`, sharing their arrays (consecutive payloads of one array share an entry).
    public init(_ payloads: some Sequence<ItemPayload>) {
        var lastAddress: UnsafeRawPointer?
        for payload in payloads {
            let address = payload.storageAddress
            if buffers.isEmpty || address == nil || address != lastAddress {
                buffers.append(payload.storage)
                lastAddress = address
            }
            extents.append(PayloadExtent(buffer: UInt32(buffers.count - 1), start: payload.start, length: payload.length))
        }
    }

    /// Reserves room for `items` items in `arrays` arrays.
    @inlinable
    public mutating func reserveCapacity(items: Int, arrays: Int) {
        extents.reserveCapacity(items)
        buffers.reserveCapacity(arrays)
    }

    /// Adds an array for items to point into; its index for ``append(_:)``.
    @inlinable
    public mutating func appendArray(_ array: [UInt8]) -> UInt32 {
        buffers.append(array)
        return UInt32(truncatingIfNeeded: buffers.count - 1)
    }

    /// Adds an item: a range of an array added with ``appendArray(_:)``.
    @inlinable
    public mutating func append(_ extent: PayloadExtent) {
        precondition(Int(extent.buffer) < buffers.count
                     && Int(extent.start) + Int(extent.length) <= buffers[Int(extent.buffer)].count,
                     "ItemPayloads: range outside its array")
        extents.append(extent)
    }

    /// Arrays the items share.
    public var arrayCount: Int { buffers.count }

    /// Calls `body` with the bytes of the item at `position`, in place, without taking a
    /// reference to its array.
    @inlinable
    public func withUnsafeBytes<R, E: Error>(at position: Int, _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let extent = extents[position]
        let start = Int(extent.start), count = Int(extent.length)
        let result: Result<R, E> = buffers[Int(extent.buffer)].withUnsafeBytes { all in
            Result { () throws(E) -> R in try body(UnsafeRawBufferPointer(rebasing: all[start..<start + count])) }
        }
        return try result.get()
    }

    /// The size of the item at `position`.
    @inlinable
    public func byteCount(at position: Int) -> Int { Int(extents[position].length) }

    /// Each item as an array of its own: no copy for an item that is a whole array.
    public var arrays: [[UInt8]] { map(\.bytes) }
}

extension ItemPayloads: RandomAccessCollection {
    public typealias Index = Int
    public typealias Indices = Range<Int>

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { extents.count }

    /// The item at `position` (a new reference to its array).
    @inlinable
    public subscript(position: Int) -> ItemPayload {
        let extent = extents[position]
        return ItemPayload(base: buffers[Int(extent.buffer)], start: Int(extent.start), count: Int(extent.length))
    }
}

extension ItemPayloads: Equatable {
    /// The same items with equal bytes, wherever they are stored.
    public static func == (lhs: ItemPayloads, rhs: ItemPayloads) -> Bool {
        lhs.count == rhs.count && lhs.indices.allSatisfy { index in
            lhs.withUnsafeBytes(at: index) { a in rhs.withUnsafeBytes(at: index) { b in a.elementsEqual(b) } }
        }
    }
}

extension ItemPayloads: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: ItemPayload...) { self.init(elements) }
}
