import P2PQWire

/// The arrays items' bytes live in, each held once (with its table of item ends, for runs of
/// more than one item) and a count of the queued, in-flight and owned items pointing into it
/// (slots are reused; at most one per item). A pushed batch, or a received transfer of small
/// items, is one array for all its items, so an item is queued, sent, popped and confirmed with
/// integer updates here rather than an atomic reference-count operation on its array each time.
struct PayloadStore: Sendable {
    private struct Slot: Sendable {
        var array: [UInt8]
        /// Where the array's items end (empty when only runs of one item point in).
        var ends: [UInt32]
        var holders: Int
        /// The numbering this slot was last given a number in, and that number.
        var numbering: UInt64 = 0
        var number: UInt32 = 0
    }

    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    /// The slot taken last (-1 once let go): consecutive payloads of one array share it.
    private var lastSlot = -1
    private var numbering: UInt64 = 0
    private var numbered: UInt32 = 0

    /// Arrays held (for tests of the bound).
    var count: Int { slots.count - freeSlots.count }

    /// Holds `array`, whose items end at `ends` (empty for runs of one item), for `holders`
    /// items; its slot.
    mutating func hold(_ array: [UInt8], ends: [UInt32], holders count: Int) -> UInt32 {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = Int(free)
            slots[slot].array = array
            slots[slot].ends = ends
            slots[slot].holders = count
        } else {
            slot = slots.count
            slots.append(Slot(array: array, ends: ends, holders: count))
        }
        lastSlot = slot
        return UInt32(slot)
    }

    /// Holds `payload`'s array `count` more times, for a run of one item: the last slot again
    /// when it is the same array (no reference count taken), a new one otherwise.
    mutating func hold(_ payload: ItemPayload, holders count: Int) -> UInt32 {
        if lastSlot >= 0, payload.storageAddress == slots[lastSlot].array.withUnsafeBytes({ $0.baseAddress }) {
            slots[lastSlot].holders += count
            return UInt32(lastSlot)
        }
        return hold(payload.storage, ends: [], holders: count)
    }

    /// `count` more holders of `slot`.
    mutating func retain(_ slot: UInt32, count: Int = 1) {
        assert(slots[Int(slot)].holders > 0, "PayloadStore: retained a slot already let go")
        slots[Int(slot)].holders += count
    }

    /// `count` holders of `slot` are gone; the array is let go with the last.
    mutating func release(_ slot: UInt32, count: Int = 1) {
        let slot = Int(slot)
        slots[slot].holders -= count
        assert(slots[slot].holders >= 0, "PayloadStore: released more than held")
        guard slots[slot].holders == 0 else { return }
        slots[slot].array = []
        slots[slot].ends = []
        freeSlots.append(UInt32(slot))
        if slot == lastSlot { lastSlot = -1 }
        // All let go: the slot table gives its memory back, so a burst of single-array pushes
        // does not keep it large.
        if freeSlots.count == slots.count && slots.count > 64 {
            slots = []
            freeSlots = []
        }
    }

    /// Slots allocated, free ones included (for tests of the bound).
    var slotCapacity: Int { slots.count }

    /// The array of `slot` (a new reference to it).
    func array(_ slot: UInt32) -> [UInt8] { slots[Int(slot)].array }

    /// The table of item ends of `slot`'s array (a new reference to it).
    func ends(_ slot: UInt32) -> [UInt32] { slots[Int(slot)].ends }

    /// Starts numbering slots afresh (for a message or a popped batch that lists each array
    /// once): see ``number(_:)``.
    mutating func startNumbering() {
        numbering &+= 1
        numbered = 0
    }

    /// `slot`'s number in the current numbering (0, 1, ... in first-seen order), and whether it
    /// is new: no hashing, however many arrays there are.
    mutating func number(_ slot: UInt32) -> (index: UInt32, isNew: Bool) {
        let slot = Int(slot)
        if slots[slot].numbering == numbering { return (slots[slot].number, false) }
        slots[slot].numbering = numbering
        slots[slot].number = numbered
        numbered += 1
        return (numbered - 1, true)
    }
}
