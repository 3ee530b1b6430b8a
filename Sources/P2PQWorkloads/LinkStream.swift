import P2PQLink
import P2PQNode  // TCPConnection: LinkOutput
import P2PQReactor
import P2PQWire

/// The reactor stream carried over a peer link: the same frames (here: `benchmark` messages
/// of `payloadSize` bytes, framed by the message layer) sealed into Noise records by the sender
/// and opened by the receiver, after a full XXpsk0 handshake. With `secure: false` the link
/// runs the insecure mode (plaintext records), which isolates the cost of encryption.
public enum LinkStream {
    public static func run(backend: ReactorBackendKind, payloadSize: Int, frames: Int, secure: Bool,
                           cipher: LinkCipher = .chaChaPoly, timeout: Duration = .seconds(120)) throws -> ReactorStreamResult {
        let security: LinkSecurity = secure ? .noise(ClusterKey.generate()) : .insecure
        return try ReactorStream.runPair(
            workload: !secure ? "link-stream-insecure" : cipher == .chaChaPoly ? "link-stream-noise" : "link-stream-noise-aesgcm",
            backend: backend, payloadSize: payloadSize, frames: frames, timeout: timeout,
            receiver: { outcome in
                // A fresh identity cannot fail to make a session.
                let session = try! LinkSession(role: .responder, security: security, identity: .generate(), cipher: .forced(cipher))
                return LinkFrameCounter(session: session, expected: frames, outcome: outcome)
            },
            sender: { outcome in
                let session = try LinkSession(role: .initiator, security: security, identity: .generate(), cipher: .forced(cipher))
                return LinkFrameSender(session: session, payloadSize: payloadSize, frames: frames, outcome: outcome)
            }
        )
    }
}

/// Receiver: opens records and counts benchmark messages.
final class LinkFrameCounter: TCPConnectionHandler {
    private var session: LinkSession
    private let expected: Int
    private let outcome: Outcome
    private var count = 0
    private var start: MonotonicTime?

    init(session: LinkSession, expected: Int, outcome: Outcome) {
        self.session = session
        self.expected = expected
        self.outcome = outcome
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        if start == nil { start = .now() }
        var output: TCPConnection = connection
        var received = count
        do {
            try session.receive(bytes, output: &output) { event in
                if case .message(.benchmark, _) = event { received += 1 }
            }
        } catch {
            outcome.fail("receiver: \(error)")
            connection.close()
            return
        }
        count = received
        if count >= expected, let start {
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

/// Sender: handshakes, then encodes batches of messages and seals them while writable.
final class LinkFrameSender: TCPConnectionHandler {
    private var session: LinkSession
    private let payloadSize: Int
    private let frames: Int
    private let outcome: Outcome
    private var sent = 0
    private var batch: [UInt8] = []
    private var established = false

    init(session: LinkSession, payloadSize: Int, frames: Int, outcome: Outcome) {
        self.session = session
        self.payloadSize = payloadSize
        self.frames = frames
        self.outcome = outcome
        batch.reserveCapacity(64 * 1024 + payloadSize + 5)
    }

    func connectionDidBecomeActive(_ connection: TCPConnection) {
        var output: TCPConnection = connection
        do { try session.start(output: &output) } catch { outcome.fail("sender: \(error)") }
    }

    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        var output: TCPConnection = connection
        var becameEstablished = false
        do {
            try session.receive(bytes, output: &output) { event in
                if case .established = event { becameEstablished = true }
            }
        } catch {
            outcome.fail("sender: \(error)")
            connection.close()
            return
        }
        if becameEstablished {
            established = true
            fill(connection)
        }
    }

    func connection(_ connection: TCPConnection, writabilityChanged isWritable: Bool) {
        if isWritable && established { fill(connection) }
    }

    private func fill(_ connection: TCPConnection) {
        let frameSize = payloadSize + WireProtocol.messageHeaderSize
        let perBatch = max(1, 64 * 1024 / frameSize)
        var output: TCPConnection = connection
        while connection.isWritable && sent < frames {
            let n = min(perBatch, frames - sent)
            batch.removeAll(keepingCapacity: true)
            for _ in 0..<n {
                let length = UInt32(payloadSize + 1)
                batch.append(UInt8(length >> 24))
                batch.append(UInt8(length >> 16 & 0xFF))
                batch.append(UInt8(length >> 8 & 0xFF))
                batch.append(UInt8(length & 0xFF))
                batch.append(MessageType.benchmark.rawValue)
                batch.append(contentsOf: repeatElement(0x5A, count: payloadSize))
            }
            do {
                try batch.withUnsafeBytes { try session.seal($0, into: &output) }
            } catch {
                outcome.fail("sender: \(error)")
                connection.close()
                return
            }
            sent += n
        }
        if sent >= frames { connection.shutdownOutput() }
    }

    func connectionDidReadEOF(_ connection: TCPConnection) { connection.close() }

    func connection(_ connection: TCPConnection, didCloseWith reason: TCPCloseReason) {
        if case .connectFailed(let error) = reason { outcome.fail("\(error)") }
    }
}
