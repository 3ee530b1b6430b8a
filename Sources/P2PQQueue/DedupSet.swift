import P2PQWire

/// The received item copies seen recently, so a retransmission (same origin, sequence,
/// attempt and hop count) is dropped.
///
/// Per origin, attempt and hop count the copies are kept as sorted runs of sequence numbers:
/// items of a transfer mostly come from one origin in increasing order, so a copy usually
/// just extends the last run of the key it shares with the previous copy (no hashing per
/// item). Two generations: when the current one has seen `capacity` copies it becomes the
/// previous one and the old previous one is dropped whole, so at least the last `capacity`
/// copies are remembered, and memory is at most proportional to `2 × capacity`.
struct DedupSet: Sendable {
    let capacity: Int

    private struct Key: Hashable, Sendable {
        var origin: UInt32
        var attempt: UInt32
        var hops: UInt32
    }

    private struct Generation: Sendable {
        var runs: [Key: SequenceRuns] = [:]
        var copies = 0
        /// The key used last, kept out of `runs` while in use (no hashing per copy).
        var hotKey: Key?
        var hot = SequenceRuns()

        // These run once per received item: the common case (the hot key again) is inline, the
        // switch to another key out of line. Left as calls they were 5 % of W1's consumer.
        @inline(__always)
        mutating func select(_ key: Key) {
            if hotKey != key { switchHot(to: key) }
        }

        @inline(never)
        private mutating func switchHot(to key: Key) {
            if let old = hotKey { runs[old] = hot }
            hotKey = key
            hot = runs.removeValue(forKey: key) ?? SequenceRuns()
        }

        @inline(__always)
        func contains(_ key: Key, _ sequence: UInt64) -> Bool {
            if hotKey == key { return hot.contains(sequence) }
            return runs[key]?.contains(sequence) ?? false
        }

        /// Whether every copy remembered for `key` is below `sequence`.
        func isAllAfter(_ key: Key, _ sequence: UInt64) -> Bool {
            if hotKey == key { return hot.isAllBelow(sequence) }
            return runs[key]?.isAllBelow(sequence) ?? true
        }
    }

    private var current = Generation()
    private var previous = Generation()
    private var origins: [PeerID: UInt32] = [:]
    private var lastOrigin: PeerID?
    private var lastIndex: UInt32 = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Copies remembered.
    var count: Int { current.copies + previous.copies }

    /// Inserts the copies of sequences `first ..< first + count` at once if none of them was
    /// seen and all come after every copy remembered for their origin, attempt and hop count (a
    /// transfer's run, the common case): true then. False changes nothing; the caller then
    /// inserts them one by one.
    mutating func insertRun(origin peer: PeerID, first: UInt64, count: Int, attempt: UInt32, hops: UInt32) -> Bool {
        guard count > 0, current.copies + count < capacity, first <= UInt64.max - UInt64(count) else { return false }
        let key = Key(origin: intern(peer), attempt: attempt, hops: hops)
        if previous.copies > 0 && !previous.isAllAfter(key, first) { return false }
        current.select(key)
        guard current.hot.appendRun(first: first, count: UInt64(count)) else { return false }
        current.copies += count
        return true
    }

    /// Inserts the copy; false if it was seen recently.
    mutating func insert(_ id: ItemID, attempt: UInt32, hops: UInt32) -> Bool {
        let key = Key(origin: intern(id.origin), attempt: attempt, hops: hops)
        if previous.copies > 0 && previous.contains(key, id.sequence) { return false }
        current.select(key)
        guard current.hot.insert(id.sequence) else { return false }
        current.copies += 1
        if current.copies >= capacity {
            previous = current
            current = Generation()
        }
        return true
    }

    /// `peer`'s small number.
    @inline(__always)
    private mutating func intern(_ peer: PeerID) -> UInt32 {
        let origin: UInt32
        if peer == lastOrigin {
            origin = lastIndex  // items of a transfer mostly share their origin: skip the hash
        } else if let known = origins[peer] {
            origin = known
            lastOrigin = peer
            lastIndex = known
        } else {
            // Interned origins are bounded too: past 65,536, everything starts over.
            if origins.count >= 1 << 16 {
                origins = [:]
                current = Generation()
                previous = Generation()
            }
            origin = UInt32(origins.count)
            origins[peer] = origin
            lastOrigin = peer
            lastIndex = origin
        }
        return origin
    }
}
