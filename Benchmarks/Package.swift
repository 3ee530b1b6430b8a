// swift-tools-version: 6.1
// The ordo-one/benchmark suite, kept in its own package so that `swift build` and `swift test`
// of the main package never compile the benchmark harness. Run from this folder:
//   swift package benchmark
import PackageDescription

// A path dependency's identity is its folder's name, which depends on where the repository
// was cloned.
let root = Context.packageDirectory.split(separator: "/").dropLast().last.map(String.init) ?? "main"

let package = Package(
    name: "p2pqueue-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "ReactorStream",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "P2PQReactor", package: root),
                .product(name: "P2PQWorkloads", package: root),
            ],
            path: "ReactorStream",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "MachineCycles",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "P2PQQueue", package: root),
                .product(name: "P2PQWorkloads", package: root),
            ],
            path: "MachineCycles",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
