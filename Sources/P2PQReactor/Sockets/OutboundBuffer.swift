import Glibc
import DequeModule

/// A reactor-wide cache of fixed-size chunks for outbound bytes, so steady traffic allocates
/// nothing. Loop thread only.
final class ChunkPool {
    let chunkSize: Int
    private let cacheLimit: Int
    private var free: [UnsafeMutableRawPointer] = []

    init(chunkSize: Int, cacheLimit: Int) {
        self.chunkSize = max(4096, chunkSize)
        self.cacheLimit = cacheLimit
    }

    func take() -> UnsafeMutableRawPointer {
        free.popLast() ?? UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 64)
    }

    func give(_ chunk: UnsafeMutableRawPointer) {
        if free.count < cacheLimit { free.append(chunk) } else { chunk.deallocate() }
    }

    func releaseAll() {
        for chunk in free { chunk.deallocate() }
        free.removeAll()
    }
}

/// Bytes queued on one connection, waiting for the socket.
///
/// Small writes are copied into the tail chunk (no allocation per message); the queue of chunks
/// goes out in one gather write. Memory already handed to the kernel by an in-flight io_uring
/// send is never moved or reused until `consume` reports it written: appends only go past the
/// tail's end, and chunks are recycled only once fully consumed.
struct OutboundBuffer {
    struct Segment {
        var base: UnsafeMutableRawPointer
        var capacity: Int
        var start: Int
        var end: Int
        /// Pooled chunks go back to the pool; oversized ones are freed.
        var pooled: Bool
    }

    private(set) var segments: Deque<Segment> = []
    /// Bytes queued and not yet written.
    private(set) var count: Int = 0

    var isEmpty: Bool { count == 0 }

    /// Room for `byteCount` contiguous bytes at the tail. Commit what was written with
    /// `commit(_:)`.
    mutating func reserve(_ byteCount: Int, pool: ChunkPool) -> UnsafeMutableRawBufferPointer {
        if let last = segments.last, last.capacity - last.end >= byteCount {
            return UnsafeMutableRawBufferPointer(start: last.base + last.end, count: last.capacity - last.end)
        }
        if byteCount <= pool.chunkSize {
            segments.append(Segment(base: pool.take(), capacity: pool.chunkSize, start: 0, end: 0, pooled: true))
        } else {
            let base = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 64)
            segments.append(Segment(base: base, capacity: byteCount, start: 0, end: 0, pooled: false))
        }
        let last = segments[segments.count - 1]
        return UnsafeMutableRawBufferPointer(start: last.base + last.end, count: last.capacity - last.end)
    }

    /// Marks `byteCount` reserved bytes as queued.
    mutating func commit(_ byteCount: Int) {
        precondition(byteCount >= 0 && !segments.isEmpty)
        let i = segments.count - 1
        precondition(segments[i].end + byteCount <= segments[i].capacity, "committed more than reserved")
        segments[i].end += byteCount
        count += byteCount
    }

    /// Copies `bytes` in, spreading them over as many chunks as needed.
    mutating func append(_ bytes: UnsafeRawBufferPointer, pool: ChunkPool) {
        var remaining = bytes
        while !remaining.isEmpty {
            let room = reserve(min(remaining.count, pool.chunkSize), pool: pool)
            let n = min(room.count, remaining.count)
            room.baseAddress!.copyMemory(from: remaining.baseAddress!, byteCount: n)
            commit(n)
            remaining = UnsafeRawBufferPointer(rebasing: remaining[n...])
        }
    }

    /// Fills up to `max` iovecs with the queued bytes, oldest first. Returns how many it used.
    func fillIOVecs(_ iovecs: UnsafeMutablePointer<iovec>, max: Int) -> Int {
        var n = 0
        for segment in segments where segment.end > segment.start {
            guard n < max else { break }
            iovecs[n] = iovec(iov_base: segment.base + segment.start, iov_len: segment.end - segment.start)
            n += 1
        }
        return n
    }

    /// Drops `byteCount` written bytes from the front and recycles emptied chunks. The last
    /// chunk is kept and rewound when empty, so a steady writer reuses one chunk.
    mutating func consume(_ byteCount: Int, pool: ChunkPool) {
        var left = byteCount
        count -= byteCount
        while left > 0 {
            let available = segments[0].end - segments[0].start
            if left < available {
                segments[0].start += left
                return
            }
            left -= available
            if segments.count == 1 {
                segments[0].start = 0
                segments[0].end = 0
            } else {
                let segment = segments.removeFirst()
                if segment.pooled { pool.give(segment.base) } else { segment.base.deallocate() }
            }
        }
        if count == 0, segments.count == 1, segments[0].start == segments[0].end {
            segments[0].start = 0
            segments[0].end = 0
        }
    }

    /// Frees every chunk (on close).
    mutating func removeAll(pool: ChunkPool) {
        while let segment = segments.popFirst() {
            if segment.pooled { pool.give(segment.base) } else { segment.base.deallocate() }
        }
        count = 0
    }
}
