// Checks and corpus writing shared by the fuzz targets.

import P2PQWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes `body` as a message of `type` and, when it decodes, checks what every wire message
/// must satisfy: it has that type, validates, encodes, reports an exact `bodySize`, and comes
/// back unchanged through encode and decode. Crashes (for the fuzzer) on a violation.
///
/// - Returns: the decoded message, or nil if the body does not decode.
@discardableResult
public func checkMessageRoundTrip<M: WireMessage & WireDecodable & Equatable>(
    _: M.Type, type: MessageType, body: UnsafeRawBufferPointer
) -> M? {
    let result = Result { () throws(WireError) in try M.decode(type: type, body: body) }
    guard case .success(let message) = result else { return nil }
    precondition(message.messageType == type, "decoded a \(message.messageType) from a \(type) body")
    if case .failure(let error) = Result(catching: { () throws(WireError) in try message.validate() }) {
        fatalError("a decoded \(type) does not validate: \(error)")
    }
    var frame: [UInt8] = []
    if case .failure(let error) = Result(catching: { () throws(WireError) in try MessageEncoder.encode(message, into: &frame, maxFrameSize: 1 << 24) }) {
        fatalError("a decoded \(type) does not encode: \(error)")
    }
    precondition(frame.count == 5 + message.bodySize, "bodySize of a \(type) is not exact")
    let again = Array(frame.dropFirst(5)).withUnsafeBytes { bytes in
        Result { () throws(WireError) in try M.decode(type: type, body: bytes) }
    }
    guard case .success(let decoded) = again else { fatalError("the encoding of a decoded \(type) does not decode") }
    precondition(decoded == message, "a \(type) changed through encode and decode")
    return message
}

/// With the arguments `--write-corpus <dir>`, writes each seed to `<dir>/<name>` and exits;
/// otherwise returns.
public func writeCorpusIfAsked(_ seeds: () throws -> [(name: String, bytes: [UInt8])]) rethrows {
    guard CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-corpus" else { return }
    let directory = CommandLine.arguments[2]
    let all = try seeds()
    for seed in all {
        guard let file = fopen(directory + "/" + seed.name, "wb") else { fatalError("cannot write \(directory)/\(seed.name)") }
        _ = seed.bytes.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }
    print("wrote \(all.count) seeds to \(directory)")
    exit(0)
}
