import ArgumentParser
import Foundation
import Glibc

/// `p2pq bench pingpong`: the floor under W2's one-call latency on this machine at this
/// moment. Two threads echo a small message over one loopback TCP connection with blocking
/// sockets (`TCP_NODELAY`, one `write` and one `read` a side per round trip): no reactor, no
/// cipher, no framing. What a remote call adds to this is what the engine costs.
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

    func validate() throws {
        guard (1...10_000_000).contains(roundTrips) else { throw ValidationError("--round-trips must be 1...10,000,000") }
        guard (1...65536).contains(size) else { throw ValidationError("--size must be 1...65536") }
        guard (1...20).contains(runs) else { throw ValidationError("--runs must be 1...20") }
    }

    func run() throws {
        for run in 1...runs {
            var samples = try roundTripTimes()
            samples.sort()
            let p50 = samples[samples.count / 2]
            let p99 = samples[min(samples.count - 1, samples.count * 99 / 100)]
            print("{\"workload\": \"W2-floor\", \"run\": \(run), \"round_trips\": \(roundTrips), \"bytes\": \(size), "
                + "\"p50_us\": \(String(format: "%.1f", p50)), \"p99_us\": \(String(format: "%.1f", p99))}")
            fflush(nil)
        }
    }

    /// One run: microseconds per round trip.
    private func roundTripTimes() throws -> [Double] {
        let listener = try check(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0), "socket")
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = try check(bind(listener, raw, length), "bind")
                _ = try check(listen(listener, 1), "listen")
                _ = try check(getsockname(listener, raw, &length), "getsockname")
            }
        }
        let size = size
        let echo = Thread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            defer { close(connection) }
            noDelay(connection)
            var buffer = [UInt8](repeating: 0, count: size)
            while readFully(connection, &buffer), writeFully(connection, buffer) {}
        }
        echo.start()
        let client = try check(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0), "socket")
        defer { close(client) }
        try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                _ = try check(connect(client, raw, socklen_t(MemoryLayout<sockaddr_in>.size)), "connect")
            }
        }
        noDelay(client)
        var buffer = [UInt8](repeating: 0xAB, count: size)
        var samples: [Double] = []
        samples.reserveCapacity(roundTrips)
        for _ in 0..<roundTrips {
            let start = monotonicNanoseconds()
            guard writeFully(client, buffer), readFully(client, &buffer) else {
                throw ValidationError("the echo connection closed")
            }
            samples.append(Double(monotonicNanoseconds() - start) / 1000)
        }
        return samples
    }
}

private func check(_ result: Int32, _ call: String) throws -> Int32 {
    guard result >= 0 else { throw ValidationError("\(call): \(String(cString: strerror(errno)))") }
    return result
}

private func noDelay(_ socket: Int32) {
    var one: Int32 = 1
    _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

private func readFully(_ socket: Int32, _ buffer: inout [UInt8]) -> Bool {
    var done = 0
    let count = buffer.count
    while done < count {
        let got = buffer.withUnsafeMutableBytes { read(socket, $0.baseAddress! + done, count - done) }
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
