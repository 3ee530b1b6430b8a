import P2PQNoise
import Glibc

/// The transport cipher alone, on one core: `records` records of `recordSize` plaintext bytes
/// sealed with one `CipherState` and opened with its peer, through the same buffer API the
/// link uses. It bounds what a Noise link can do: each side of a link needs this much CPU per
/// byte on top of the insecure link's own cost. Times are the thread's CPU time, so other
/// load on the machine does not inflate them (as long as it leaves the caches alone).
public struct CipherSpeedResult: Sendable {
    public var cipher: String
    public var recordSize: Int
    public var records: Int
    public var sealSeconds: Double
    public var openSeconds: Double

    public var sealBytesPerSecond: Double { Double(records * recordSize) / sealSeconds }
    public var openBytesPerSecond: Double { Double(records * recordSize) / openSeconds }

    public var json: String {
        func f(_ x: Double) -> String { "\((x * 1000).rounded() / 1000)" }
        return #"{"workload":"cipher","cipher":"\#(cipher)","record_bytes":\#(recordSize),"records":\#(records),"#
            + #""seal_mb_per_sec":\#(f(sealBytesPerSecond / 1e6)),"open_mb_per_sec":\#(f(openBytesPerSecond / 1e6))}"#
    }
}

public enum CipherSpeed {
    /// `cipher` is a Noise cipher name: `ChaChaPoly` (the links') or `AESGCM` (for comparison).
    public static func run(cipher: String = "ChaChaPoly", recordSize: Int, records: Int) throws -> CipherSpeedResult {
        // NN is the quickest way to a keyed pair of transport ciphers through the public API.
        let name = "Noise_NN_25519_\(cipher)_SHA256"
        var initiator = try HandshakeState(protocolName: name, role: .initiator)
        var responder = try HandshakeState(protocolName: name, role: .responder)
        _ = try responder.readMessage(try initiator.writeMessage(payload: []))
        _ = try initiator.readMessage(try responder.writeMessage(payload: []))
        var sender = try initiator.transportCiphers().send
        var receiver = try responder.transportCiphers().receive

        let size = min(max(1, recordSize), CipherState.maxPlaintextLength)
        let plaintext = [UInt8](repeating: 0x5A, count: size)
        // Every sealed record is kept so the open pass reads distinct, valid ciphertexts; a
        // ring of them keeps memory bounded (and in cache, like the link's records).
        let ring = 64
        var sealed = [[UInt8]](repeating: [UInt8](repeating: 0, count: size + CipherState.tagLength), count: ring)
        var opened = [UInt8](repeating: 0, count: size)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)

        var sealTime: UInt64 = 0
        var openTime: UInt64 = 0
        var done = 0
        while done < records {
            let batch = min(ring, records - done)
            let t0 = threadCPUNanoseconds()
            for i in 0..<batch {
                _ = try plaintext.withUnsafeBytes { pt in
                    try sealed[i].withUnsafeMutableBytes { out in try sender.encrypt(plaintext: pt, ad: none, into: out) }
                }
            }
            let t1 = threadCPUNanoseconds()
            for i in 0..<batch {
                _ = try sealed[i].withUnsafeBytes { ct in
                    try opened.withUnsafeMutableBytes { out in try receiver.decrypt(ciphertext: ct, ad: none, into: out) }
                }
            }
            let t2 = threadCPUNanoseconds()
            sealTime += t1 - t0
            openTime += t2 - t1
            done += batch
        }
        return CipherSpeedResult(cipher: cipher, recordSize: size, records: records,
                                 sealSeconds: Double(sealTime) / 1e9, openSeconds: Double(openTime) / 1e9)
    }
}

/// CPU time of the calling thread.
func threadCPUNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Runs `body` and adds the thread CPU time it took to `total` (the machine cycles charge each
/// side's work to that side).
func timed<R, E: Error>(_ total: inout UInt64, _ body: () throws(E) -> R) throws(E) -> R {
    let start = threadCPUNanoseconds()
    defer { total &+= threadCPUNanoseconds() &- start }
    return try body()
}
