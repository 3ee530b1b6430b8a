// swift-tools-version: 6.1
import PackageDescription
import Foundation

/// Whether to build with an optional system library: `variable`=1 forces it in (the build fails
/// if the library is missing), `variable`=0 leaves it out; unset, whether `header` is installed.
/// SwiftPM caches evaluated manifests keyed by the environment, not the file system, so after
/// installing a library either set its variable to 1 once or build with `--manifest-cache none`.
let environment = ProcessInfo.processInfo.environment
func buildsWith(_ variable: String, header: String) -> Bool {
    switch environment[variable] {
    case "1": return true
    case "0": return false
    default: return ["/usr/include/", "/usr/local/include/"].contains { FileManager.default.fileExists(atPath: $0 + header) }
    }
}

// The io_uring backend needs liburing (Debian: liburing-dev).
let withIOUring = buildsWith("P2PQ_IO_URING", header: "liburing.h")
// The transport cipher's ChaCha20-Poly1305 comes from the system's OpenSSL 3 (Debian: libssl-dev)
// when it is there: 1.4-1.7x the speed of swift-crypto's vendored BoringSSL here (AVX-512).
// Without it, BoringSSL alone.
let withOpenSSL = buildsWith("P2PQ_OPENSSL", header: "openssl/evp.h")

var extraTargets: [Target] = []
/// Adds the system-library module `name` (in `Sources/<name>`) and makes `dependencies` use it,
/// with `define` set for the code that imports it.
@MainActor func useSystemLibrary(
    _ name: String, pkgConfig: String, apt: String, define: String,
    in dependencies: inout [Target.Dependency], _ settings: inout [SwiftSetting]
) {
    dependencies.append(.target(name: name))
    settings.append(.define(define))
    extraTargets.append(.systemLibrary(name: name, path: "Sources/\(name)", pkgConfig: pkgConfig, providers: [.apt([apt])]))
}

var reactorDependencies: [Target.Dependency] = [
    "CP2PQSystem",
    .product(name: "DequeModule", package: "swift-collections"),
]
var reactorSettings: [SwiftSetting] = []
if withIOUring {
    useSystemLibrary("CP2PQLiburing", pkgConfig: "liburing", apt: "liburing-dev", define: "P2PQ_IO_URING",
                     in: &reactorDependencies, &reactorSettings)
}

var noiseDependencies: [Target.Dependency] = ["CP2PQAEAD", .product(name: "Crypto", package: "swift-crypto")]
var noiseSettings: [SwiftSetting] = []
if withOpenSSL {
    useSystemLibrary("CP2PQOpenSSL", pkgConfig: "libcrypto", apt: "libssl-dev", define: "P2PQ_OPENSSL",
                     in: &noiseDependencies, &noiseSettings)
}

let package = Package(
    name: "p2pqueue-swift",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "P2PQReactor", targets: ["P2PQReactor"]),
        .library(name: "P2PQNoise", targets: ["P2PQNoise"]),
        .library(name: "P2PQWire", targets: ["P2PQWire"]),
        .library(name: "P2PQLink", targets: ["P2PQLink"]),
        .library(name: "P2PQMembership", targets: ["P2PQMembership"]),
        // The one product an application depends on: `import P2PQNode` brings every type of
        // its API (docs/api.md). The others are its layers, for tools and experiments.
        .library(name: "P2PQNode", targets: ["P2PQNode"]),
        .library(name: "P2PQOperations", targets: ["P2PQOperations"]),
        .library(name: "P2PQQueue", targets: ["P2PQQueue"]),
        .library(name: "P2PQWorkloads", targets: ["P2PQWorkloads"]),
        .library(name: "P2PQCodable", targets: ["P2PQCodable"]),
        .library(name: "P2PQSimulation", targets: ["P2PQSimulation"]),
        .executable(name: "p2pq", targets: ["p2pq"]),
        .executable(name: "p2pq-simulate", targets: ["p2pq-simulate"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.4.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.65.0"),
    ],
    targets: extraTargets + [
        // C declarations Glibc does not import into Swift: epoll, eventfd, timerfd, mmsghdr.
        .target(name: "CP2PQSystem", path: "Sources/CP2PQSystem"),
        // The single-threaded event loop, its two backends (epoll, io_uring) and its sockets.
        .target(
            name: "P2PQReactor",
            dependencies: reactorDependencies,
            path: "Sources/P2PQReactor",
            swiftSettings: reactorSettings
        ),
        // The Noise protocol framework (handshake patterns, PSK modifiers, transport ciphers) as
        // plain values on swift-crypto; the peer links run Noise_XXpsk0_25519_ChaChaPoly_SHA256.
        .target(
            name: "P2PQNoise",
            dependencies: noiseDependencies,
            path: "Sources/P2PQNoise",
            swiftSettings: noiseSettings
        ),
        // Seal/open straight into caller memory through the BoringSSL that swift-crypto links
        // in (weak references: absent, P2PQNoise falls back to swift-crypto's API).
        .target(name: "CP2PQAEAD", path: "Sources/CP2PQAEAD"),
        // The sans-I/O wire codec: records, messages, link-level message bodies. Standard
        // library only, so every layer can use it.
        .target(name: "P2PQWire", path: "Sources/P2PQWire"),
        // libFuzzer entry for the wire decoders; without -DP2PQ_FUZZ it replays corpus files,
        // so a plain build always links. See Fuzz/run-fuzz.sh.
        .executableTarget(
            name: "P2PQWireFuzz",
            dependencies: ["P2PQWire", "P2PQMembership", "P2PQFuzzSupport"],
            path: "Sources/P2PQWireFuzz"
        ),
        // mDNS / DNS-SD discovery as plain values: the DNS codec and the responder and browser
        // state machine. Standard library only.
        .target(name: "P2PQDiscovery", path: "Sources/P2PQDiscovery"),
        // libFuzzer entry for the DNS decoder.
        .executableTarget(
            name: "P2PQDNSFuzz",
            dependencies: ["P2PQDiscovery", "P2PQWire", "P2PQFuzzSupport"],
            path: "Sources/P2PQDNSFuzz"
        ),
        // The main program the fuzz targets share (libFuzzer driver, or corpus replay).
        .target(name: "P2PQFuzzSupport", dependencies: ["P2PQWire"], path: "Sources/P2PQFuzzSupport"),
        // libFuzzer entry for the link handshake and record layer.
        .executableTarget(
            name: "P2PQLinkFuzz",
            dependencies: ["P2PQLink", "P2PQWire", "P2PQFuzzSupport"],
            path: "Sources/P2PQLinkFuzz"
        ),
        // Peer links as plain values: identity and keys, the Noise handshake over records,
        // record encryption and rekeying.
        .target(
            name: "P2PQLink",
            dependencies: [
                "P2PQWire", "P2PQNoise",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/P2PQLink"
        ),
        // The peer-link policy as a plain value: one link per pair, reconnect with backoff,
        // keepalives, peer exchange, max peers.
        .target(name: "P2PQConnectionManager", path: "Sources/P2PQConnectionManager"),
        // SWIM membership with Lifeguard's refinements as a plain value: probes, suspicion,
        // gossip; its messages (types 0x10-0x1F) and their codec.
        .target(name: "P2PQMembership", dependencies: ["P2PQWire"], path: "Sources/P2PQMembership"),
        // Remote calls as plain values: the call item and messages, the caller's and the
        // executor's state machines (slots, nested calls, retries, memo caches).
        .target(
            name: "P2PQRemoteCall",
            dependencies: ["P2PQWire", .product(name: "HeapModule", package: "swift-collections")],
            path: "Sources/P2PQRemoteCall"
        ),
        // The distributed queue as plain values: the local FIFO, transfers, ownership records,
        // the balancer, and the queue's wire messages.
        .target(
            name: "P2PQQueue",
            dependencies: ["P2PQWire", .product(name: "DequeModule", package: "swift-collections")],
            path: "Sources/P2PQQueue"
        ),
        // The node's own decisions as plain values: NodeMachine (connection manager, membership
        // and the routing of peer events to the layers), the link stages after the handshake.
        // Standard library only.
        .target(name: "P2PQNodeMachine", dependencies: ["P2PQWire", "P2PQConnectionManager", "P2PQMembership", "P2PQQueue",
                                                   "P2PQRemoteCall"],
                path: "Sources/P2PQNodeMachine"),
        // The node shell: connects the link sessions and the connection manager to the reactor,
        // behind a Sendable async API.
        .target(
            name: "P2PQNode",
            dependencies: [
                "P2PQReactor", "P2PQWire", "P2PQLink", "P2PQConnectionManager", "P2PQDiscovery", "P2PQMembership", "P2PQQueue",
                "P2PQRemoteCall", "P2PQCodable", "P2PQNodeMachine", "CP2PQSystem",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/P2PQNode"
        ),
        // The operations endpoint (/metrics, /status, queue routes) on Hummingbird 2: its own
        // event loop threads, reaching the node only through its public async API.
        .target(
            name: "P2PQOperations",
            dependencies: [
                "P2PQNode", "P2PQLink",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/P2PQOperations"
        ),
        // Whole node machines (NodeMachine, the type real nodes run) on a virtual clock and an
        // in-memory network, with crashes, pauses, restarts and partitions, driven by one seed
        // (docs/simulation.md). `p2pq simulate` runs it.
        .target(
            name: "P2PQSimulation",
            dependencies: ["P2PQNodeMachine", "P2PQConnectionManager", "P2PQMembership", "P2PQQueue", "P2PQRemoteCall", "P2PQWire",
                           .product(name: "HeapModule", package: "swift-collections")],
            path: "Sources/P2PQSimulation"
        ),
        // What the test targets share: the seeded generator (P2PQWire's SplitMix64), the
        // simulations' event queue and trace hash (P2PQSimulation's), all re-exported, and the
        // child-process runner of the determinism tests. A plain target, so only tests link it.
        .target(
            name: "P2PQTestSupport",
            dependencies: ["P2PQWire", "P2PQSimulation"],
            path: "Tests/P2PQTestSupport"
        ),
        .testTarget(
            name: "P2PQOperationsTests",
            dependencies: [
                "P2PQOperations", "P2PQNode", "P2PQLink", "P2PQTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Tests/P2PQOperationsTests"
        ),
        // Benchmark workloads shared by `p2pq bench` and the ordo-one suite in Benchmarks/.
        .target(
            name: "P2PQWorkloads",
            dependencies: ["P2PQReactor", "P2PQWire", "P2PQNoise", "P2PQLink", "P2PQNode", "P2PQQueue", "P2PQRemoteCall"],
            path: "Sources/P2PQWorkloads"
        ),
        .executableTarget(
            name: "p2pq",
            dependencies: [
                "P2PQReactor",
                "P2PQWorkloads",
                "P2PQQueue",
                "P2PQNode",
                "P2PQOperations",
                "P2PQLink",
                "P2PQRemoteCall",
                "P2PQSimulationCommand",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/p2pq"
        ),
        // `p2pq simulate` as a command of its own, and as an executable that needs only the
        // machines: its release build skips the network stack (NIO, Hummingbird, crypto), a few
        // minutes instead of the whole p2pq's ten on 2 cores; CI sweeps its seeds with it.
        .target(
            name: "P2PQSimulationCommand",
            dependencies: ["P2PQSimulation", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/P2PQSimulationCommand"
        ),
        .executableTarget(name: "p2pq-simulate", dependencies: ["P2PQSimulationCommand"], path: "Sources/p2pq-simulate"),
        // A service that embeds a node next to its own service (swift-service-lifecycle). It is
        // also a package of its own (Examples/EmbeddedService/Package.swift, which CI builds)
        // that depends on the P2PQNode product by path, as an application does; built here
        // too so that its test runs in every `swift test`.
        .executableTarget(
            name: "EmbeddedService",
            dependencies: ["P2PQNode"],
            path: "Examples/EmbeddedService/Sources/EmbeddedService"
        ),
        .testTarget(
            name: "P2PQReactorTests",
            dependencies: ["P2PQReactor"],
            path: "Tests/P2PQReactorTests"
        ),
        .testTarget(
            name: "P2PQWireTests",
            dependencies: ["P2PQWire"],
            path: "Tests/P2PQWireTests"
        ),
        .testTarget(
            name: "P2PQLinkTests",
            dependencies: ["P2PQLink", "P2PQWire", "P2PQNoise"],
            path: "Tests/P2PQLinkTests"
        ),
        .testTarget(
            name: "P2PQConnectionManagerTests",
            dependencies: ["P2PQConnectionManager", "P2PQTestSupport"],
            path: "Tests/P2PQConnectionManagerTests"
        ),
        .testTarget(
            name: "P2PQNodeMachineTests",
            // P2PQLink and P2PQNoise: real link sessions under the machines (NodeHandshakeTests).
            dependencies: ["P2PQNodeMachine", "P2PQConnectionManager", "P2PQMembership", "P2PQQueue", "P2PQRemoteCall",
                           "P2PQWire", "P2PQSimulation", "P2PQTestSupport", "P2PQLink", "P2PQNoise"],
            path: "Tests/P2PQNodeMachineTests"
        ),
        .testTarget(
            name: "P2PQNodeTests",
            dependencies: [
                "P2PQNode", "P2PQNodeMachine", "P2PQLink", "P2PQWire", "P2PQReactor", "P2PQMembership", "P2PQQueue",
                "P2PQRemoteCall", "P2PQWorkloads", "P2PQOperations",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/P2PQNodeTests"
        ),
        // Compact binary Codable encoding for typed queue items and remote-call arguments
        // (docs/encoding.md).
        .target(name: "P2PQCodable", path: "Sources/P2PQCodable"),
        // libFuzzer entry for the compact Codable decoder (Fuzz/run-fuzz.sh codable).
        .executableTarget(
            name: "P2PQCodableFuzz",
            dependencies: ["P2PQCodable", "P2PQFuzzSupport"],
            path: "Sources/P2PQCodableFuzz"
        ),
        // libFuzzer entry for the queue message decoders (Fuzz/run-fuzz.sh queue).
        .executableTarget(
            name: "P2PQQueueFuzz",
            dependencies: ["P2PQQueue", "P2PQWire", "P2PQFuzzSupport"],
            path: "Sources/P2PQQueueFuzz"
        ),
        // libFuzzer entry for the remote-call decoders: messages 0x40-0x44 and call items
        // (Fuzz/run-fuzz.sh rpc).
        .executableTarget(
            name: "P2PQRemoteCallFuzz",
            dependencies: ["P2PQRemoteCall", "P2PQWire", "P2PQFuzzSupport"],
            path: "Sources/P2PQRemoteCallFuzz"
        ),
        .testTarget(
            name: "P2PQCodableTests",
            dependencies: ["P2PQCodable", "P2PQTestSupport"],
            path: "Tests/P2PQCodableTests"
        ),
        .testTarget(
            name: "P2PQDiscoveryTests",
            dependencies: ["P2PQDiscovery", "P2PQTestSupport"],
            path: "Tests/P2PQDiscoveryTests"
        ),
        .testTarget(
            name: "P2PQMembershipTests",
            dependencies: ["P2PQMembership", "P2PQWire", "P2PQTestSupport"],
            path: "Tests/P2PQMembershipTests"
        ),
        .testTarget(
            name: "P2PQRemoteCallTests",
            dependencies: ["P2PQRemoteCall", "P2PQWire"],
            path: "Tests/P2PQRemoteCallTests"
        ),
        .testTarget(
            name: "P2PQQueueTests",
            dependencies: ["P2PQQueue", "P2PQWire", "P2PQTestSupport"],
            path: "Tests/P2PQQueueTests"
        ),
        .testTarget(
            name: "P2PQNoiseTests",
            dependencies: ["P2PQNoise"],
            path: "Tests/P2PQNoiseTests",
            // Read through #filePath, so the tests need no resource bundle.
            exclude: ["Vectors"],
            swiftSettings: withOpenSSL ? [.define("P2PQ_OPENSSL_TESTS")] : []
        ),
    ]
)
