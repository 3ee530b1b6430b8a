// swift-tools-version: 6.1
// An application that embeds a p2pqueue node, depending on the library as a user's package
// does: one product, P2PQNode, and one import. In your own package use the repository's URL:
//   .package(url: "https://github.com/<owner>/p2pqueue-swift.git", branch: "main")
import PackageDescription

let package = Package(
    name: "EmbeddedService",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "p2pqueue-swift", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "EmbeddedService",
            dependencies: [.product(name: "P2PQNode", package: "p2pqueue-swift")]
        ),
    ]
)
