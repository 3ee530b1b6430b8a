import HeapModule

/// The pending events of a simulation on a virtual clock, taken earliest first.
///
/// Events due at the same time come out in the order they were scheduled, so the order is total
/// and a seeded simulation replays exactly.
public struct EventQueue<Event> {
    /// An event with its time and its place in scheduling order (unique, so `<` is total and
    /// equal entries are the same entry).
    fileprivate struct Entry: Comparable {
        var time: UInt64
        var order: UInt64
        var event: Event

        static func < (a: Entry, b: Entry) -> Bool { (a.time, a.order) < (b.time, b.order) }
        static func == (a: Entry, b: Entry) -> Bool { (a.time, a.order) == (b.time, b.order) }
    }

    private var heap = Heap<Entry>()
    private var scheduled: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { heap.isEmpty }

    public var count: Int { heap.count }

    /// When the next event is due; nil when none is pending.
    public var nextTime: UInt64? { heap.min?.time }

    /// Adds `event`, due at `time`; it comes after every event already scheduled for `time`.
    public mutating func schedule(_ event: Event, at time: UInt64) {
        heap.insert(Entry(time: time, order: scheduled, event: event))
        scheduled += 1
    }

    /// Removes and returns the next event with its time; nil when none is pending.
    public mutating func pop() -> (time: UInt64, event: Event)? {
        heap.popMin().map { ($0.time, $0.event) }
    }

    /// Drops the events for which `shouldRemove` holds (messages lost when a link is cut); the
    /// others keep their times and order.
    public mutating func removeAll(where shouldRemove: (Event) -> Bool) {
        heap = Heap(heap.unordered.filter { !shouldRemove($0.event) })
    }
}

extension EventQueue: Sendable where Event: Sendable {}
extension EventQueue.Entry: Sendable where Event: Sendable {}
