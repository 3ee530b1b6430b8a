#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
/// A growable byte sink a ``WireWriter`` appends to: `[UInt8]`, ``UnsafeWireBuffer`` (a fixed
/// buffer such as the reactor's reserved outbound capacity), or a caller's own buffer type.
public protocol WireOutput {
    /// Appends `bytes` at the end.
    mutating func appendWireBytes(_ bytes: UnsafeRawBufferPointer)
    /// Makes room for `additional` more bytes, if the output can grow. A hint only.
    mutating func reserveWireCapacity(_ additional: Int)
    /// Appends `count` bytes that `body` writes in place; it must write all of them. Bulk
    /// encoders use it to write straight into the output, with no intermediate buffer.
    mutating func appendWireBytes(count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void)
}

extension WireOutput {
    public mutating func reserveWireCapacity(_ additional: Int) {}

    public mutating func appendWireBytes(count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            body(UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
        bytes.withUnsafeBytes { appendWireBytes($0) }
    }
}

// Inlinable, like the writer: encoders in other modules are specialized for their output and
// write a field with no call and no generic-metadata lookup.
extension Array: WireOutput where Element == UInt8 {
    @inlinable
    public mutating func appendWireBytes(_ bytes: UnsafeRawBufferPointer) {
        append(contentsOf: bytes)
    }

    @inlinable
    public mutating func reserveWireCapacity(_ additional: Int) {
        // Array.reserveCapacity reserves exactly, so reserving per message would copy the
        // whole array each time; grow geometrically instead.
        let needed = count + additional
        if needed > capacity { reserveCapacity(Swift.max(needed, capacity * 2)) }
    }

    public mutating func appendWireBytes(count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        guard count > 0 else { return }
        let start = self.count
        // Array cannot grow uninitialized: zero the room, then write in place.
        reserveWireCapacity(count)
        appendZeros(count)
        withUnsafeMutableBytes { body(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
    }

    /// Appends `count` zero bytes, copied from ``zeroBlock``: a memcpy from memory that stays in
    /// cache, where appending `repeatElement(0, ...)` goes byte by byte (and a zero array as
    /// the source would cost a retain and a release per call).
    @inlinable
    mutating func appendZeros(_ count: Int) {
        var left = count
        while left > 0 {
            let chunk = Swift.min(left, zeroBlock.count)
            append(contentsOf: UnsafeRawBufferPointer(rebasing: zeroBlock[..<chunk]))
            left -= chunk
        }
    }
}

/// 16 KiB of zeros, never written: the fill for ``Array/appendWireBytes(count:_:)`` and
/// ``ItemBatch/append(count:_:)``. A raw buffer, not an array: no reference count per use.
@usableFromInline nonisolated(unsafe) let zeroBlock = UnsafeRawBufferPointer(
    UnsafeMutableRawBufferPointer(start: calloc(16 * 1024, 1), count: 16 * 1024)
)

/// A fixed, caller-owned buffer as a ``WireOutput``, for encoding straight into memory the
/// caller reserved (e.g. `TCPConnection.write(reservingCapacity:)`).
///
/// Writing past the end is a programming error (the encoders check the size first, from
/// their exact `encodedSize`), so it traps rather than throws.
public struct UnsafeWireBuffer: WireOutput {
    /// The whole buffer.
    public let buffer: UnsafeMutableRawBufferPointer
    /// Bytes written so far, from the start of ``buffer``.
    @inlinable public var count: Int { written }
    @usableFromInline var written = 0

    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
    }

    /// Bytes left.
    @inlinable public var remaining: Int { buffer.count - written }

    @inlinable
    public mutating func appendWireBytes(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count <= remaining, "UnsafeWireBuffer: wrote past the end of the buffer")
        guard let source = bytes.baseAddress, let base = buffer.baseAddress else { return }
        (base + written).copyMemory(from: source, byteCount: bytes.count)
        written += bytes.count
    }

    @inlinable
    public mutating func appendWireBytes(count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        precondition(count <= remaining, "UnsafeWireBuffer: wrote past the end of the buffer")
        body(UnsafeMutableRawBufferPointer(rebasing: buffer[written..<written + count]))
        written += count
    }
}

/// Appends wire-format values to a ``WireOutput``: fixed-width big-endian integers, IEEE-754
/// doubles, and length-prefixed byte strings and UTF-8 strings.
///
/// The writer owns its output while it works; take it back from ``output`` afterwards, or use
/// `[UInt8].withWireWriter(_:)`, which moves the array in and out without copying.
public struct WireWriter<Output: WireOutput> {
    /// Everything written so far, after whatever the output already held.
    public var output: Output

    @inlinable
    public init(output: Output) {
        self.output = output
    }

    /// Appends one byte.
    @inlinable
    public mutating func writeU8(_ value: UInt8) {
        withUnsafeBytes(of: value) { output.appendWireBytes($0) }
    }

    /// Appends a big-endian u16.
    @inlinable
    public mutating func writeU16(_ value: UInt16) {
        withUnsafeBytes(of: value.bigEndian) { output.appendWireBytes($0) }
    }

    /// Appends a big-endian u32.
    @inlinable
    public mutating func writeU32(_ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { output.appendWireBytes($0) }
    }

    /// Appends a big-endian u64.
    @inlinable
    public mutating func writeU64(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { output.appendWireBytes($0) }
    }

    /// Appends the IEEE-754 binary64 bit pattern as a big-endian u64 (NaN payloads survive).
    @inlinable
    public mutating func writeFloat64(_ value: Double) {
        writeU64(value.bitPattern)
    }

    /// Appends `bytes` as they are, with no length (for fixed-size fields).
    @inlinable
    public mutating func writeRaw(_ bytes: UnsafeRawBufferPointer) {
        output.appendWireBytes(bytes)
    }

    /// Appends `count` bytes that `body` writes in place (all of them).
    @inlinable
    public mutating func writeInPlace(count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        output.appendWireBytes(count: count, body)
    }

    /// Appends `bytes` as they are, with no length (for fixed-size fields).
    @inlinable
    public mutating func writeRaw(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { output.appendWireBytes($0) }
    }

    /// Appends a byte string: u32 length, then the bytes.
    @inlinable
    public mutating func writeByteString(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count <= Int(UInt32.max), "byte string longer than a u32 length")
        writeU32(UInt32(bytes.count))
        output.appendWireBytes(bytes)
    }

    /// Appends a byte string: u32 length, then the bytes.
    @inlinable
    public mutating func writeByteString(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { writeByteString($0) }
    }

    /// Appends a string as a byte string of its UTF-8.
    @inlinable
    public mutating func writeString(_ string: String) {
        // Native strings are contiguous UTF-8 already; bridged ones are copied once.
        let done: Void? = string.utf8.withContiguousStorageIfAvailable { writeByteString(UnsafeRawBufferPointer($0)) }
        if done == nil { writeByteString(Array(string.utf8)) }
    }
}

extension Array where Element == UInt8 {
    /// Runs `body` with a writer appending to this array, moving the array into the writer
    /// and back so nothing is copied.
    @inlinable
    public mutating func withWireWriter<R, E: Error>(
        _ body: (inout WireWriter<[UInt8]>) throws(E) -> R
    ) throws(E) -> R {
        var writer = WireWriter(output: self)
        self = []  // drop our reference so the writer's array is uniquely owned
        defer { self = writer.output }
        return try body(&writer)
    }
}
