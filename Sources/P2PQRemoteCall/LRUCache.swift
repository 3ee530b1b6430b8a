/// A bounded least-recently-used cache: at most `maxEntries` entries and `maxBytes` bytes of
/// cost, both O(1) per operation.
///
/// Entries live in an array linked into a recency list by index, so the cache allocates only
/// when it grows, never per lookup.
public struct LRUCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    public let maxEntries: Int
    public let maxBytes: Int
    /// Sum of the costs of the entries held.
    public private(set) var byteCount = 0

    private struct Node: Sendable {
        var key: Key
        // Optional so a removed entry's value is freed at once, not when its slot is reused.
        var value: Value?
        var cost: Int
        var newer: Int
        var older: Int
    }

    private var nodes: [Node] = []
    private var free: [Int] = []
    private var index: [Key: Int] = [:]
    /// Most and least recently used node, -1 when empty.
    private var newest = -1
    private var oldest = -1

    /// A cache holding at most `maxEntries` entries (0 disables it) and `maxBytes` of cost.
    public init(maxEntries: Int, maxBytes: Int = Int.max) {
        precondition(maxEntries >= 0 && maxBytes >= 0, "cache bounds must not be negative")
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
    }

    /// Number of entries.
    public var count: Int { index.count }

    /// The value for `key`, marking it most recently used.
    public mutating func value(for key: Key) -> Value? {
        guard let slot = index[key] else { return nil }
        moveToFront(slot)
        return nodes[slot].value
    }

    /// Whether `key` is cached, without touching its recency.
    public func contains(_ key: Key) -> Bool { index[key] != nil }

    /// Inserts or replaces `key`, evicting least recently used entries to stay within bounds.
    /// An entry costing more than `maxBytes` on its own is not kept.
    public mutating func insert(_ value: Value, for key: Key, cost: Int) {
        removeValue(for: key)
        guard maxEntries > 0, cost <= maxBytes else { return }
        while index.count >= maxEntries || byteCount + cost > maxBytes, oldest >= 0 {
            removeSlot(oldest)
        }
        let node = Node(key: key, value: value, cost: cost, newer: -1, older: newest)
        let slot: Int
        if let reused = free.popLast() {
            nodes[reused] = node
            slot = reused
        } else {
            nodes.append(node)
            slot = nodes.count - 1
        }
        if newest >= 0 { nodes[newest].newer = slot }
        newest = slot
        if oldest < 0 { oldest = slot }
        index[key] = slot
        byteCount += cost
    }

    /// Removes `key` if cached.
    public mutating func removeValue(for key: Key) {
        if let slot = index[key] { removeSlot(slot) }
    }

    /// Keys from most to least recently used (for tests and status).
    public var keysByRecency: [Key] {
        var keys: [Key] = []
        var slot = newest
        while slot >= 0 {
            keys.append(nodes[slot].key)
            slot = nodes[slot].older
        }
        return keys
    }

    private mutating func unlink(_ slot: Int) {
        let node = nodes[slot]
        if node.newer >= 0 { nodes[node.newer].older = node.older } else { newest = node.older }
        if node.older >= 0 { nodes[node.older].newer = node.newer } else { oldest = node.newer }
    }

    private mutating func moveToFront(_ slot: Int) {
        guard slot != newest else { return }
        unlink(slot)
        nodes[slot].older = newest
        nodes[slot].newer = -1
        if newest >= 0 { nodes[newest].newer = slot }
        newest = slot
        if oldest < 0 { oldest = slot }
    }

    private mutating func removeSlot(_ slot: Int) {
        unlink(slot)
        index[nodes[slot].key] = nil
        nodes[slot].value = nil
        byteCount -= nodes[slot].cost
        free.append(slot)
    }
}
