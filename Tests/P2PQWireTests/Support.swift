import Foundation
import Testing
@testable import P2PQWire

/// Helpers on the seeded generator, so every random test replays from its seed.
extension SplitMix64 {
    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &self) }
    mutating func chance(_ percent: Int) -> Bool { int(0...99) < percent }
    mutating func u64() -> UInt64 { next() }

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
    }

    mutating func peerID() -> PeerID { PeerID(bytes: bytes(32))! }

    /// A string of at most `maxBytes` UTF-8 bytes mixing 1- to 4-byte scalars (NUL included),
    /// sometimes exactly `maxBytes` long.
    mutating func string(minBytes: Int = 0, maxBytes: Int) -> String {
        let pool = ["a", "Z", "0", ".", "-", ":", "\u{0}", "é", "ß", "日", "€", "😀", "𝄞"]
        let target = chance(20) ? maxBytes : int(minBytes...maxBytes)
        var result = ""
        var length = 0
        while length < target {
            var piece = pool[int(0...pool.count - 1)]
            if length + piece.utf8.count > target { piece = "x" }
            result += piece
            length += piece.utf8.count
        }
        return result
    }

    mutating func linkMessage() -> LinkMessage {
        switch int(0...5) {
        case 0:
            return .hello(Hello(
                protocolVersion: WireProtocol.version, peerID: peerID(), listenPort: UInt16(truncatingIfNeeded: next()),
                listenHost: string(maxBytes: WireProtocol.maxHostLength), incarnation: u64(), features: u64()
            ))
        case 1: return .ping(nonce: u64(), sentAt: u64())
        case 2: return .pong(nonce: u64(), sentAt: u64())
        case 5: return .operations(host: string(maxBytes: WireProtocol.maxHostLength), port: UInt16(int(1...65535)))
        case 3:
            return .goodbye(
                reason: GoodbyeReason.allCases[int(0...GoodbyeReason.allCases.count - 1)],
                detail: string(maxBytes: WireProtocol.maxGoodbyeDetailLength)
            )
        default:
            let count = chance(5) ? int(0...WireProtocol.maxPeersPerMessage) : int(0...8)
            return .peers((0..<count).map { _ in
                PeerAddress(peerID: peerID(), host: string(minBytes: 1, maxBytes: WireProtocol.maxHostLength), port: UInt16(int(1...65535)))
            })
        }
    }

    /// Random split points: sizes mostly small (to split headers), sometimes large.
    mutating func chunkSizes(total: Int, style: ChunkStyle) -> [Int] {
        var sizes: [Int] = []
        var left = total
        while left > 0 {
            let size: Int
            switch style {
            case .whole: size = left
            case .bytewise: size = 1
            case .random: size = chance(50) ? int(1...7) : int(1...Swift.max(1, Swift.min(left, 70_000)))
            }
            let taken = Swift.min(size, left)
            sizes.append(taken)
            left -= taken
        }
        return sizes
    }
}

enum ChunkStyle: CaseIterable { case whole, bytewise, random }

/// Seeds for the property tests. Set P2PQ_SEED=<n> to rerun one (a failure prints its seed).
enum Seeds {
    static let all: [UInt64] = {
        if let text = ProcessInfo.processInfo.environment["P2PQ_SEED"], let seed = UInt64(text) { return [seed] }
        return (1...40).map { UInt64($0) &* 0x1000_0001 }
    }()
}

/// Feeds `stream` in chunks of `sizes`, each copied into its own scratch buffer that is
/// scribbled over right after the feed, so a decoder keeping a pointer into an old chunk
/// produces garbage instead of passing by luck.
func feedInChunks(
    _ stream: [UInt8], sizes: [Int],
    _ feed: (UnsafeRawBufferPointer) throws(WireError) -> Void
) throws(WireError) {
    var offset = 0
    for size in sizes {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(size, 1), alignment: 1)
        defer { scratch.deallocate() }
        stream.withUnsafeBytes { source in
            scratch.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + size]))
        }
        let result: Result<Void, WireError> = Result { () throws(WireError) in
            try feed(UnsafeRawBufferPointer(rebasing: scratch[0..<size]))
        }
        scratch.initializeMemory(as: UInt8.self, repeating: 0xEE)
        try result.get()
        offset += size
    }
}

/// Decodes a complete plaintext stream into link messages.
func decodeLinkStream(_ stream: [UInt8], maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) -> [LinkMessage] {
    var decoder = try MessageDecoder(maxFrameSize: maxFrameSize)
    var messages: [LinkMessage] = []
    try stream.withUnsafeBytes { raw in
        Result { () throws(WireError) in
            try decoder.feed(raw) { (type, body) throws(WireError) in
                messages.append(try LinkMessage.decode(type: type, body: body))
            }
        }
    }.get()
    try decoder.finish()
    return messages
}

/// `[u32 L][type][body]` built by hand, independent of MessageEncoder.
func frame(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
    let length = UInt32(body.count + 1)
    return [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type] + body
}

func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
func be32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) } }
func be64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64($0))) } }
func lengthPrefixed(_ bytes: [UInt8]) -> [UInt8] { be32(UInt32(bytes.count)) + bytes }
func lengthPrefixed(_ string: String) -> [UInt8] { lengthPrefixed(Array(string.utf8)) }

func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}

let samplePeerID = PeerID(bytes: (0..<32).map { UInt8($0) })!
let otherPeerID = PeerID(bytes: (0..<32).map { UInt8(0xA0 + $0 % 16) })!
