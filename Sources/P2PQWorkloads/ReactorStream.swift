import Glibc
import P2PQReactor
import Synchronization

/// The reactor stream workload: one connection between two reactors carrying `frames`
/// length-prefixed frames of `payloadSize` bytes (a 4-byte big-endian length, then the payload).
///
/// The sender encodes frames straight into the connection's outbound queue while it is
/// writable; the receiver walks the frame boundaries of every chunk it reads. The figure is
/// frames per second at the receiver from its first byte to its last frame.
public struct ReactorStreamResult: Sendable {
    public var workload = "reactor-stream"
    public var backend: ReactorBackendKind
    public var payloadSize: Int
    public var frames: Int
    public var seconds: Double
    public var cpuSeconds: Double
    /// CPU time of the sending and the receiving reactor thread (whole run, handshake
    /// included). Unlike wall time they do not grow when other work shares the cores.
    public var senderCPUSeconds: Double = 0
    public var receiverCPUSeconds: Double = 0
    /// Seconds each reactor thread spent blocked (neither running nor waiting for a core):
    /// time one side waited for the other. Wall time minus CPU time minus run-queue wait,
    /// from /proc/thread-self/schedstat over the whole run, so other load does not count.
    public var senderIdleSeconds: Double = 0
    public var receiverIdleSeconds: Double = 0

    /// The rate if each side had a core of its own: frames over the busier thread's CPU time.
    /// A load-independent figure for a busy machine (it assumes the two sides overlap).
    public var framesPerSecondTwoCores: Double {
        let busiest = max(senderCPUSeconds, receiverCPUSeconds)
        return busiest > 0 ? Double(frames) / busiest : 0
    }

    public var framesPerSecond: Double { Double(frames) / seconds }
    public var megabytesPerSecond: Double { Double(frames * (payloadSize + 4)) / seconds / 1e6 }

    /// One JSON object on one line.
    public var json: String {
        func f(_ x: Double) -> String { "\((x * 1000).rounded() / 1000)" }
        return #"{"workload":"\#(workload)","backend":"\#(backend)","payload_bytes":\#(payloadSize),"#
            + #""frames":\#(frames),"seconds":\#(f(seconds)),"frames_per_sec":\#(Int(framesPerSecond)),"#
            + #""mb_per_sec":\#(f(megabytesPerSecond)),"cpu_seconds":\#(f(cpuSeconds)),"#
            + #""send_cpu_seconds":\#(f(senderCPUSeconds)),"recv_cpu_seconds":\#(f(receiverCPUSeconds)),"#
            + #""send_idle_seconds":\#(f(senderIdleSeconds)),"recv_idle_seconds":\#(f(receiverIdleSeconds)),"#
            + #""frames_per_sec_2core":\#(Int(framesPerSecondTwoCores))}"#
    }
}

public enum ReactorStreamError: Error, CustomStringConvertible {
    case connectionFailed(String)
    case timedOut(received: Int)

    public var description: String {
        switch self {
        case .connectionFailed(let why): return "stream connection failed: \(why)"
        case .timedOut(let received): return "stream timed out after \(received) frames"
        }
    }
}

public enum ReactorStream {
    /// Runs the workload once on two fresh reactors of `backend`.
    public static func run(backend: ReactorBackendKind, payloadSize: Int, frames: Int,
                           timeout: Duration = .seconds(120)) throws -> ReactorStreamResult {
        try runPair(
            workload: "reactor-stream", backend: backend, payloadSize: payloadSize, frames: frames, timeout: timeout,
            receiver: { outcome in FrameCounter(expected: frames, outcome: outcome) },
            sender: { outcome in FrameSender(payloadSize: payloadSize, frames: frames, outcome: outcome) }
        )
    }

    /// The harness every stream workload shares: a receiving reactor with a listener whose
    /// connections get `receiver`'s handler, a sending reactor that connects with `sender`'s,
    /// and the receiver's report of the elapsed time. Handlers are made on their loop thread.
    static func runPair(
        workload: String, backend: ReactorBackendKind, payloadSize: Int, frames: Int, timeout: Duration,
        receiver: @escaping @Sendable (Outcome) -> any TCPConnectionHandler,
        sender: @escaping @Sendable (Outcome) throws -> any TCPConnectionHandler
    ) throws -> ReactorStreamResult {
        let receiverReactor = try Reactor(configuration: configuration(backend, name: "p2pq-recv"))
        let senderReactor = try Reactor(configuration: configuration(backend, name: "p2pq-send"))
        defer {
            senderReactor.stop()
            receiverReactor.stop()
        }
        let outcome = Outcome()
        let senderStart = threadStats(of: senderReactor)
        let receiverStart = threadStats(of: receiverReactor)
        let wallStart = MonotonicTime.now()
        let cpuStart = processCPUSeconds()
        let portBox = Mutex<Result<Int, ReactorError>?>(nil)
        receiverReactor.execute {
            do throws(ReactorError) {
                let listener = try receiverReactor.listen(on: try SocketAddress(host: "127.0.0.1", port: 0)) { connection in
                    connection.handler = receiver(outcome)
                }
                portBox.withLock { $0 = .success(listener.localAddress.port) }
            } catch {
                portBox.withLock { $0 = .failure(error) }
            }
        }
        let port = try waitFor(portBox).get()
        senderReactor.execute {
            do {
                _ = try senderReactor.connect(to: try SocketAddress(host: "127.0.0.1", port: port), handler: try sender(outcome))
            } catch {
                outcome.fail("\(error)")
            }
        }
        let result = outcome.wait(timeout: timeout)
        let cpu = processCPUSeconds() - cpuStart
        switch result {
        case .success(let seconds):
            var stream = ReactorStreamResult(backend: backend, payloadSize: payloadSize, frames: frames,
                                             seconds: seconds, cpuSeconds: cpu)
            stream.workload = workload
            let senderEnd = threadStats(of: senderReactor)
            let receiverEnd = threadStats(of: receiverReactor)
            let wall = Double((MonotonicTime.now() - wallStart).nanosecondsClamped) / 1e9
            stream.senderCPUSeconds = senderEnd.cpu
            stream.receiverCPUSeconds = receiverEnd.cpu
            stream.senderIdleSeconds = max(0, wall - (senderEnd.cpu - senderStart.cpu) - (senderEnd.waiting - senderStart.waiting))
            stream.receiverIdleSeconds = max(0, wall - (receiverEnd.cpu - receiverStart.cpu) - (receiverEnd.waiting - receiverStart.waiting))
            return stream
        case .failure(let error):
            throw error
        }
    }

    static func configuration(_ backend: ReactorBackendKind, name: String) -> ReactorConfiguration {
        var configuration = ReactorConfiguration(backend: .exactly(backend))
        configuration.threadName = name
        return configuration
    }

    private static func waitFor<T: Sendable>(_ box: borrowing Mutex<T?>) -> T {
        while true {
            if let value = box.withLock({ $0 }) { return value }
            usleep(1000)
        }
    }
}

/// CPU time and run-queue wait (seconds) of `reactor`'s loop thread, read on that thread from
/// /proc/thread-self/schedstat (wait 0 where unreadable). Zeros if the loop does not answer
/// within a second.
func threadStats(of reactor: Reactor) -> (cpu: Double, waiting: Double) {
    let box = Mutex<(cpu: Double, waiting: Double)?>(nil)
    _ = reactor.execute {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        let cpu = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        var waiting = 0.0
        if let file = fopen("/proc/thread-self/schedstat", "r") {
            var running: UInt64 = 0, queued: UInt64 = 0
            if withUnsafeMutablePointer(to: &running, { r in
                withUnsafeMutablePointer(to: &queued) { q in readTwo(file, r, q) }
            }) {
                // The run time field lags for a running thread; the clock above does not.
                _ = running
                waiting = Double(queued) / 1e9
            }
            fclose(file)
        }
        let result = (cpu: cpu, waiting: waiting)
        box.withLock { $0 = result }
    }
    for _ in 0..<1000 {
        if let value = box.withLock({ $0 }) { return value }
        usleep(1000)
    }
    return (0, 0)
}

/// Reads the first two decimal fields of a schedstat line.
private func readTwo(_ file: UnsafeMutablePointer<FILE>, _ a: UnsafeMutablePointer<UInt64>, _ b: UnsafeMutablePointer<UInt64>) -> Bool {
    var line = [CChar](repeating: 0, count: 128)
    guard fgets(&line, Int32(line.count), file) != nil else { return false }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let fields = text.split(separator: " ")
    guard fields.count >= 2, let x = UInt64(fields[0]), let y = UInt64(fields[1]) else { return false }
    a.pointee = x
    b.pointee = y
    return true
}

/// CPU time (user + system) of the whole process so far.
public func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Where the two sides report; the caller waits on it.
final class Outcome: Sendable {
    private let state = Mutex<Result<Double, ReactorStreamError>?>(nil)
    private let received = Atomic<Int>(0)

    func finish(seconds: Double) { state.withLock { if $0 == nil { $0 = .success(seconds) } } }
    func fail(_ why: String) { state.withLock { if $0 == nil { $0 = .failure(.connectionFailed(why)) } } }
    func progress(_ frames: Int) { received.store(frames, ordering: .relaxed) }

    func wait(timeout: Duration) -> Result<Double, ReactorStreamError> {
        let deadline = MonotonicTime.now() + timeout
        while MonotonicTime.now() < deadline {
            if let result = state.withLock({ $0 }) { return result }
            usleep(2000)
        }
        return .failure(.timedOut(received: received.load(ordering: .relaxed)))
    }
}

/// Receiver: walks frame boundaries across arbitrary chunking.
final class FrameCounter: TCPConnectionHandler {
    private let expected: Int
    private let outcome: Outcome
    private var count = 0
    /// Payload bytes of the current frame still to skip.
    private var skip = 0
    /// A length prefix split across reads.
    private var header: UInt32 = 0
    private var headerBytes = 0
    private var start: MonotonicTime?

    init(expected: Int, outcome: Outcome) {
        self.expected = expected
        self.outcome = outcome
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        if start == nil { start = .now() }
        var p = bytes.baseAddress!
        var left = bytes.count
        var frames = count
        while left > 0 {
            if skip > 0 {
                let n = min(skip, left)
                skip -= n
                p += n
                left -= n
                continue
            }
            if headerBytes == 0 && left >= 4 {
                let length = Int(UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)))
                frames += 1
                p += 4
                left -= 4
                skip = length
                continue
            }
            // A length prefix split across reads.
            header = header << 8 | UInt32(p.load(as: UInt8.self))
            headerBytes += 1
            p += 1
            left -= 1
            if headerBytes == 4 {
                skip = Int(header)
                header = 0
                headerBytes = 0
                frames += 1
            }
        }
        count = frames
        if count >= expected && skip == 0, let start {
            outcome.progress(count)
            outcome.finish(seconds: Double((MonotonicTime.now() - start).nanosecondsClamped) / 1e9)
            connection.close()
        }
    }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        outcome.progress(count)
        if count < expected { outcome.fail("receiver closed after \(count) frames: \(reason)") }
    }
}

/// Sender: encodes frames into the outbound queue while the connection is writable.
final class FrameSender: TCPConnectionHandler {
    private let payloadSize: Int
    private let frames: Int
    private let outcome: Outcome
    private var sent = 0
    private let template: UnsafeMutableRawBufferPointer

    init(payloadSize: Int, frames: Int, outcome: Outcome) {
        self.payloadSize = payloadSize
        self.frames = frames
        self.outcome = outcome
        template = .allocate(byteCount: payloadSize + 4, alignment: 8)
        template.storeBytes(of: UInt32(payloadSize).bigEndian, toByteOffset: 0, as: UInt32.self)
        for i in 0..<payloadSize { template[4 + i] = UInt8(truncatingIfNeeded: i &* 31) }
    }

    deinit { template.deallocate() }

    func connectionDidBecomeActive(_ connection: TCPConnection) { fill(connection) }

    func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {
        if isWritable { fill(connection) }
    }

    private func fill(_ connection: TCPConnection) {
        let frameSize = payloadSize + 4
        let perBatch = max(1, 32768 / frameSize)
        let source = UnsafeRawPointer(template.baseAddress!)
        while connection.isWritable && sent < frames {
            let n = min(perBatch, frames - sent)
            connection.write(reservingCapacity: n * frameSize) { buffer in
                var p = buffer.baseAddress!
                for _ in 0..<n {
                    p.copyMemory(from: source, byteCount: frameSize)
                    p += frameSize
                }
                return n * frameSize
            }
            sent += n
        }
        if sent >= frames { connection.shutdownOutput() }
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}

    func connectionDidReadEOF(_ connection: TCPConnection) { connection.close() }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        if case .connectFailed(let error) = reason { outcome.fail("\(error)") }
    }
}
