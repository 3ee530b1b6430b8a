// LEB128 varints and zigzag, shared by the encoder and the decoder.

@inline(__always)
func zigzag(_ value: Int64) -> UInt64 {
    UInt64(bitPattern: (value << 1) ^ (value >> 63))
}

@inline(__always)
func unzigzag(_ value: UInt64) -> Int64 {
    Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1)
}

@available(macOS 15.0, *)
@inline(__always)
func zigzag128(_ value: Int128) -> UInt128 {
    UInt128(bitPattern: (value << 1) ^ (value >> 127))
}

@available(macOS 15.0, *)
@inline(__always)
func unzigzag128(_ value: UInt128) -> Int128 {
    Int128(bitPattern: value >> 1) ^ -Int128(bitPattern: value & 1)
}

/// Appends `value` as an unsigned LEB128 varint: 7 bits per byte, low group first, high bit
/// set on every byte but the last. Always the shortest form.
@inline(__always)
func appendVarint<U: FixedWidthInteger & UnsignedInteger>(_ value: U, to out: inout [UInt8]) {
    var rest = value
    while rest >= 0x80 {
        out.append(UInt8(truncatingIfNeeded: rest) | 0x80)
        rest >>= 7
    }
    out.append(UInt8(truncatingIfNeeded: rest))
}

/// Bytes `appendVarint` writes for `value`.
@inline(__always)
func varintSize<U: FixedWidthInteger & UnsignedInteger>(_ value: U) -> Int {
    let bits = U.bitWidth - value.leadingZeroBitCount
    return bits == 0 ? 1 : (bits + 6) / 7
}

@inline(__always)
func appendLittleEndian<U: FixedWidthInteger>(_ value: U, to out: inout [UInt8]) {
    var rest = value
    for _ in 0..<(U.bitWidth / 8) {
        out.append(UInt8(truncatingIfNeeded: rest))
        rest >>= 8
    }
}
