import Foundation
import Testing
@testable import P2PQWire

/// The fuzzer's seed corpus (Fuzz/corpus/wire) is generated here, so it stays in step with the
/// format. `P2PQ_WRITE_CORPUS=1 swift test --filter Corpus` rewrites the files; otherwise the
/// test checks the committed files are exactly what the generator makes.
///
/// Each file is one selector byte (low nibble: chunking; high nibble: frame limit, see
/// Sources/P2PQWireFuzz/main.swift) followed by the stream.
@Suite("Fuzz seed corpus")
struct CorpusTests {
    static let corpusDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/corpus/wire")

    /// Selectors: high nibble 0 → limit 512, 3 → 1 MiB; low nibble 0 → whole, 1 → bytewise,
    /// 5 → small random chunks, 0xA/0xB → larger random chunks.
    static func seeds() throws -> [(name: String, bytes: [UInt8])] {
        let hello = LinkMessage.hello(Hello(peerID: samplePeerID, listenPort: 7946, listenHost: "10.0.0.7", incarnation: 1_700_000_000, features: 3))
        let ping = LinkMessage.ping(nonce: 0x0102_0304_0506_0708, sentAt: 5_000_000_000)
        let pong = LinkMessage.pong(nonce: 0x0102_0304_0506_0708, sentAt: 5_000_000_000)
        let goodbye = LinkMessage.goodbye(reason: .protocolError, detail: "frame too large: declared 2000000 bytes")
        let peers = LinkMessage.peers([
            PeerAddress(peerID: samplePeerID, host: "10.0.0.1", port: 9000),
            PeerAddress(peerID: otherPeerID, host: "node-b.example", port: 9001),
            PeerAddress(peerID: samplePeerID, host: "fe80::1", port: 1),
        ])
        // A body over a kilobyte, cut by random chunks: exercises reassembly mid-body.
        let largePeers = LinkMessage.peers((0..<28).map {
            PeerAddress(peerID: $0 % 2 == 0 ? samplePeerID : otherPeerID, host: "node-\($0).cluster.example", port: UInt16(9000 + $0))
        })
        var all: [UInt8] = []
        for message in [hello, ping, pong, goodbye, peers] { try message.encode(into: &all) }
        func records(_ stream: [UInt8], size: Int) throws -> [UInt8] {
            var out: [UInt8] = []
            try stream.withUnsafeBytes { raw in try RecordEncoder.encodeRecords(carrying: raw, maxBodySize: size, into: &out) }
            return out
        }
        return [
            ("hello", [0x30] + (try hello.encoded())),
            ("ping", [0x31] + (try ping.encoded())),
            ("pong", [0x05] + (try pong.encoded())),
            ("goodbye", [0x3A] + (try goodbye.encoded())),
            ("peers", [0x35] + (try peers.encoded())),
            ("all-link-messages", [0x30] + all),
            ("all-link-messages-bytewise", [0x01] + all),
            ("records-of-7-bytes", [0x35] + (try records(all, size: 7))),
            ("records-single", [0x3A] + (try records(all, size: 65_535))),
            ("peers-large-chunked", [0x3B] + (try largePeers.encoded())),
            ("frame-at-limit-512", [0x0A] + frame(0x04, [0] + lengthPrefixed("") + [UInt8](repeating: 0x20, count: 506))),
            ("bad-frame-too-large", [0x00] + be32(513) + [0x02] + [UInt8](repeating: 0, count: 16)),
            ("bad-empty-frame", [0x30] + (try ping.encoded()) + [0, 0, 0, 0, 2]),
            ("bad-unknown-type", [0x30] + frame(0x10, [1, 2, 3])),
            ("bad-truncated-hello", [0x31] + frame(0x01, Array((try hello.encoded()).dropFirst(5).prefix(40)))),
            ("bad-utf8-goodbye", [0x30] + frame(0x04, [1] + lengthPrefixed([0x61, 0xC0, 0xAF]))),
            ("bad-peers-count", [0x30] + frame(0x05, be16(1025))),
            ("bad-trailing-bytes", [0x30] + frame(0x02, be64(1) + be64(2) + [0xFF])),
            ("bad-empty-record", [0x30] + [0, 3, 0, 0, 0, 0, 0]),
            ("operations", [0x31] + (try LinkMessage.operations(host: "10.0.0.7", port: 9100).encoded())),
            ("bad-operations-port-0", [0x30] + frame(0x06, lengthPrefixed("10.0.0.7") + be16(0))),
        ]
    }

    @Test("The committed seed corpus matches the generator")
    func corpusIsCurrent() throws {
        let seeds = try Self.seeds()
        if ProcessInfo.processInfo.environment["P2PQ_WRITE_CORPUS"] == "1" {
            try FileManager.default.createDirectory(at: Self.corpusDirectory, withIntermediateDirectories: true)
            for seed in seeds {
                try Data(seed.bytes).write(to: Self.corpusDirectory.appendingPathComponent(seed.name))
            }
        }
        let committed = try FileManager.default.contentsOfDirectory(atPath: Self.corpusDirectory.path).sorted()
        #expect(committed == seeds.map(\.name).sorted(), "run P2PQ_WRITE_CORPUS=1 swift test --filter Corpus")
        for seed in seeds {
            let data = try? Data(contentsOf: Self.corpusDirectory.appendingPathComponent(seed.name))
            #expect(data.map(Array.init) == seed.bytes, "\(seed.name) is stale")
            #expect(seed.bytes.count < 2048, "\(seed.name) is too large for a seed")
        }
        #expect((10...24).contains(seeds.count))
    }

    @Test("Valid seeds decode; each bad seed fails the way its name says")
    func seedsDecodeAsNamed() throws {
        for seed in try Self.seeds() {
            let stream = Array(seed.bytes.dropFirst())
            let limit = seed.bytes[0] >> 4 == 0 ? 512 : WireProtocol.defaultMaxFrameSize
            let result = Result { () throws(WireError) in
                if seed.name.hasPrefix("records") || seed.name == "bad-empty-record" {
                    let plaintext = Array(try RecordDecoder.decodeAll(stream).joined())
                    return try decodeLinkStream(plaintext, maxFrameSize: limit)
                }
                return try decodeLinkStream(stream, maxFrameSize: limit)
            }
            switch (seed.name.hasPrefix("bad-") || seed.name == "frame-at-limit-512", result) {
            case (false, .success(let messages)): #expect(!messages.isEmpty, "\(seed.name)")
            case (true, .failure): break
            case (let bad, let outcome): Issue.record("\(seed.name): expected \(bad ? "an error" : "success"), got \(outcome)")
            }
        }
    }
}
