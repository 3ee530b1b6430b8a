import ArgumentParser
import Glibc
import P2PQReactor
import P2PQQueue
import P2PQWorkloads

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a benchmark workload and print one JSON object per run.",
        subcommands: [ReactorBench.self, LinkBench.self, CipherBench.self, QueueStreamBench.self, QueueBalanceBench.self, QueueMachineBench.self, CallMachineBench.self, TaskFloorBench.self,
                      RPCBench.self, PingPongBench.self, QueueStreamRole.self],
        defaultSubcommand: ReactorBench.self
    )
}

/// Options shared by the stream benchmarks.
struct StreamOptions: ParsableArguments {
    @Option(help: "Backend: epoll, io_uring or all (each compiled-in backend).")
    var backend: String = "all"

    @Option(help: "Payload bytes per frame. Repeatable.")
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

    func backends() throws -> [ReactorBackendKind] {
        switch backend.lowercased() {
        case "all": return ReactorBackendKind.allCases.filter(\.isCompiledIn)
        case "epoll": return [.epoll]
        case "io_uring", "iouring", "uring": return [.ioUring]
        default: throw ValidationError("unknown backend '\(backend)': use epoll, io_uring or all")
        }
    }

    func frameCount(_ payload: Int) -> Int { frames ?? (payload <= 256 ? 20_000_000 : 4_000_000) }
}
