/// A running 64-bit FNV-1a hash of everything a simulation did (messages as their wire bytes,
/// deliveries, timers): two runs that hash alike did the same things in the same order.
public struct TraceHash: Sendable, Equatable, CustomStringConvertible {
    public private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325

    public init() {}

    public mutating func add<Bytes: Sequence>(bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            value ^= UInt64(byte)
            value &*= 0x0000_0100_0000_01B3
        }
    }

    public mutating func add(_ number: UInt64) {
        withUnsafeBytes(of: number.littleEndian) { add(bytes: $0) }
    }

    public mutating func add(_ number: Int) { add(UInt64(bitPattern: Int64(number))) }

    public var description: String { String(value, radix: 16) }
}
