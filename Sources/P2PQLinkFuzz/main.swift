// Fuzz target for the link handshake and record layer (P2PQLink).
//
// The first input byte picks the role, the security mode and the chunking (its bit 2 also says
// whether this end reports AES instructions, which orders its cipher offer); the rest is what
// the peer sends. An initiator first emits its own first handshake message, as it would. The
// target checks that arbitrary peer bytes never crash a session, and that a failed session
// stays failed. (Completing a real handshake from random bytes is hopeless; the seeds hold
// valid first messages, and cipher offers, which are cleartext, so the fuzzer explores around
// them.)

import P2PQFuzzSupport
import P2PQLink
import P2PQWire

/// Fixed keys, so that inputs replay exactly.
let clusterKey = ClusterKey(bytes: Array(repeating: 0x42, count: 32))!
let identity = try! NodeIdentity(fileContents: "p2pq-identity-v1 " + String(repeating: "11", count: 32))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLink(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let selector = data[0]
    let input = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let role: LinkSession.Role = selector & 1 == 0 ? .responder : .initiator
    let security: LinkSecurity = selector & 2 == 0 ? .noise(clusterKey) : .insecure
    let chunk = selector >> 2 == 0 ? Int.max : Int(selector >> 2)
    let cipher = LinkCipherChoice.automatic(aesInstructions: selector & 4 != 0)
    guard var session = try? LinkSession(role: role, security: security, identity: identity, maxFrameSize: 4096,
                                         cipher: cipher) else {
        return 0
    }
    var output = ByteArrayOutput()
    if role == .initiator { try? session.start(output: &output) }
    var offset = 0
    var failed = false
    while offset < input.count {
        let n = min(chunk, input.count - offset)
        let piece = UnsafeRawBufferPointer(rebasing: input[offset..<(offset + n)])
        do {
            try session.receive(piece, output: &output) { _ in }
            precondition(!failed, "a failed session accepted more input")
        } catch {
            failed = true
            precondition(session.phase == .failed, "an error left the session \(session.phase)")
        }
        offset += n
    }
    return 0
}

fuzzMain(name: "P2PQLinkFuzz", fuzzLink)
