// Shared helpers for the reactor tests: backend availability, reactor lifetimes, bounded waits,
// cross-thread collection, descriptor counting, raw (non-reactor) sockets and the
// deterministic stream used by the bulk-transfer tests.
//
// Every wait in this file has a deadline: a test that would hang instead records an issue that
// says what it was waiting for, and throws.

import Foundation
import Glibc
import P2PQReactor
import Synchronization
import Testing

// MARK: - Backend availability

/// The skip reason for io_uring tests in builds without liburing.
let ioUringNotCompiledInReason =
    "io_uring backend not compiled in: install liburing-dev and rebuild with P2PQ_IO_URING=1"

/// CI sets P2PQ_REQUIRE_IO_URING=1 so that io_uring tests can never be skipped silently there.
var ioUringIsRequired: Bool { ProcessInfo.processInfo.environment["P2PQ_REQUIRE_IO_URING"] == "1" }

struct BackendUnavailableForTest: Error, CustomStringConvertible {
    let description: String
}

/// Gate for a test case that runs on `kind`.
///
/// Swift Testing 6.3 has `Test.cancel(_:)`, which, called from a parameterized test, cancels
/// (skips) only the current test case, with a reason shown in the results. So the io_uring case
/// of a test is skipped with `ioUringNotCompiledInReason` while the epoll case runs, unless
/// P2PQ_REQUIRE_IO_URING=1, in which case the case fails instead.
func requireBackend(_ kind: ReactorBackendKind, sourceLocation: SourceLocation = #_sourceLocation) throws {
    guard !kind.isCompiledIn else { return }
    try skipOrFail(ioUringNotCompiledInReason, sourceLocation: sourceLocation)
}

private func skipOrFail(_ reason: String, sourceLocation: SourceLocation) throws -> Never {
    if ioUringIsRequired {
        Issue.record("\(reason) (P2PQ_REQUIRE_IO_URING=1: io_uring tests may not be skipped)",
                     sourceLocation: sourceLocation)
        throw BackendUnavailableForTest(description: reason)
    }
    try Test.cancel(Comment(rawValue: reason), sourceLocation: sourceLocation)
}

/// A started reactor on exactly `kind` (skipping or failing the test case as described in
/// ``requireBackend(_:sourceLocation:)``). The caller must `stop()` it: prefer ``withReactor``.
func makeReactor(
    _ kind: ReactorBackendKind,
    name: String = "test-reactor",
    sourceLocation: SourceLocation = #_sourceLocation,
    configure: (inout ReactorConfiguration) -> Void = { _ in }
) throws -> Reactor {
    try requireBackend(kind, sourceLocation: sourceLocation)
    var configuration = ReactorConfiguration(backend: .exactly(kind))
    configuration.threadName = name
    configure(&configuration)
    // A Result and a switch, not a typed `catch` pattern: the latter crashes Swift 6.3's
    // SIL ownership verifier.
    let outcome: Result<Reactor, ReactorError> = Result { () throws(ReactorError) in try Reactor(configuration: configuration) }
    let reactor: Reactor
    switch outcome {
    case .success(let made):
        reactor = made
    case .failure(let error):
        if case .backendUnavailable(let unavailable, let reason) = error, unavailable == .ioUring {
            // Compiled in, but the kernel (or a seccomp filter) refuses io_uring.
            try skipOrFail("io_uring refused at run time: \(reason)", sourceLocation: sourceLocation)
        }
        throw error
    }
    #expect(reactor.backendKind == kind, "asked for \(kind), got \(reactor.backendKind)",
            sourceLocation: sourceLocation)
    return reactor
}

/// Runs `body` with a fresh reactor on `kind`, stopping it afterwards whatever happens.
func withReactor<R>(
    _ kind: ReactorBackendKind,
    sourceLocation: SourceLocation = #_sourceLocation,
    configure: (inout ReactorConfiguration) -> Void = { _ in },
    _ body: (Reactor) async throws -> R
) async throws -> R {
    let reactor = try makeReactor(kind, name: "test-a", sourceLocation: sourceLocation, configure: configure)
    defer { reactor.stop() }
    return try await body(reactor)
}

/// Runs `body` with two reactors on `kind` (typically a server and a client), stopping both.
func withReactors<R>(
    _ kind: ReactorBackendKind,
    sourceLocation: SourceLocation = #_sourceLocation,
    configure: (inout ReactorConfiguration) -> Void = { _ in },
    _ body: (Reactor, Reactor) async throws -> R
) async throws -> R {
    let first = try makeReactor(kind, name: "test-server", sourceLocation: sourceLocation, configure: configure)
    defer { first.stop() }
    let second = try makeReactor(kind, name: "test-client", sourceLocation: sourceLocation, configure: configure)
    defer { second.stop() }
    return try await body(first, second)
}

// MARK: - Bounded waiting

struct TimedOut: Error, CustomStringConvertible {
    let description: String
}

/// A value set once from any thread and awaited (by polling) with a timeout. Polling keeps
/// this trivially correct; the waits in these tests are short.
final class Promise<Value: Sendable>: Sendable {
    private let state = Mutex<Value?>(nil)

    init() {}

    /// Sets the value; the first call wins.
    func fulfill(_ value: Value) {
        state.withLock { current in
            if current == nil { current = value }
        }
    }

    var current: Value? { state.withLock { $0 } }
    var isFulfilled: Bool { current != nil }

    /// The value, or nil after `timeout`.
    func wait(timeout: Duration) async -> Value? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if let value = current { return value }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return current
    }

    /// The value; records an issue naming `what` and throws if it does not come in time.
    func value(
        within timeout: Duration = .seconds(20),
        _ what: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Value {
        if let value = await wait(timeout: timeout) { return value }
        let message = "timed out after \(timeout) waiting for \(what)"
        Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
        throw TimedOut(description: message)
    }
}

/// Polls `condition` every `interval` until it holds; records an issue and throws at `timeout`.
func eventually(
    within timeout: Duration = .seconds(10),
    every interval: Duration = .milliseconds(5),
    _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while true {
        if try await condition() { return }
        if clock.now >= deadline {
            let message = "timed out after \(timeout) waiting until \(what)"
            Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
            throw TimedOut(description: message)
        }
        try await Task.sleep(for: interval)
    }
}

/// Runs `body` on `reactor`'s loop thread and returns its result, failing the test (instead of
/// hanging) if the loop does not run it within `timeout`. Built on `execute` so that a wedged
/// loop cannot hang the test; ``Reactor/submit(_:)`` itself is tested separately.
func onLoop<T: Sendable>(
    _ reactor: Reactor,
    within timeout: Duration = .seconds(20),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: @escaping @Sendable () throws -> T
) async throws -> T {
    let result = Promise<Result<T, any Error>>()
    guard reactor.execute({ result.fulfill(Result { try body() }) }) else {
        throw ReactorError.reactorStopped
    }
    return try await result.value(within: timeout, "a closure on the \(reactor.backendKind) loop",
                                  sourceLocation: sourceLocation).get()
}

/// Runs blocking `body` on a new thread (never on the cooperative pool) and awaits its result.
/// `body` must bound its own blocking (the raw socket helpers below all do).
func onThread<T: Sendable>(
    within timeout: Duration = .seconds(60),
    _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: @escaping @Sendable () -> T
) async throws -> T {
    let result = Promise<T>()
    let thread = Thread { result.fulfill(body()) }
    thread.start()
    return try await result.value(within: timeout, what, sourceLocation: sourceLocation)
}

// MARK: - Cross-thread state

/// A Mutex-protected value shared between the test and reactor threads.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// State used only on one reactor's loop thread, carried through `@Sendable` closures.
/// (ReactorBound needs the loop thread to be created; this one can be made anywhere.)
final class LoopConfined<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

// MARK: - Descriptors

/// Open descriptors of this process (the directory's own descriptor excluded).
func openDescriptorCount() -> Int {
    openDescriptors().count
}

/// Open descriptors of this process and what they point at, for diagnostics.
func openDescriptors() -> [Int32: String] {
    guard let dir = opendir("/proc/self/fd") else { return [:] }
    defer { closedir(dir) }
    let own = dirfd(dir)
    var result: [Int32: String] = [:]
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard let fd = Int32(name), fd != own else { continue }
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(name)", &buffer, buffer.count - 1)
        let target = n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        result[fd] = target
    }
    return result
}

/// Makes sure RLIMIT_NOFILE allows `needed` descriptors, raising the soft limit if it can.
func ensureDescriptorLimit(_ needed: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
    var limit = rlimit()
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    try #require(getrlimit(resource, &limit) == 0, sourceLocation: sourceLocation)
    if limit.rlim_cur < rlim_t(needed) {
        limit.rlim_cur = min(rlim_t(needed), limit.rlim_max)
        _ = setrlimit(resource, &limit)
        try #require(getrlimit(resource, &limit) == 0, sourceLocation: sourceLocation)
    }
    try #require(limit.rlim_cur >= rlim_t(needed),
                 "RLIMIT_NOFILE is \(limit.rlim_cur) (hard \(limit.rlim_max)); this test needs \(needed)",
                 sourceLocation: sourceLocation)
}

// MARK: - Addresses

let loopbackAny = try! SocketAddress(host: "127.0.0.1", port: 0)

extension SocketAddress {
    /// A sockaddr_in for raw socket calls (IPv4 only; the tests stay on 127.0.0.1).
    var sockaddrIn: sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(port).bigEndian)
        _ = inet_pton(AF_INET, host, &sin.sin_addr)
        return sin
    }
}

// MARK: - Raw sockets (test-side peers outside any reactor)

/// Blocking-free helpers on plain descriptors: every wait goes through poll(2) with a timeout.
enum RawSocket {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func fail(_ call: String) -> Failure {
        Failure(description: "\(call): \(String(cString: strerror(errno))) (errno \(errno))")
    }

    /// A nonblocking TCP listening socket on 127.0.0.1:0.
    static func listen(backlog: Int32) throws -> (fd: Int32, address: SocketAddress) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw fail("socket") }
        var sin = loopbackAny.sockaddrIn
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, Glibc.listen(fd, backlog) == 0 else {
            let error = fail("bind/listen")
            close(fd)
            throw error
        }
        return (fd, try localAddress(fd))
    }

    static func localAddress(_ fd: Int32) throws -> SocketAddress {
        var sin = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { throw fail("getsockname") }
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        _ = inet_ntop(AF_INET, &sin.sin_addr, &text, socklen_t(text.count))
        let host = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return try SocketAddress(host: host, port: Int(UInt16(bigEndian: sin.sin_port)))
    }

    /// Starts a nonblocking connect; returns the descriptor (the connect may still be pending).
    static func startConnect(to address: SocketAddress) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw fail("socket") }
        var sin = address.sockaddrIn
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 || errno == EINPROGRESS else {
            let error = fail("connect")
            close(fd)
            throw error
        }
        return fd
    }

    /// Waits up to `timeoutMilliseconds` for `events` on `fd`.
    static func wait(_ fd: Int32, for events: Int16, timeoutMilliseconds: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let rc = poll(&entry, 1, timeoutMilliseconds)
            if rc < 0 && errno == EINTR { continue }
            return rc > 0
        }
    }

    /// Accepts one connection within the timeout (nonblocking descriptor).
    static func accept(_ listener: Int32, timeoutMilliseconds: Int32 = 10_000) throws -> Int32 {
        guard wait(listener, for: Int16(POLLIN), timeoutMilliseconds: timeoutMilliseconds) else {
            throw Failure(description: "no connection to accept within \(timeoutMilliseconds) ms")
        }
        let fd = Glibc.accept(listener, nil, nil)
        guard fd >= 0 else { throw fail("accept") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Reads until `count` bytes arrived (feeding each chunk to `consume`), EOF, an error, or
    /// `idleTimeoutMilliseconds` without progress. Returns the bytes read.
    static func read(
        _ fd: Int32,
        upTo count: Int,
        idleTimeoutMilliseconds: Int32 = 10_000,
        consume: (UnsafeRawBufferPointer) -> Void = { _ in }
    ) -> Int {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
        defer { buffer.deallocate() }
        var total = 0
        while total < count {
            let n = Glibc.read(fd, buffer.baseAddress, min(buffer.count, count - total))
            if n > 0 {
                consume(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                total += n
            } else if n == 0 {
                return total
            } else if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                if !wait(fd, for: Int16(POLLIN), timeoutMilliseconds: idleTimeoutMilliseconds) { return total }
            } else {
                return total
            }
        }
        return total
    }

    /// Writes all of `bytes` (bounded by the idle timeout).
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], idleTimeoutMilliseconds: Int32 = 10_000) -> Bool {
        var offset = 0
        return bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    offset += n
                } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                    if !wait(fd, for: Int16(POLLOUT), timeoutMilliseconds: idleTimeoutMilliseconds) { return false }
                } else {
                    return false
                }
            }
            return true
        }
    }

    /// Makes the next close send a RST instead of a FIN (SO_LINGER {1, 0}).
    static func setLingerZero(_ fd: Int32) {
        var value = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
    }
}

// MARK: - Deterministic stream and checksum

/// xorshift64: a deterministic pseudo-random UInt64 stream.
struct XorShift64 {
    var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    @inline(__always)
    mutating func next() -> UInt64 {
        var x = state
        x ^= x &<< 13
        x ^= x &>> 7
        x ^= x &<< 17
        state = x
        return x
    }

    /// Fills `count` words and folds them into `checksum`. Written as a plain pointer loop
    /// because debug builds are slow.
    mutating func fill(_ words: UnsafeMutablePointer<UInt64>, count: Int, checksum: inout StreamChecksum) {
        var x = state
        var a = checksum.a
        var b = checksum.b
        var i = 0
        while i < count {
            x ^= x &<< 13
            x ^= x &>> 7
            x ^= x &<< 17
            words[i] = x
            a = a &+ x
            b = b &+ a
            i += 1
        }
        state = x
        checksum.a = a
        checksum.b = b
        checksum.byteCount += count &* 8
    }
}

/// An order-sensitive (Fletcher-style) checksum over little-endian UInt64 words of a byte
/// stream. ``update(_:)`` takes chunks of any size and alignment and carries the partial word
/// over to the next chunk; ``finish()`` folds a final partial word, zero-padded.
struct StreamChecksum: Equatable, Sendable, CustomStringConvertible {
    var a: UInt64 = 0
    var b: UInt64 = 0
    var byteCount = 0
    /// The bytes of an incomplete word (little-endian, low bytes first) and how many there are.
    private var carry: UInt64 = 0
    private var carryCount = 0

    var description: String {
        "checksum(a: \(String(a, radix: 16)), b: \(String(b, radix: 16)), bytes: \(byteCount))"
    }

    @inline(__always)
    private mutating func fold(_ word: UInt64) {
        a = a &+ word
        b = b &+ a
    }

    /// Folds `bytes` in. `scratch` must hold at least `scratchWords` words (8-byte aligned),
    /// so that the hot loop reads aligned words.
    mutating func update(_ bytes: UnsafeRawBufferPointer, scratch: UnsafeMutablePointer<UInt64>, scratchWords: Int) {
        guard var p = bytes.baseAddress else { return }
        var remaining = bytes.count
        byteCount += remaining
        // Complete a carried partial word first.
        while carryCount > 0 && remaining > 0 {
            carry |= UInt64(p.load(as: UInt8.self)) &<< UInt64(carryCount &* 8)
            carryCount += 1
            p += 1
            remaining -= 1
            if carryCount == 8 {
                fold(carry)
                carry = 0
                carryCount = 0
            }
        }
        // Whole words, copied to aligned memory in slices.
        var x = a
        var y = b
        while remaining >= 8 {
            let words = min(remaining / 8, scratchWords)
            UnsafeMutableRawPointer(scratch).copyMemory(from: p, byteCount: words &* 8)
            var i = 0
            while i < words {
                x = x &+ UInt64(littleEndian: scratch[i])
                y = y &+ x
                i += 1
            }
            p += words &* 8
            remaining -= words &* 8
        }
        a = x
        b = y
        // Keep the tail for the next chunk.
        while remaining > 0 {
            carry |= UInt64(p.load(as: UInt8.self)) &<< UInt64(carryCount &* 8)
            carryCount += 1
            p += 1
            remaining -= 1
        }
    }

    /// Folds `bytes` in with a temporary scratch buffer (for small or occasional chunks).
    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        let words = max(1, bytes.count / 8)
        let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
        defer { scratch.deallocate() }
        update(bytes, scratch: scratch, scratchWords: words)
    }

    /// The checksum including a zero-padded final partial word.
    func finish() -> StreamChecksum {
        var copy = self
        if copy.carryCount > 0 {
            copy.fold(copy.carry)
            copy.carry = 0
            copy.carryCount = 0
        }
        return copy
    }
}

/// `count` bytes of a deterministic pattern that differs per `seed` (for small payloads).
func patternBytes(count: Int, seed: UInt64) -> [UInt8] {
    var generator = XorShift64(seed: seed &+ 1)
    var bytes = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        var word = generator.next()
        var k = 0
        while k < 8 && i < count {
            bytes[i] = UInt8(truncatingIfNeeded: word)
            word = word &>> 8
            i += 1
            k += 1
        }
    }
    return bytes
}

// MARK: - Timing

/// Prints how long a slow step took, so that the suite's cost stays visible in test logs.
func logTiming(_ what: String, _ duration: Duration) {
    let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    print("[timing] \(what): \(String(format: "%.2f", seconds)) s")
}
