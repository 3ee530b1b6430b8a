import ArgumentParser
import P2PQReactor
import P2PQWorkloads

@main
struct P2PQ: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2pq",
        abstract: "A peer-to-peer work queue and remote-call engine on its own epoll/io_uring reactor.",
        subcommands: [NodeCommand.self, KeygenCommand.self, Bench.self]
    )
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a benchmark workload and print one JSON object per run.",
        subcommands: [ReactorBench.self],
        defaultSubcommand: ReactorBench.self
    )
}

struct ReactorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reactor",
        abstract: "Stream length-prefixed frames over loopback TCP between two reactors."
    )

    @Option(help: "Backend: epoll, io_uring or all (each compiled-in backend).")
    var backend: String = "all"

    @Option(help: "Payload bytes per frame (a 4-byte length prefix is added). Repeatable.")
    var payload: [Int] = [64, 1024]

    @Option(help: "Frames per run (default: 20,000,000 for payloads up to 256 bytes, else 4,000,000).")
    var frames: Int?

    @Option(help: "Runs per configuration.")
    var runs: Int = 3

    func validate() throws {
        guard runs >= 1 && runs <= 100 else { throw ValidationError("--runs must be between 1 and 100") }
        guard payload.allSatisfy({ $0 >= 0 && $0 <= 16 << 20 }) else {
            throw ValidationError("--payload must be between 0 and 16 MiB")
        }
        if let frames, frames < 1 || frames > 1_000_000_000 {
            throw ValidationError("--frames must be between 1 and 1,000,000,000")
        }
    }

    func run() throws {
        let backends: [ReactorBackendKind]
        switch backend.lowercased() {
        case "all": backends = ReactorBackendKind.allCases.filter(\.isCompiledIn)
        case "epoll": backends = [.epoll]
        case "io_uring", "iouring", "uring": backends = [.ioUring]
        default: throw ValidationError("unknown backend '\(backend)': use epoll, io_uring or all")
        }
        for size in payload {
            for kind in backends {
                for _ in 0..<runs {
                    let count = frames ?? (size <= 256 ? 20_000_000 : 4_000_000)
                    let result = try ReactorStream.run(backend: kind, payloadSize: size, frames: count)
                    print(result.json)
                }
            }
        }
    }
}
