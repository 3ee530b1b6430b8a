import Foundation

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

/// Runs this test binary again as a child process, with only the test `filter` selected and
/// `environment` added, and returns every line of its standard output that starts with
/// `prefix` (the prefix removed). Each process seeds Swift's hashing afresh (the variable that
/// fixes it is removed), so a result that depends on dictionary or set order differs between
/// processes.
public func linesFromChildRun(filter: String, environment: [String: String], prefix: String) throws -> [String] {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
    process.arguments = ["--testing-library", "swift-testing", "--filter", filter]
    var childEnvironment = ProcessInfo.processInfo.environment
    childEnvironment["SWIFT_DETERMINISTIC_HASHING"] = nil
    for (key, value) in environment { childEnvironment[key] = value }
    process.environment = childEnvironment
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: "\n")
        .compactMap { $0.hasPrefix(prefix) ? String($0.dropFirst(prefix.count)) : nil }
}
