import ArgumentParser
import Foundation
import Glibc

/// `p2pq bench pingpong`: the floor under W2's one-call latency on this machine at this
/// moment. Two processes, as in W2, echo a small message over one loopback TCP connection with
/// blocking sockets (`TCP_NODELAY`, one `write` and one `read` a side per round trip): no
/// reactor, no cipher, no framing. What a remote call adds to this is what the engine costs.
struct PingPongBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pingpong",
        abstract: "Round trips over loopback TCP with blocking sockets (W2's latency floor); JSON per run."
    )

    @Option(help: "Round trips per run.")
    var roundTrips: Int = 100_000

    @Option(help: "Message bytes each way.")
    var size: Int = 16

    @Option(help: "Runs.")
    var runs: Int = 3

    @Flag(help: "Both sides poll with nonblocking reads instead of sleeping in read(2): the floor for busy-polling reactors (--busy-poll-us).")
    var spin = false

    @Option(help: .hidden)
    var echoPort: Int?

    func validate() throws {
        guard (1...10_000_000).contains(roundTrips) else { throw ValidationError("--round-trips must be 1...10,000,000") }
        guard (1...65536).contains(size) else { throw ValidationError("--size must be 1...65536") }
        guard (1...20).contains(runs) else { throw ValidationError("--runs must be 1...20") }
    }

    func run() throws {
        if let echoPort { return echoLoop(port: echoPort, size: size, spin: spin) }
        for run in 1...runs {
            var samples = try roundTripTimes()
            samples.sort()
            let p50 = samples[samples.count / 2]
            let p99 = samples[min(samples.count - 1, samples.count * 99 / 100)]
            print("{\"workload\": \"W2-floor\", \"run\": \(run), \"round_trips\": \(roundTrips), \"bytes\": \(size), \"spin\": \(spin), "
                + "\"p50_us\": \(String(format: "%.1f", p50)), \"p99_us\": \(String(format: "%.1f", p99))}")
            fflush(nil)
        }
    }

    /// One run: microseconds per round trip.
    private func roundTripTimes() throws -> [Double] {
        let listener = try check(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0), "socket")
        defer { close(listener) }
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = try check(bind(listener, raw, length), "bind")
                _ = try check(listen(listener, 1), "listen")
                _ = try check(getsockname(listener, raw, &length), "getsockname")
            }
        }
        // The echo side is a child process, as W2's executor is.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = ["bench", "pingpong", "--size", "\(size)", "--echo-port", "\(UInt16(bigEndian: address.sin_port))"] + (spin ? ["--spin"] : [])
        try child.run()
        defer { child.waitUntilExit() }
        // Bounded: a child that never connects fails the run instead of hanging it.
        var limit = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let client = try check(accept(listener, nil, nil), "accept")
        defer { close(client) }
        noDelay(client)
        var buffer = [UInt8](repeating: 0xAB, count: size)
        var samples: [Double] = []
        samples.reserveCapacity(roundTrips)
        for _ in 0..<roundTrips {
            let start = monotonicNanoseconds()
            guard writeFully(client, buffer), readFully(client, &buffer, spin: spin) else {
                throw ValidationError("the echo connection closed")
            }
            samples.append(Double(monotonicNanoseconds() - start) / 1000)
        }
        return samples
    }
}

/// The child's side: connects to the parent and echoes until the parent closes.
private func echoLoop(port: Int, size: Int, spin: Bool) {
    let connection = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard connection >= 0 else { return }
    defer { close(connection) }
    var address = loopback(port: port)
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(connection, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return }
    noDelay(connection)
    var buffer = [UInt8](repeating: 0, count: size)
    while readFully(connection, &buffer, spin: spin), writeFully(connection, buffer) {}
}

private func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return address
}

private func check(_ result: Int32, _ call: String) throws -> Int32 {
    guard result >= 0 else { throw ValidationError("\(call): \(String(cString: strerror(errno)))") }
    return result
}

private func noDelay(_ socket: Int32) {
    var one: Int32 = 1
    _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

/// Reads `buffer.count` bytes; with `spin`, polls (nonblocking reads) instead of sleeping. Ends
/// at the peer's close either way.
private func readFully(_ socket: Int32, _ buffer: inout [UInt8], spin: Bool) -> Bool {
    var done = 0
    let count = buffer.count
    let flags = spin ? Int32(MSG_DONTWAIT) : 0
    while done < count {
        let got = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + done, count - done, flags) }
        if got < 0, spin, errno == EAGAIN { continue }
        if got <= 0 { return false }
        done += got
    }
    return true
}

private func writeFully(_ socket: Int32, _ buffer: [UInt8]) -> Bool {
    var done = 0
    while done < buffer.count {
        let sent = buffer.withUnsafeBytes { write(socket, $0.baseAddress! + done, buffer.count - done) }
        if sent <= 0 { return false }
        done += sent
    }
    return true
}

private func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}
