// Deterministic reproducers for reactor bugs found by review. Each test forces the exact
// kernel state that triggers the bug (by briefly blocking the loop thread, or by pausing reads
// before any data arrives), so it fails every time on a buggy backend instead of by chance.
//
// Types here carry a `Regression` prefix so that they cannot collide with the main suite's.

import Foundation
import Glibc
import P2PQReactor
import Synchronization
import Testing

/// Records everything a connection reports, loop thread only; publishes to Sendable boxes.
final class RegressionProbe: TCPConnectionHandler {
    let active = Promise<Bool>()
    let eof = Promise<Bool>()
    let closed = Promise<TCPCloseReason>()
    let bytes = Locked<[UInt8]>([])
    var pauseOnActive = false
    var pauseAfterFirstRead = false
    var keepOpenOnEOF = false

    func connectionDidBecomeActive(_ connection: TCPConnection) {
        if pauseOnActive { connection.pauseReading() }
        active.fulfill(true)
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        self.bytes.withLock { $0.append(contentsOf: bytes) }
        if pauseAfterFirstRead {
            pauseAfterFirstRead = false
            connection.pauseReading()
        }
    }

    func connectionDidReadEOF(_ connection: TCPConnection) {
        eof.fulfill(true)
        if !keepOpenOnEOF { connection.close(afterFlush: true, reason: .peerClosed) }
    }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        closed.fulfill(reason)
    }
}

/// A reactor connection to a raw (test-owned) peer socket.
struct RegressionPair: Sendable {
    let connection: ReactorBound<TCPConnection>
    let probe: LoopConfined<RegressionProbe>
    let peer: Int32
}

/// Connects `reactor` to a raw listener, returning the reactor side and the accepted raw side.
func regressionConnect(
    _ reactor: Reactor,
    configure: @escaping @Sendable (RegressionProbe) -> Void = { _ in }
) async throws -> RegressionPair {
    let (listener, address) = try RawSocket.listen(backlog: 4)
    defer { close(listener) }
    let probe = LoopConfined(RegressionProbe())
    let connection = try await onLoop(reactor) {
        configure(probe.value)
        return ReactorBound(try reactor.connect(to: address, handler: probe.value), reactor: reactor)
    }
    let peer = try RawSocket.accept(listener)
    _ = try await probe.value.active.value(within: .seconds(10), "the connection to become active")
    return RegressionPair(connection: connection, probe: probe, peer: peer)
}

/// Blocks the loop thread for `duration` and returns once it is blocked, so that whatever the
/// test does next lands in the kernel before the loop looks again.
func regressionBlockLoop(_ reactor: Reactor, for duration: Duration) async throws {
    let blocked = Promise<Bool>()
    let microseconds = UInt32(duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000)
    #expect(reactor.execute {
        blocked.fulfill(true)
        usleep(microseconds)
    })
    _ = try await blocked.value(within: .seconds(10), "the loop to block")
}

@Suite("Reactor regressions")
struct ReactorRegressionTests {
    /// epoll: `EpollBackend.read` returns after a short read, assuming the socket is drained.
    /// When the peer's last bytes and its FIN arrive before the loop looks, one edge reports
    /// both; the short read takes the bytes, the EOF is never read, and no further edge comes.
    @Test("Data and FIN arriving together: the EOF is still delivered", arguments: ReactorBackendKind.allCases)
    func eofWithFinalData(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let pair = try await regressionConnect(reactor)
            let payload = patternBytes(count: 100, seed: 7)
            try await regressionBlockLoop(reactor, for: .milliseconds(200))
            // While the loop sleeps: the bytes, then the FIN, both queue in the kernel.
            #expect(RawSocket.writeAll(pair.peer, payload))
            close(pair.peer)
            let reason = try await pair.probe.value.closed.value(within: .seconds(5), "the close after the peer's EOF")
            #expect(reason == .peerClosed)
            #expect(pair.probe.value.bytes.value == payload)
        }
    }

    /// epoll: a write that fails because the peer reset the connection closed it at once,
    /// dropping the bytes the peer sent just before its reset (a goodbye), still unread in the
    /// socket. They must be delivered before the reset is reported.
    @Test("The peer's last bytes before its reset are delivered even when a write sees the reset first", arguments: ReactorBackendKind.allCases)
    func lastBytesBeforeResetOnWrite(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let pair = try await regressionConnect(reactor)
            let payload = patternBytes(count: 100, seed: 9)
            let connection = pair.connection
            let blocked = Promise<Bool>()
            // One loop turn: block (while the peer sends and resets), then write, so the write's
            // flush at the end of this turn meets the reset before the next poll sees the bytes.
            #expect(reactor.execute {
                blocked.fulfill(true)
                usleep(200_000)
                connection.value.write(Array("ping".utf8))
            })
            _ = try await blocked.value(within: .seconds(10), "the loop to block")
            #expect(RawSocket.writeAll(pair.peer, payload))
            RawSocket.setLingerZero(pair.peer)
            close(pair.peer)
            _ = try await pair.probe.value.closed.value(within: .seconds(5), "the close after the reset")
            #expect(pair.probe.value.bytes.value == payload)
        }
    }

    /// Both the bytes and the EOF that arrive while reads are paused wait for the resume, and
    /// then both come (io_uring stashes them; epoll must re-read after resuming).
    @Test("Bytes and EOF that arrive while paused are delivered on resume", arguments: ReactorBackendKind.allCases)
    func eofWhilePaused(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let pair = try await regressionConnect(reactor) { $0.pauseOnActive = true }
            let payload = patternBytes(count: 20_000, seed: 13)
            #expect(RawSocket.writeAll(pair.peer, payload))
            close(pair.peer)
            try await Task.sleep(for: .milliseconds(100))
            #expect(pair.probe.value.bytes.value.isEmpty, "bytes were delivered while reads were paused")
            #expect(!pair.probe.value.eof.isFulfilled, "EOF was delivered while reads were paused")
            try await onLoop(reactor) { pair.connection.value.resumeReading() }
            let reason = try await pair.probe.value.closed.value(within: .seconds(5), "the close after the EOF")
            #expect(reason == .peerClosed)
            #expect(pair.probe.value.bytes.value == payload)
        }
    }

    /// A closed listener must really release its port (io_uring defers the close until its
    /// multishot accept is cancelled; that must not be forever).
    @Test("A closed listener releases its port", arguments: ReactorBackendKind.allCases)
    func listenerCloseReleasesPort(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let address = try await onLoop(reactor) {
                let listener = try reactor.listen(on: loopbackAny, reuseAddress: false) { $0.handler = RegressionProbe() }
                listener.close()
                return listener.localAddress
            }
            try await eventually(within: .seconds(2), "the port of a closed listener can be bound again") {
                try await onLoop(reactor) {
                    guard let again = try? reactor.listen(on: address, reuseAddress: false, onAccept: { _ in }) else { return false }
                    again.close()
                    return true
                }
            }
            #expect(try await onLoop(reactor) { reactor.openChannelCount } <= 1)
        }
    }

    /// epoll: data that arrives while reads are paused sets `io.readPending` without queueing
    /// the connection in `pendingReads`; `readInterestChanged` on resume then sees
    /// `readPending == true` and queues nothing, and no new edge comes: the bytes sit unread.
    @Test("Bytes that arrive while reads are paused are delivered on resume", arguments: ReactorBackendKind.allCases)
    func resumeAfterDataArrivedWhilePaused(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let pair = try await regressionConnect(reactor) { $0.pauseOnActive = true }
            defer { close(pair.peer) }
            let payload = patternBytes(count: 64 * 1024, seed: 9)
            #expect(RawSocket.writeAll(pair.peer, payload))
            try await Task.sleep(for: .milliseconds(100))
            #expect(pair.probe.value.bytes.value.isEmpty, "bytes were delivered while reads were paused")
            try await onLoop(reactor) { pair.connection.value.resumeReading() }
            try await eventually(within: .seconds(5), "the \(payload.count) paused bytes arrive after resumeReading") {
                pair.probe.value.bytes.value.count >= payload.count
            }
            #expect(pair.probe.value.bytes.value == payload)
        }
    }

    /// The same, pausing from inside `didRead` (the `read()` path of the same bug).
    @Test("Pausing inside didRead, then resuming, delivers the rest", arguments: ReactorBackendKind.allCases)
    func resumeAfterPauseInsideRead(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let pair = try await regressionConnect(reactor) { $0.pauseAfterFirstRead = true }
            defer { close(pair.peer) }
            let first = patternBytes(count: 1000, seed: 10)
            #expect(RawSocket.writeAll(pair.peer, first))
            try await eventually("the first bytes arrive") { pair.probe.value.bytes.value.count == first.count }
            // Now paused: these arrive in the kernel, raise an edge, and must wait.
            let second = patternBytes(count: 50_000, seed: 11)
            #expect(RawSocket.writeAll(pair.peer, second))
            try await Task.sleep(for: .milliseconds(100))
            #expect(pair.probe.value.bytes.value.count == first.count, "bytes were delivered while reads were paused")
            try await onLoop(reactor) { pair.connection.value.resumeReading() }
            try await eventually(within: .seconds(5), "the bytes sent while paused arrive after resumeReading") {
                pair.probe.value.bytes.value.count >= first.count + second.count
            }
            #expect(pair.probe.value.bytes.value == first + second)
        }
    }

    /// `Reactor.shutdown()` drains the inbox until it finds it empty and only then marks it
    /// stopped, so while any thread keeps calling `execute` (which keeps succeeding), every
    /// drain finds new work and `stop()` never returns. Run in a child process with a watchdog,
    /// since the failure mode is a livelock: exit code 3 means stop() hung.
    @Test("stop() returns while other threads keep submitting", arguments: ReactorBackendKind.allCases)
    func stopWhileSubmitting(kind: ReactorBackendKind) async throws {
        try requireBackend(kind)
        let raw = kind.rawValue
        await #expect(processExitsWith: .success, "stop() did not return within 3 s while 2 threads kept calling execute") { [raw = raw as String] in
            let kind = ReactorBackendKind(rawValue: raw)!
            let watchdog = Thread {
                sleep(3)
                exit(3)
            }
            watchdog.start()
            for _ in 0..<20 {
                let reactor = try Reactor(configuration: ReactorConfiguration(backend: .exactly(kind)))
                let running = Atomic<Int>(0)
                let threads = (0..<2).map { _ in
                    Thread {
                        running.add(1, ordering: .relaxed)
                        while reactor.execute({}) {}
                        running.subtract(1, ordering: .relaxed)
                    }
                }
                for thread in threads { thread.start() }
                while running.load(ordering: .relaxed) < 2 { usleep(100) }
                reactor.stop()
                // Once stopped, execute refuses work: the submitters finish.
                while running.load(ordering: .relaxed) > 0 { usleep(100) }
            }
        }
    }

    /// `UDPSocket.maxDatagramSize` promises that larger datagrams are dropped and counted in
    /// `truncatedCount`, but `handleReadable` only checks MSG_TRUNC, and the receive slots are
    /// `max(maxDatagramSize, 2048)` bytes (and shared with other sockets of the reactor, whose
    /// limit may be larger): a datagram between the limit and the slot size is delivered.
    @Test("UDP datagrams above maxDatagramSize are dropped and counted", arguments: ReactorBackendKind.allCases)
    func udpDatagramLimit(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let sizes = Locked<[Int]>([])
            let (sender, receiver) = try await onLoop(reactor) {
                let receiver = try reactor.bindUDP(on: loopbackAny, maxDatagramSize: 512) { bytes, _ in
                    sizes.withLock { $0.append(bytes.count) }
                }
                let sender = try reactor.bindUDP(on: loopbackAny) { _, _ in }
                return (ReactorBound(sender, reactor: reactor), ReactorBound(receiver, reactor: reactor))
            }
            try await onLoop(reactor) {
                let to = receiver.value.localAddress
                sender.value.send([UInt8](repeating: 1, count: 1000), to: to)  // over the limit
                sender.value.send([UInt8](repeating: 2, count: 512), to: to)   // at the limit
                sender.value.send([UInt8](repeating: 3, count: 9000), to: to)  // over any slot
                sender.value.send([UInt8](repeating: 4, count: 100), to: to)
            }
            try await eventually("the last datagram arrives") { sizes.value.last == 100 }
            #expect(sizes.value == [512, 100], "delivered sizes: \(sizes.value)")
            #expect(try await onLoop(reactor) { receiver.value.truncatedCount } == 2)
        }
    }

    /// `close(afterFlush: true)` only defers the close when the connection is `.active`: called
    /// while the connect is still in progress, right after `write`, it closes at once and the
    /// queued bytes are silently dropped.
    @Test("write then close(afterFlush: true) before the connect completes still delivers", arguments: ReactorBackendKind.allCases)
    func gracefulCloseWhileConnecting(kind: ReactorBackendKind) async throws {
        try await withReactors(kind) { server, client in
            let received = Locked<[UInt8]>([])
            let eof = Promise<Bool>()
            final class Sink: TCPConnectionHandler {
                let received: Locked<[UInt8]>
                let eof: Promise<Bool>
                init(received: Locked<[UInt8]>, eof: Promise<Bool>) { (self.received, self.eof) = (received, eof) }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    received.withLock { $0.append(contentsOf: bytes) }
                }
                func connectionDidReadEOF(_ connection: TCPConnection) {
                    eof.fulfill(true)
                    connection.close()
                }
            }
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny) { $0.handler = Sink(received: received, eof: eof) }.localAddress.port
            }
            let payload = patternBytes(count: 1000, seed: 12)
            let probe = LoopConfined(RegressionProbe())
            let stateAtClose = try await onLoop(client) {
                let connection = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), handler: probe.value)
                let state = connection.state
                connection.write(payload)
                connection.close(afterFlush: true)
                return state
            }
            #expect(stateAtClose == .connecting)
            _ = try await eof.value(within: .seconds(5), "the server to see the client's bytes and EOF")
            #expect(received.value == payload)
        }
    }

    /// `Reactor.shutdown()` closes the channels it knows, then closes the backend and drops its
    /// registry. A handler that opens a channel from `didCloseWith(.reactorStopped)` (a
    /// reconnecting client, say) registers it after that pass: its descriptor is never closed.
    /// Counted in a child process, where no other test opens descriptors meanwhile.
    @Test("A connection opened while the reactor stops does not leak its descriptor", arguments: ReactorBackendKind.allCases)
    func connectDuringStop(kind: ReactorBackendKind) async throws {
        try requireBackend(kind)
        let raw = kind.rawValue
        await #expect(processExitsWith: .success, "exit code 10 + n: n reactor descriptors leaked; 3: the reactor hung") { [raw = raw as String] in
            let kind = ReactorBackendKind(rawValue: raw)!
            let watchdog = Thread {
                sleep(10)
                exit(3)
            }
            watchdog.start()
            final class Reconnector: TCPConnectionHandler {
                let address: SocketAddress
                let active: Promise<Bool>
                init(address: SocketAddress, active: Promise<Bool>) { (self.address, self.active) = (address, active) }
                func connectionDidBecomeActive(_ connection: TCPConnection) { active.fulfill(true) }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
                func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
                    guard reason == .reactorStopped else { return }
                    // What a reconnecting client does.
                    _ = try? connection.reactor.connect(to: address, handler: Reconnector(address: address, active: Promise()))
                }
            }
            let before = openDescriptors()
            do {
                let reactor = try Reactor(configuration: ReactorConfiguration(backend: .exactly(kind)))
                let active = Promise<Bool>()
                let result = Promise<Result<Bool, any Error>>()
                reactor.execute {
                    result.fulfill(Result {
                        let listener = try reactor.listen(on: loopbackAny) { $0.handler = RegressionProbe() }
                        _ = try reactor.connect(to: listener.localAddress,
                                                handler: Reconnector(address: listener.localAddress, active: active))
                        return true
                    })
                }
                while result.current == nil || active.current == nil { usleep(1000) }
                _ = try result.current!.get()
                reactor.stop()
            }
            // Only the kinds of descriptor a reactor opens: the runtime may lazily open others
            // (libdispatch opens a timerfd on first use, for one).
            func reactorKinds(_ all: [Int32: String]) -> [Int32: String] {
                all.filter { $0.value.hasPrefix("socket:") || $0.value.hasSuffix("[eventpoll]")
                    || $0.value.hasSuffix("[eventfd]") || $0.value.hasSuffix("[io_uring]") }
            }
            let leaked = reactorKinds(openDescriptors()).filter { before[$0.key] == nil }
            if !leaked.isEmpty { exit(Int32(10 + leaked.count)) }
        }
    }
}
