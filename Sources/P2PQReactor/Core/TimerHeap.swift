/// Identifies a scheduled timer so that it can be cancelled.
public struct TimerID: Hashable, Sendable {
    let slot: UInt32
    let generation: UInt32
}

/// A deadline-ordered min-heap of timers with O(log n) insert and cancel.
///
/// Timers live in a slab of slots that remember their heap position, so a cancelled timer is
/// removed at once instead of lingering until its deadline: memory stays proportional to the
/// timers actually pending, even under heavy arm/cancel churn (per-call deadlines).
/// Equal deadlines fire in the order they were scheduled. Hand-written, not HeapModule's `Heap`,
/// which cannot remove an element from the middle.
struct TimerHeap {
    private struct Slot {
        var deadline: UInt64 = 0
        var sequence: UInt64 = 0
        var action: (() -> Void)?
        var heapIndex: Int = -1
        var generation: UInt32 = 0
    }

    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    private var heap: [UInt32] = []
    private var nextSequence: UInt64 = 0

    var count: Int { heap.count }
    var isEmpty: Bool { heap.isEmpty }

    /// The earliest pending deadline.
    var earliestDeadline: UInt64? { heap.first.map { slots[Int($0)].deadline } }

    mutating func schedule(deadline: UInt64, _ action: @escaping () -> Void) -> TimerID {
        let slot: UInt32
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = UInt32(slots.count)
            slots.append(Slot())
        }
        nextSequence &+= 1
        slots[Int(slot)].deadline = deadline
        slots[Int(slot)].sequence = nextSequence
        slots[Int(slot)].action = action
        slots[Int(slot)].heapIndex = heap.count
        heap.append(slot)
        siftUp(heap.count - 1)
        return TimerID(slot: slot, generation: slots[Int(slot)].generation)
    }

    /// Removes a pending timer. Returns false if it already fired or was cancelled.
    @discardableResult
    mutating func cancel(_ id: TimerID) -> Bool {
        guard Int(id.slot) < slots.count, slots[Int(id.slot)].generation == id.generation,
              slots[Int(id.slot)].heapIndex >= 0 else { return false }
        remove(at: slots[Int(id.slot)].heapIndex)
        return true
    }

    /// Removes and returns the action of the earliest timer if it is due at `now`.
    mutating func popExpired(now: UInt64) -> (() -> Void)? {
        guard let top = heap.first, slots[Int(top)].deadline <= now else { return nil }
        return remove(at: 0)
    }

    /// Drops every pending timer without running it.
    mutating func removeAll() {
        while !heap.isEmpty { _ = remove(at: heap.count - 1) }
    }

    @discardableResult
    private mutating func remove(at index: Int) -> (() -> Void)? {
        let slot = heap[index]
        let last = heap.removeLast()
        if index < heap.count {
            heap[index] = last
            slots[Int(last)].heapIndex = index
            siftDown(index)
            siftUp(index)
        }
        let action = slots[Int(slot)].action
        slots[Int(slot)].action = nil
        slots[Int(slot)].heapIndex = -1
        slots[Int(slot)].generation &+= 1
        freeSlots.append(slot)
        return action
    }

    private func less(_ a: UInt32, _ b: UInt32) -> Bool {
        let da = slots[Int(a)].deadline, db = slots[Int(b)].deadline
        return da != db ? da < db : slots[Int(a)].sequence < slots[Int(b)].sequence
    }

    private mutating func swapAt(_ i: Int, _ j: Int) {
        heap.swapAt(i, j)
        slots[Int(heap[i])].heapIndex = i
        slots[Int(heap[j])].heapIndex = j
    }

    private mutating func siftUp(_ index: Int) {
        var i = index
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(heap[i], heap[parent]) else { return }
            swapAt(i, parent)
            i = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var i = index
        while true {
            let left = 2 * i + 1
            guard left < heap.count else { return }
            var smallest = left
            let right = left + 1
            if right < heap.count && less(heap[right], heap[left]) { smallest = right }
            guard less(heap[smallest], heap[i]) else { return }
            swapAt(i, smallest)
            i = smallest
        }
    }
}
