/// The bytes of one frame body that arrived split across chunks.
///
/// It grows with the bytes that actually arrive, never to the declared length up front, so
/// a peer cannot make us allocate a megabyte by sending a five-byte header: memory held is
/// at most about four times what the peer has sent, and never more than the frame it declared.
/// After a frame, the capacity is kept for the next one until the owner calls ``trim()``.
struct ReassemblyBuffer: Sendable {
    private(set) var bytes: [UInt8] = []
    /// Capacity ``trim()`` leaves in place.
    let retainedCapacity: Int

    private static let initialCapacity = 1024

    init(retainedCapacity: Int) {
        self.retainedCapacity = retainedCapacity
    }

    var count: Int { bytes.count }
    var capacity: Int { bytes.capacity }

    /// Appends `chunk`; `frameLength` is the full body length, the most this buffer may hold.
    mutating func append(_ chunk: UnsafeRawBufferPointer, frameLength: Int) {
        let needed = bytes.count + chunk.count
        if needed > bytes.capacity {
            // Four times what has arrived: a queue transfer of a few hundred KiB, arriving in
            // records of up to 64 KiB, takes two or three allocations rather than nine doublings
            // from 1 KiB (each a copy of all so far). A peer still makes this node hold at most
            // four times what it sent; the cap keeps us within the frame.
            let grown = Swift.max(needed * 4, bytes.capacity * 2, Self.initialCapacity)
            bytes.reserveCapacity(Swift.min(grown, frameLength))
        }
        bytes.append(contentsOf: chunk)
    }

    /// Empties the buffer after a frame was delivered, keeping its capacity: the next frame is
    /// likely as large, and a fresh megabyte costs a page fault per 4 KiB when first written.
    mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
    }

    /// Frees capacity above `retainedCapacity` (call between frames).
    mutating func trim() {
        if bytes.capacity > retainedCapacity && bytes.isEmpty { bytes = [] }
    }

    /// Frees everything (the decoder failed; nothing more will arrive).
    mutating func release() {
        bytes = []
    }
}
