import Foundation
import Testing
@testable import P2PQNoise

/// Hex helpers for vectors and assertions.
func hexBytes(_ hex: String) -> [UInt8] {
    let chars = Array(hex.utf8)
    precondition(chars.count % 2 == 0, "odd-length hex")
    func nibble(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: preconditionFailure("bad hex digit")
        }
    }
    return stride(from: 0, to: chars.count, by: 2).map { nibble(chars[$0]) << 4 | nibble(chars[$0 + 1]) }
}

func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

/// One entry of the common Noise test-vector JSON format (cacophony / snow).
struct NoiseVector: Decodable, Sendable {
    struct Message: Decodable, Sendable {
        let payload: String
        let ciphertext: String
    }

    let protocolName: String
    let initPrologue: String
    let initPsks: [String]?
    let initStatic: String?
    let initEphemeral: String?
    let initRemoteStatic: String?
    let respPrologue: String
    let respPsks: [String]?
    let respStatic: String?
    let respEphemeral: String?
    let respRemoteStatic: String?
    let handshakeHash: String?
    let messages: [Message]
    let source: String?
}

struct NoiseVectorFile: Decodable {
    let vectors: [NoiseVector]
}

func decodeVectors(_ data: Data) throws -> [NoiseVector] {
    let decoder = JSONDecoder()
    decoder.keyDecodingStrategy = .convertFromSnakeCase
    return try decoder.decode(NoiseVectorFile.self, from: data).vectors
}

enum VectorOutcome: Equatable {
    case passed
    case failed
    case skipped(String)
}

/// Replays one vector: both parties run from the vector's keys, every handshake and
/// transport ciphertext must match byte for byte, every decryption must return the payload,
/// and the final handshake hash (when given) must match on both sides.
func runVector(_ vector: NoiseVector, sourceLocation: SourceLocation = #_sourceLocation) throws -> VectorOutcome {
    let parsed = Result { () throws(NoiseError) in try NoiseProtocol(name: vector.protocolName) }
    if case .failure(.unsupportedPrimitive(let primitive)) = parsed { return .skipped(primitive) }
    let noiseProtocol = try parsed.get()
    let label = "\(vector.protocolName) [\(vector.source ?? "?")]"
    func keyPair(_ hex: String?) throws -> NoiseKeyPair? {
        try hex.map { try NoiseKeyPair(privateKey: hexBytes($0)) }
    }
    var initiator = try HandshakeState(
        protocol: noiseProtocol, role: .initiator, prologue: hexBytes(vector.initPrologue),
        localStatic: keyPair(vector.initStatic), localEphemeral: keyPair(vector.initEphemeral),
        remoteStatic: vector.initRemoteStatic.map(hexBytes), psks: (vector.initPsks ?? []).map(hexBytes)
    )
    var responder = try HandshakeState(
        protocol: noiseProtocol, role: .responder, prologue: hexBytes(vector.respPrologue),
        localStatic: keyPair(vector.respStatic), localEphemeral: keyPair(vector.respEphemeral),
        remoteStatic: vector.respRemoteStatic.map(hexBytes), psks: (vector.respPsks ?? []).map(hexBytes)
    )

    final class Mismatches { var count = 0 }
    let mismatches = Mismatches()
    func check(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition {
            mismatches.count += 1
            Issue.record("\(label): \(what())", sourceLocation: sourceLocation)
        }
    }

    var transport: (initiator: (send: CipherState, receive: CipherState), responder: (send: CipherState, receive: CipherState))?
    for (index, message) in vector.messages.enumerated() {
        let payload = hexBytes(message.payload)
        let expected = hexBytes(message.ciphertext)
        let initiatorSends = noiseProtocol.pattern.isOneWay || index % 2 == 0
        let ciphertext: [UInt8]
        let decrypted: [UInt8]
        if var session = transport {
            if initiatorSends {
                ciphertext = try session.initiator.send.encrypt(payload)
                decrypted = try session.responder.receive.decrypt(ciphertext)
            } else {
                ciphertext = try session.responder.send.encrypt(payload)
                decrypted = try session.initiator.receive.decrypt(ciphertext)
            }
            transport = session
        } else if initiatorSends {
            ciphertext = try initiator.writeMessage(payload: payload)
            decrypted = try responder.readMessage(ciphertext)
        } else {
            ciphertext = try responder.writeMessage(payload: payload)
            decrypted = try initiator.readMessage(ciphertext)
        }
        check(ciphertext == expected, "message \(index) ciphertext \(hexString(ciphertext)) != \(message.ciphertext)")
        check(decrypted == payload, "message \(index) payload mismatch")

        if transport == nil && initiator.isComplete {
            check(responder.isComplete, "responder not complete when initiator is")
            check(initiator.handshakeHash == responder.handshakeHash, "handshake hashes differ between parties")
            if let hash = vector.handshakeHash {
                check(hexString(initiator.handshakeHash) == hash, "handshake hash \(hexString(initiator.handshakeHash)) != \(hash)")
            }
            transport = (try initiator.transportCiphers(), try responder.transportCiphers())
        }
    }
    check(transport != nil, "handshake never completed")
    return mismatches.count == 0 ? .passed : .failed
}

/// `Vectors/vectors.json` beside this source file: the tests read nothing outside the repository.
func publishedVectorsURL(from filePath: String = #filePath) -> URL {
    URL(fileURLWithPath: filePath).deletingLastPathComponent().appendingPathComponent("Vectors/vectors.json")
}
