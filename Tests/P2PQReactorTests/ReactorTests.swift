import Foundation
import Glibc
@testable import P2PQReactor
import Synchronization
import Testing

// MARK: - Handlers used by the tests

/// Echoes everything back.
final class EchoHandler: TCPConnectionHandler {
    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        connection.write(bytes)
    }
}

/// Collects bytes and reports once `expected` bytes arrived (or the connection closed).
final class Collector: TCPConnectionHandler {
    let expected: Int
    var received: [UInt8] = []
    let done: Promise<[UInt8]>
    let closed = Promise<TCPCloseReason>()
    let active = Promise<Bool>()
    var onActive: ((TCPConnection) -> Void)?

    init(expected: Int, done: Promise<[UInt8]> = Promise()) {
        self.expected = expected
        self.done = done
    }

    func connectionDidBecomeActive(_ connection: TCPConnection) {
        active.fulfill(true)
        onActive?(connection)
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        if received.count >= expected { done.fulfill(received) }
    }

    func connectionDidReadEOF(_ connection: TCPConnection) {
        done.fulfill(received)
        connection.close(afterFlush: true, reason: .peerClosed)
    }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        closed.fulfill(reason)
        done.fulfill(received)
    }
}

/// What an echo server on `server` sends back to a connection from `client` that writes
/// `message` once it is up.
func echoed(_ message: [UInt8], server: Reactor, client: Reactor) async throws -> [UInt8] {
    let port = try await onLoop(server) {
        try server.listen(on: loopbackAny) { $0.handler = EchoHandler() }.localAddress.port
    }
    let collector = LoopConfined(Collector(expected: message.count))
    let done = collector.value.done
    try await onLoop(client) {
        let handler = collector.value
        handler.onActive = { $0.write(message) }
        _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), handler: handler)
    }
    return try await done.value("the echo")
}

// MARK: - TCP

@Suite("Reactor TCP")
struct ReactorTCPTests {
    @Test("Echo", arguments: ReactorBackendKind.allCases)
    func echo(kind: ReactorBackendKind) async throws {
        try await withReactors(kind) { server, client in
            let message = patternBytes(count: 100_000, seed: 1)
            let echo = try await echoed(message, server: server, client: client)
            #expect(echo == message)
        }
    }

    @Test("1,000 concurrent loopback connections each exchange data", arguments: ReactorBackendKind.allCases)
    func manyConnections(kind: ReactorBackendKind) async throws {
        try ensureDescriptorLimit(4_200)
        try await withReactors(kind) { server, client in
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny, backlog: 4096) { $0.handler = EchoHandler() }.localAddress.port
            }
            let count = 1_000
            let finished = Locked(0)
            let mismatches = Locked(0)
            let failures = Locked<[String]>([])
            let allDone = Promise<Bool>()
            final class Pinger: TCPConnectionHandler {
                let payload: [UInt8]
                var received: [UInt8] = []
                let report: (Bool) -> Void
                let failures: Locked<[String]>
                init(seed: UInt64, failures: Locked<[String]>, report: @escaping (Bool) -> Void) {
                    payload = patternBytes(count: 1024, seed: seed)
                    self.failures = failures
                    self.report = report
                }
                func connectionDidBecomeActive(_ connection: TCPConnection) { connection.write(payload) }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    received.append(contentsOf: bytes)
                    if received.count >= payload.count {
                        report(received == payload)
                        connection.close()
                    }
                }
                func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
                    if received.count < payload.count {
                        failures.withLock { $0.append("closed after \(received.count) bytes: \(reason)") }
                        report(false)
                    }
                }
            }
            try await onLoop(client) {
                let address = try SocketAddress(host: "127.0.0.1", port: port)
                for i in 0..<count {
                    let handler = Pinger(seed: UInt64(i), failures: failures) { ok in
                        if !ok { mismatches.withLock { $0 += 1 } }
                        if finished.withLock({ $0 += 1; return $0 }) == count { allDone.fulfill(true) }
                    }
                    _ = try client.connect(to: address, timeout: .seconds(20), handler: handler)
                }
            }
            _ = try await allDone.value(within: .seconds(60), "1,000 exchanges")
            #expect(mismatches.value == 0, "\(failures.value.prefix(5))")
            #expect(finished.value == count)
        }
    }

    @Test("A 1 GiB stream arrives with the sender's checksum", arguments: ReactorBackendKind.allCases)
    func gigabyteStream(kind: ReactorBackendKind) async throws {
        let total = 1 << 30
        let clock = ContinuousClock()
        let started = clock.now
        try await withReactors(kind) { server, client in
            let result = Promise<StreamChecksum>()
            final class Receiver: TCPConnectionHandler {
                var checksum = StreamChecksum()
                let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: 65536)
                let result: Promise<StreamChecksum>
                init(result: Promise<StreamChecksum>) { self.result = result }
                deinit { scratch.deallocate() }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    checksum.update(bytes, scratch: scratch, scratchWords: 65536)
                }
                func connectionDidReadEOF(_ connection: TCPConnection) {
                    result.fulfill(checksum.finish())
                    connection.close()
                }
            }
            final class Sender: TCPConnectionHandler {
                var generator = XorShift64(seed: 42)
                var checksum = StreamChecksum()
                var sent = 0
                let total: Int
                let sentChecksum: Promise<StreamChecksum>
                init(total: Int, sentChecksum: Promise<StreamChecksum>) {
                    self.total = total
                    self.sentChecksum = sentChecksum
                }
                func connectionDidBecomeActive(_ connection: TCPConnection) { fill(connection) }
                func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {
                    if isWritable { fill(connection) }
                }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
                func fill(_ connection: TCPConnection) {
                    // Odd-sized writes, so chunk boundaries never line up with words.
                    while connection.isWritable && sent < total {
                        let size = min(total - sent, 60_000)
                        connection.write(reservingCapacity: size + 8) { buffer in
                            let words = (size + 7) / 8
                            let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
                            defer { scratch.deallocate() }
                            var local = StreamChecksum()
                            generator.fill(scratch, count: words, checksum: &local)
                            buffer.baseAddress!.copyMemory(from: scratch, byteCount: size)
                            checksum.update(UnsafeRawBufferPointer(start: scratch, count: size))
                            return size
                        }
                        sent += size
                    }
                    if sent >= total {
                        sentChecksum.fulfill(checksum.finish())
                        connection.shutdownOutput()
                    }
                }
            }
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny) { $0.handler = Receiver(result: result) }.localAddress.port
            }
            let sentChecksum = Promise<StreamChecksum>()
            try await onLoop(client) {
                _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port),
                                       handler: Sender(total: total, sentChecksum: sentChecksum))
            }
            let received = try await result.value(within: .seconds(240), "1 GiB to arrive")
            let expected = try await sentChecksum.value(within: .seconds(5), "the sender's checksum")
            #expect(received.byteCount == total)
            #expect(received == expected)
        }
        logTiming("1 GiB stream on \(kind)", clock.now - started)
    }

    @Test("A peer that closes, or resets, in the middle of a large write", arguments: ReactorBackendKind.allCases, [false, true])
    func peerGoesAwayMidWrite(kind: ReactorBackendKind, reset: Bool) async throws {
        try await withReactor(kind) { reactor in
            let (listenFD, address) = try RawSocket.listen(backlog: 4)
            defer { close(listenFD) }
            let closed = Promise<TCPCloseReason>()
            final class Writer: TCPConnectionHandler {
                let closed: Promise<TCPCloseReason>
                init(closed: Promise<TCPCloseReason>) {
                    self.closed = closed
                }
                func connectionDidBecomeActive(_ connection: TCPConnection) {
                    // 64 MiB, far more than socket buffers hold.
                    let block = [UInt8](repeating: 0xAB, count: 1 << 20)
                    for _ in 0..<64 { connection.write(block) }
                }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
                func connectionDidReadEOF(_ connection: TCPConnection) {
                    connection.close(afterFlush: true, reason: .peerClosed)
                }
                func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
                    closed.fulfill(reason)
                }
            }
            let writer = try await onLoop(reactor) {
                ReactorBound(try reactor.connect(to: address, handler: Writer(closed: closed)), reactor: reactor)
            }
            let peer = try await onThread("accept") { try? RawSocket.accept(listenFD) }
            let fd = try #require(peer)
            // Take a little, then go away.
            _ = try await onThread("read a little") { RawSocket.read(fd, upTo: 256 * 1024, idleTimeoutMilliseconds: 2000) }
            if reset { RawSocket.setLingerZero(fd) }
            close(fd)
            let reason = try await closed.value(within: .seconds(10), "the writer to see its peer go")
            switch reason {
            case .reset, .peerClosed, .error: break
            default: Issue.record("unexpected close reason \(reason)")
            }
            // The queue is released once the kernel holds no reference to it (at once with
            // epoll; after the cancelled send completes with io_uring).
            try await eventually(within: .seconds(5), "the closed writer to release its queue") {
                try await onLoop(reactor) { writer.value.queuedByteCount == 0 }
            }
        }
    }

    @Test("Connect refused and connect timed out are distinct errors", arguments: ReactorBackendKind.allCases)
    func connectFailures(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            // Refused: a port that was just closed.
            let (fd, refusedAddress) = try RawSocket.listen(backlog: 1)
            close(fd)
            let refused = Promise<TCPCloseReason>()
            try await onLoop(reactor) {
                let handler = Collector(expected: 1)
                _ = try reactor.connect(to: refusedAddress, timeout: .seconds(5), handler: handler)
                Task { if let reason = await handler.closed.wait(timeout: .seconds(10)) { refused.fulfill(reason) } }
            }
            #expect(try await refused.value("refused") == .connectFailed(.connectionRefused(refusedAddress)))

            // Timed out: a listener whose accept queue is full drops further SYNs.
            let (listener, fullAddress) = try RawSocket.listen(backlog: 0)
            defer { close(listener) }
            var fillers: [Int32] = []
            defer { for f in fillers { close(f) } }
            for _ in 0..<8 { fillers.append(try RawSocket.startConnect(to: fullAddress)) }
            try await Task.sleep(for: .milliseconds(100))
            let timedOut = Promise<TCPCloseReason>()
            let clock = ContinuousClock()
            let start = clock.now
            try await onLoop(reactor) {
                let handler = Collector(expected: 1)
                _ = try reactor.connect(to: fullAddress, timeout: .milliseconds(300), handler: handler)
                Task { if let reason = await handler.closed.wait(timeout: .seconds(10)) { timedOut.fulfill(reason) } }
            }
            #expect(try await timedOut.value("timed out") == .connectFailed(.connectTimedOut(fullAddress)))
            #expect(clock.now - start >= .milliseconds(250))
        }
    }

    @Test("Backpressure: a writer to a peer that stops reading stays bounded", arguments: ReactorBackendKind.allCases)
    func backpressure(kind: ReactorBackendKind) async throws {
        try await withReactors(kind) { server, client in
            let options = TCPOptions(highWatermark: 256 * 1024, lowWatermark: 64 * 1024)
            let serverConnection = Promise<ReactorBound<TCPConnection>>()
            let total = 32 << 20
            let receivedBytes = Locked(0)
            final class SlowReader: TCPConnectionHandler {
                let received: Locked<Int>
                init(received: Locked<Int>) { self.received = received }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    received.withLock { $0 += bytes.count }
                }
            }
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny) { connection in
                    connection.handler = SlowReader(received: receivedBytes)
                    connection.pauseReading()
                    serverConnection.fulfill(ReactorBound(connection, reactor: server))
                }.localAddress.port
            }
            final class Writer: TCPConnectionHandler {
                var sent = 0
                let total: Int
                var maxQueued = 0
                var sawUnwritable = false
                var sawWritableAgain = false
                init(total: Int) { self.total = total }
                func connectionDidBecomeActive(_ connection: TCPConnection) { fill(connection) }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
                func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {
                    if isWritable { sawWritableAgain = true; fill(connection) } else { sawUnwritable = true }
                }
                func fill(_ connection: TCPConnection) {
                    let block = [UInt8](repeating: 7, count: 16 * 1024)
                    while connection.isWritable && sent < total {
                        connection.write(block)
                        sent += block.count
                        maxQueued = max(maxQueued, connection.queuedByteCount)
                    }
                }
            }
            let writer = LoopConfined(Writer(total: total))
            try await onLoop(client) {
                _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), options: options, handler: writer.value)
            }
            _ = try await serverConnection.value("the server side")
            // Let the socket buffers fill.
            try await eventually("the writer hits the high watermark") {
                try await onLoop(client) { writer.value.sawUnwritable }
            }
            try await Task.sleep(for: .milliseconds(200))
            let (queued, maxQueued, sent) = try await onLoop(client) {
                (writer.value.maxQueued, writer.value.maxQueued, writer.value.sent)
            }
            #expect(maxQueued <= options.highWatermark + 16 * 1024, "queued \(queued) bytes")
            #expect(sent < total, "the writer did not stop")
            // Resume: everything arrives and the writer sees writable again.
            let connection = try await serverConnection.value("server side")
            try await onLoop(server) { connection.value.resumeReading() }
            try await eventually(within: .seconds(30), "all bytes to arrive") { receivedBytes.value == total }
            #expect(try await onLoop(client) { writer.value.sawWritableAgain })
        }
    }

    @Test("Half-close: the peer sees EOF and can still answer", arguments: ReactorBackendKind.allCases)
    func halfClose(kind: ReactorBackendKind) async throws {
        try await withReactors(kind) { server, client in
            final class AnswerAtEOF: TCPConnectionHandler {
                var received = 0
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    received += bytes.count
                }
                func connectionDidReadEOF(_ connection: TCPConnection) {
                    connection.write(Array("got \(received)".utf8))
                    connection.close(afterFlush: true)
                }
            }
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny) { $0.handler = AnswerAtEOF() }.localAddress.port
            }
            let collector = LoopConfined(Collector(expected: .max))
            let done = collector.value.done
            try await onLoop(client) {
                let handler = collector.value
                handler.onActive = { connection in
                    connection.write([UInt8](repeating: 1, count: 5000))
                    connection.shutdownOutput()
                }
                _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), handler: handler)
            }
            let answer = try await done.value("the answer after EOF")
            #expect(String(decoding: answer, as: UTF8.self) == "got 5000")
        }
    }

    @Test("Paused reads resume with nothing lost; close(afterFlush:) delivers everything", arguments: ReactorBackendKind.allCases)
    func pauseResumeAndGracefulClose(kind: ReactorBackendKind) async throws {
        try await withReactors(kind) { server, client in
            let message = patternBytes(count: 3 << 20, seed: 9)
            final class Pauser: TCPConnectionHandler {
                var received: [UInt8] = []
                let done: Promise<[UInt8]>
                var pausedOnce = false
                init(done: Promise<[UInt8]>) { self.done = done }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
                    received.append(contentsOf: bytes)
                    if !pausedOnce {
                        pausedOnce = true
                        connection.pauseReading()
                        connection.reactor.schedule(after: .milliseconds(100)) { connection.resumeReading() }
                    }
                }
                func connectionDidReadEOF(_ connection: TCPConnection) {
                    done.fulfill(received)
                    connection.close()
                }
            }
            let done = Promise<[UInt8]>()
            let port = try await onLoop(server) {
                try server.listen(on: loopbackAny) { $0.handler = Pauser(done: done) }.localAddress.port
            }
            try await onLoop(client) {
                let handler = Collector(expected: .max)
                handler.onActive = { connection in
                    connection.write(message)
                    connection.close(afterFlush: true)
                }
                _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), handler: handler)
            }
            let received = try await done.value("all bytes")
            #expect(received.count == message.count)
            #expect(received == message)
        }
    }

    @Test("Binding an address in use is a typed error", arguments: ReactorBackendKind.allCases)
    func addressInUse(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            try await onLoop(reactor) {
                let first = try reactor.listen(on: loopbackAny, reuseAddress: false) { _ in }
                #expect(throws: ReactorError.addressInUse(first.localAddress)) {
                    _ = try reactor.listen(on: first.localAddress, reuseAddress: false) { _ in }
                }
            }
        }
    }
}

// MARK: - Timers and submissions

@Suite("Reactor timers and submissions")
struct ReactorTimerTests {
    @Test("Timers fire in deadline order; cancelled ones never fire; 50,000 pending is cheap", arguments: ReactorBackendKind.allCases)
    func timers(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let fired = Locked<[Int]>([])
            let cancelledFired = Locked(0)
            let count = 50_000
            let done = Promise<Bool>()
            let base = MonotonicTime.now() + .milliseconds(200)
            // Deadlines in a scrambled order; every odd timer is cancelled.
            let order: [Int] = (0..<count).map { ($0 &* 7919) % count }
            try await onLoop(reactor) {
                var ids: [TimerID] = []
                ids.reserveCapacity(count)
                for k in order {
                    let deadline = base + .microseconds(k * 10)
                    if k % 2 == 1 {
                        ids.append(reactor.schedule(at: deadline) { cancelledFired.withLock { $0 += 1 } })
                    } else {
                        ids.append(reactor.schedule(at: deadline) {
                            let n = fired.withLock { $0.append(k); return $0.count }
                            if n == count / 2 { done.fulfill(true) }
                        })
                    }
                }
                #expect(reactor.pendingTimerCount == count)
                for (index, k) in order.enumerated() where k % 2 == 1 {
                    #expect(reactor.cancel(ids[index]))
                }
                #expect(reactor.pendingTimerCount == count / 2)
            }
            _ = try await done.value(within: .seconds(20), "the timers to fire")
            try await Task.sleep(for: .milliseconds(50))
            let sequence = fired.value
            #expect(sequence.count == count / 2)
            #expect(sequence == sequence.sorted(), "timers fired out of deadline order")
            #expect(cancelledFired.value == 0)
            #expect(try await onLoop(reactor) { reactor.pendingTimerCount } == 0)
        }
    }

    @Test("8 threads x 100,000 submissions each run exactly once, in order per thread", arguments: ReactorBackendKind.allCases)
    func submissions(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let threads = 8
            let perThread = 100_000
            let next = LoopConfined([Int](repeating: 0, count: threads))
            let errors = LoopConfined(0)
            let total = LoopConfined(0)
            let done = Promise<Bool>()
            let wakeupsBefore = reactor.wakeupCount
            await withTaskGroup(of: Void.self) { group in
                for t in 0..<threads {
                    group.addTask {
                        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                            Thread {
                                for i in 0..<perThread {
                                    reactor.execute {
                                        if next.value[t] != i { errors.value += 1 }
                                        next.value[t] = i + 1
                                        total.value += 1
                                        if total.value == threads * perThread { done.fulfill(true) }
                                    }
                                }
                                continuation.resume()
                            }.start()
                        }
                    }
                }
            }
            _ = try await done.value(within: .seconds(60), "800,000 submissions")
            let (counts, errorCount, sum) = try await onLoop(reactor) { (next.value, errors.value, total.value) }
            #expect(counts == [Int](repeating: perThread, count: threads))
            #expect(errorCount == 0)
            #expect(sum == threads * perThread)
            let wakeups = reactor.wakeupCount - wakeupsBefore
            #expect(wakeups < UInt64(threads * perThread / 4), "\(wakeups) wake-ups for \(threads * perThread) submissions")
        }
    }

    @Test("submit returns the closure's value and rethrows its error", arguments: ReactorBackendKind.allCases)
    func submit(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let onThread = try await reactor.submit { reactor.inReactorThread }
            #expect(onThread)
            #expect(!reactor.inReactorThread)
            await #expect(throws: ReactorError.closed) { try await reactor.submit { throw ReactorError.closed } }
        }
    }
}

// MARK: - UDP

@Suite("Reactor UDP")
struct ReactorUDPTests {
    @Test("A multicast round trip on the loopback interface", arguments: ReactorBackendKind.allCases)
    func multicast(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let group = "239.255.77.\(kind == .epoll ? 1 : 2)"
            let port = 40_000 + Int(getpid() % 10_000) + (kind == .epoll ? 0 : 1)
            let received = Promise<([UInt8], SocketAddress)>()
            let senderPort = try await onLoop(reactor) { () -> Int in
                let receiver = try reactor.bindUDP(on: SocketAddress(host: "0.0.0.0", port: port),
                                                   reuseAddress: true, reusePort: true) { bytes, source in
                    received.fulfill((Array(bytes), source))
                }
                try receiver.joinMulticastGroup(group, interfaceAddress: "127.0.0.1")
                let sender = try reactor.bindUDP(on: SocketAddress(host: "127.0.0.1", port: 0)) { _, _ in }
                try sender.setMulticastInterface("127.0.0.1")
                try sender.setMulticastTTL(1)
                try sender.setMulticastLoopback(true)
                #expect(sender.send(Array("hello group".utf8), to: try SocketAddress(host: group, port: port)))
                return sender.localAddress.port
            }
            let (bytes, source) = try await received.value(within: .seconds(5), "the multicast datagram")
            #expect(String(decoding: bytes, as: UTF8.self) == "hello group")
            #expect(source.port == senderPort)
            #expect(source.isLoopback)
        }
    }

    @Test("100 datagrams queued in one turn all arrive, with their source", arguments: ReactorBackendKind.allCases)
    func batchedUnicast(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            let seen = Locked<Set<Int>>([])
            let done = Promise<Bool>()
            try await onLoop(reactor) {
                let receiver = try reactor.bindUDP(on: loopbackAny) { bytes, source in
                    let n = Int(bytes.load(as: UInt32.self))
                    if seen.withLock({ $0.insert(n); return $0.count }) == 100 { done.fulfill(true) }
                }
                let sender = try reactor.bindUDP(on: loopbackAny) { _, _ in }
                for i in 0..<100 {
                    var value = UInt32(i)
                    let ok = withUnsafeBytes(of: &value) { sender.send($0, to: receiver.localAddress) }
                    #expect(ok)
                }
                #expect(sender.queuedCount == 100)
            }
            _ = try await done.value(within: .seconds(5), "100 datagrams")
            #expect(seen.value == Set(0..<100))
        }
    }
}

// MARK: - Lifecycle, configuration, addresses

/// Open descriptors, not counting timerfds (libdispatch's, created lazily; the reactor has none).
func reactorKindDescriptorCount() -> Int {
    openDescriptors().values.filter { !$0.contains("timerfd") }.count
}

@Suite("Reactor lifecycle and configuration")
struct ReactorLifecycleTests {
    // In a child process (an exit test) so that nothing else opens descriptors meanwhile.
    @Test("Stop closes every descriptor and joins the thread")
    func noLeaks() async {
        await #expect(processExitsWith: .success) {
            // The first round warms up what the runtime opens lazily (dispatch, concurrency);
            // the second is measured. libdispatch opens timerfds on demand (Task.sleep), and the
            // reactor never creates one, so they are not counted.
            for round in 0..<2 {
            for kind in ReactorBackendKind.allCases where kind.isCompiledIn {
                let before = reactorKindDescriptorCount()
                let server = try Reactor(backend: .exactly(kind))
                let client = try Reactor(backend: .exactly(kind))
                let port = try await server.submit {
                    try server.listen(on: loopbackAny) { $0.handler = EchoHandler() }.localAddress.port
                }
                let connected = Promise<Bool>()
                try await client.submit {
                    let handler = Collector(expected: 1)
                    handler.onActive = { $0.write([1, 2, 3]); connected.fulfill(true) }
                    _ = try client.connect(to: SocketAddress(host: "127.0.0.1", port: port), handler: handler)
                    _ = try client.bindUDP(on: loopbackAny) { _, _ in }
                    client.schedule(after: .seconds(60)) {}
                }
                _ = await connected.wait(timeout: .seconds(5))
                server.stop()
                client.stop()
                // A leak is a descriptor more than before. (The runtime's own threads may open
                // or close theirs meanwhile; give a closing one a moment.)
                var after = reactorKindDescriptorCount()
                for _ in 0..<100 where after > before {
                    usleep(10_000)
                    after = reactorKindDescriptorCount()
                }
                if round == 1 && after > before {
                    print("\(kind): \(before) descriptors before, \(after) after")
                    exit(1)
                }
            }
            }
        }
    }

    @Test("Work submitted after stop is refused")
    func executeAfterStop() throws {
        let reactor = try Reactor(backend: .exactly(.epoll))
        reactor.stop()
        #expect(!reactor.execute {})
        reactor.stop()  // idempotent
    }

    @Test("P2PQ_BACKEND values parse", arguments: [
        ("epoll", ReactorBackendChoice.exactly(.epoll)), ("io_uring", .exactly(.ioUring)),
        ("IOURING", .exactly(.ioUring)), ("auto", .automatic), ("nonsense", .automatic),
    ])
    func backendChoice(text: String, expected: ReactorBackendChoice) {
        #expect(ReactorBackendChoice(environmentValue: text) == expected)
    }

    @Test("Asking for io_uring in a build without it names liburing-dev")
    func ioUringMissing() throws {
        guard !ReactorBackendKind.ioUring.isCompiledIn else { return }
        let outcome: Result<Reactor, ReactorError> = Result { () throws(ReactorError) in try Reactor(backend: .exactly(.ioUring)) }
        switch outcome {
        case .success(let reactor):
            reactor.stop()
            Issue.record("an io_uring reactor started without io_uring support")
        case .failure(let error):
            guard case .backendUnavailable(let kind, let reason) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(kind == .ioUring)
            #expect(reason.contains("liburing-dev"))
        }
    }

    @Test("Socket addresses parse and refuse bad input")
    func addresses() throws {
        #expect(try SocketAddress("127.0.0.1:80").port == 80)
        #expect(try SocketAddress("[::1]:443").host == "::1")
        #expect(try SocketAddress("localhost:1").isLoopback)
        #expect(try !SocketAddress("10.1.2.3:4").isLoopback)
        #expect(throws: ReactorError.self) { try SocketAddress("::1:80") }
        #expect(throws: ReactorError.self) { try SocketAddress("127.0.0.1") }
        #expect(throws: ReactorError.self) { try SocketAddress("example.com:80") }
        #expect(throws: ReactorError.self) { try SocketAddress(host: "127.0.0.1", port: 70000) }
    }

    @Test("Timer heap keeps order under random insert and cancel")
    func timerHeap() {
        var heap = TimerHeap()
        var rng = XorShift64(seed: 5)
        var live: [TimerID: UInt64] = [:]
        for _ in 0..<20_000 {
            if rng.next() % 3 == 0, let victim = live.keys.first {
                let first = heap.cancel(victim)
                let second = heap.cancel(victim)
                #expect(first)
                #expect(!second)
                live[victim] = nil
            } else {
                let deadline = rng.next() % 1_000_000
                live[heap.schedule(deadline: deadline) {}] = deadline
            }
        }
        #expect(heap.count == live.count)
        var last: UInt64 = 0
        var popped = 0
        while let deadline = heap.earliestDeadline {
            #expect(deadline >= last)
            last = deadline
            _ = heap.popExpired(now: .max)
            popped += 1
        }
        #expect(popped == live.count)
    }
}
