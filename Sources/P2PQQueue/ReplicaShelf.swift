import DequeModule
import P2PQWire

/// The holder side of replication, as a plain value: other owners' replicas, per owner sorted
/// by sequence, held in the queue's ``PayloadStore`` but not queued; the owners whose shelf
/// waits out a grace; and, per owner whose shelf was re-queued, which sequences were.
///
/// ``QueueMachine`` decides when a shelf is kept, released or re-queued; this keeps the runs
/// and their counts consistent.
struct ReplicaShelf: Sendable {
    /// Per owner, sorted by sequence, disjoint.
    private var shelves: [PeerID: Deque<QueueRun>] = [:]
    /// Items and payload bytes on all shelves.
    private(set) var items = 0
    private(set) var bytes = 0
    /// Owners declared dead (or gone) while their link was still up: their shelf is re-queued
    /// when the link goes or at this deadline, so releases already on the link (a graceful
    /// leave sends them before its goodbye, but the verdict may come first by gossip) count.
    var grace: [PeerID: UInt64] = [:]
    /// Owners whose shelf was re-queued here: their sequences that were (in their numbering),
    /// kept for `deadOwnerRetention` so that an owner that was only paused learns which of its
    /// originals are stale (a replica check).
    private var requeued: [PeerID: RequeuedReplicas] = [:]

    private struct RequeuedReplicas: Sendable {
        /// Sorted, disjoint, merged where adjacent; at most `maxRequeuedRuns`.
        var runs: [SequenceRun] = []
        var at: UInt64
    }

    /// How many runs of re-queued replicas are remembered per owner.
    static var maxRequeuedRuns: Int { 4096 }

    /// Whether replicas of `owner` are kept.
    func holds(_ owner: PeerID) -> Bool { shelves[owner] != nil }

    /// Keeps the replicas of a transfer from `owner`, holding their arrays in `store`; a copy
    /// sent again (after a timeout, or twice in this transfer) replaces the one kept.
    mutating func keep(_ transferred: TransferItems, from owner: PeerID, store: inout PayloadStore) {
        var shelf = shelves.removeValue(forKey: owner) ?? Deque()
        // Each array is held for all its runs before any copy is dropped: a run repeated in
        // this transfer drops the copy just kept, and with it that array's count, which must
        // not reach zero while later runs still point into the array.
        var holders = [Int](repeating: 0, count: transferred.buffers.count)
        for run in transferred.runs { holders[Int(run.slot)] += Int(run.count) }
        var slots = [UInt32](repeating: .max, count: transferred.buffers.count)
        for (buffer, count) in holders.enumerated() where count > 0 {
            slots[buffer] = store.hold(transferred.buffers[buffer], ends: transferred.ends[buffer], holders: count)
        }
        for run in transferred.runs {
            drop(SequenceRun(first: run.first, count: run.count), in: &shelf, store: &store)
            var kept = run
            kept.slot = slots[Int(run.slot)]
            var low = shelf.count
            if let last = shelf.last, last.first > kept.first {
                low = 0
                var high = shelf.count
                while low < high {
                    let mid = (low + high) / 2
                    if shelf[mid].first < kept.first { low = mid + 1 } else { high = mid }
                }
            }
            shelf.insert(kept, at: low)
            items += Int(run.count)
            bytes += Int(run.bytes)
        }
        shelves[owner] = shelf
    }

    /// Drops `owner`'s replicas of `run` (those kept), letting their arrays go in `store`.
    mutating func drop(_ run: SequenceRun, of owner: PeerID, store: inout PayloadStore) {
        guard var shelf = shelves.removeValue(forKey: owner) else { return }
        drop(run, in: &shelf, store: &store)
        if !shelf.isEmpty { shelves[owner] = shelf }
    }

    private mutating func drop(_ run: SequenceRun, in shelf: inout Deque<QueueRun>, store: inout PayloadStore) {
        let end = run.first &+ UInt64(run.count)
        // The first kept run that ends after `run.first` (kept runs do not overlap).
        var low = 0, high = shelf.count
        while low < high {
            let mid = (low + high) / 2
            if shelf[mid].first &+ UInt64(shelf[mid].count) <= run.first { low = mid + 1 } else { high = mid }
        }
        var index = low
        while index < shelf.count, shelf[index].first < end {
            let kept = shelf[index]
            let keptEnd = kept.first &+ UInt64(kept.count)
            let from = Int(Swift.max(kept.first, run.first) - kept.first)
            let to = Int(Swift.min(keptEnd, end) - kept.first)
            var pieces: [QueueRun] = []
            store.ends(kept.slot).withUnsafeBufferPointer { ends in
                if from > 0 { pieces.append(kept.items(0..<from, ends)) }
                if to < Int(kept.count) { pieces.append(kept.items(to..<Int(kept.count), ends)) }
            }
            let removed = to - from
            store.release(kept.slot, count: removed)
            items -= removed
            bytes -= Int(kept.bytes) - pieces.reduce(0) { $0 + Int($1.bytes) }
            shelf.replaceSubrange(index..<index + 1, with: pieces)
            index += pieces.count
        }
    }

    /// Takes `owner`'s whole shelf off (its runs still hold their arrays in the store) and
    /// remembers its sequences as re-queued at `now`; nil if none was kept.
    mutating func takeAll(of owner: PeerID, now: UInt64) -> Deque<QueueRun>? {
        guard let shelf = shelves.removeValue(forKey: owner), !shelf.isEmpty else { return nil }
        var record = requeued.removeValue(forKey: owner) ?? RequeuedReplicas(at: now)
        record.at = now
        for run in shelf {
            Self.insert(SequenceRun(first: run.first, count: run.count), into: &record.runs)
            items -= Int(run.count)
            bytes -= Int(run.bytes)
        }
        if record.runs.count > Self.maxRequeuedRuns {
            // Remembered in part (a shelf fragmented item by item): the owner delivers the
            // rest as well (a duplicate at worst).
            record.runs.removeFirst(record.runs.count - Self.maxRequeuedRuns)
        }
        requeued[owner] = record
        return shelf
    }

    /// The sequences of `owner`'s replicas re-queued here (sorted, disjoint), if remembered.
    func requeuedRuns(of owner: PeerID) -> [SequenceRun]? { requeued[owner]?.runs }

    /// Forgets the re-queued sequences remembered for `retention` nanoseconds or more.
    mutating func forgetRequeued(now: UInt64, retention: UInt64) {
        requeued = requeued.filter { now &- $0.value.at < retention }
    }

    /// Inserts `run` into sorted, disjoint `runs`, merging with an adjacent neighbour.
    static func insert(_ run: SequenceRun, into runs: inout [SequenceRun]) {
        if runs.isEmpty || runs[runs.count - 1].first < run.first {
            if let last = runs.last, last.first &+ UInt64(last.count) == run.first,
               UInt64(last.count) + UInt64(run.count) <= UInt64(UInt32.max) {
                runs[runs.count - 1].count += run.count
            } else {
                runs.append(run)
            }
            return
        }
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].first < run.first { low = mid + 1 } else { high = mid }
        }
        runs.insert(run, at: low)
    }
}
