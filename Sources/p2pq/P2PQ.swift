import ArgumentParser
import Glibc
import P2PQReactor
import P2PQQueue
import P2PQWorkloads

@main
struct P2PQ: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2pq",
        abstract: "A peer-to-peer work queue and remote-call engine on its own epoll/io_uring reactor.",
        discussion: "Logs go to standard error. Exit status:\n" + CLIError.exitStatusHelp,
        subcommands: [DemoCommand.self, NodeCommand.self, KeygenCommand.self, StatusCommand.self, PushCommand.self, PopCommand.self,
                      AckCommand.self, NackCommand.self,
                      QueueExampleCommand.self, FibCommand.self, PiCommand.self, Bench.self,
                      WorkloadCommand.self, CheckCommand.self]
    )

    static func main() async { await CLIMain.run() }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a benchmark workload and print one JSON object per run.",
        subcommands: [ReactorBench.self, LinkBench.self, CipherBench.self, QueueStreamBench.self, QueueBalanceBench.self, QueueMachineBench.self, CallMachineBench.self, TaskFloorBench.self,
                      RPCBench.self, QueueStreamRole.self],
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

struct LinkBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link",
        abstract: "The reactor stream carried over peer links: raw, insecure link, Noise link, side by side."
    )

    @OptionGroup var options: StreamOptions

    @Option(help: "Which streams: raw, insecure, noise, noise-aesgcm or all (all but noise-aesgcm). Repeatable.")
    var mode: [String] = ["all"]

    func validate() throws {
        for m in mode where !["raw", "insecure", "noise", "noise-aesgcm", "all"].contains(m) {
            throw ValidationError("unknown --mode '\(m)': use raw, insecure, noise, noise-aesgcm or all")
        }
    }

    func run() throws {
        let all = mode.contains("all")
        for size in options.payload {
            for kind in try options.backends() {
                for _ in 0..<options.runs {
                    let count = options.frameCount(size)
                    if all || mode.contains("raw") {
                        print(try ReactorStream.run(backend: kind, payloadSize: size, frames: count).json)
                    }
                    if all || mode.contains("insecure") {
                        print(try LinkStream.run(backend: kind, payloadSize: size, frames: count, secure: false).json)
                    }
                    if all || mode.contains("noise") {
                        print(try LinkStream.run(backend: kind, payloadSize: size, frames: count, secure: true).json)
                    }
                    if mode.contains("noise-aesgcm") {
                        print(try LinkStream.run(backend: kind, payloadSize: size, frames: count, secure: true, cipher: .aesGCM).json)
                    }
                    fflush(nil)
                }
            }
        }
    }
}

struct CipherBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cipher",
        abstract: "The link's transport cipher alone on one core: seal and open speed (thread CPU time)."
    )

    @Option(help: "Noise cipher: ChaChaPoly (the links') or AESGCM (for comparison).")
    var cipher: String = "ChaChaPoly"

    @Option(help: "Plaintext bytes per record (default: a full link record).")
    var record: Int = 64 * 1024 - 18

    @Option(help: "Records per run.")
    var records: Int = 100_000

    @Option(help: "Runs.")
    var runs: Int = 3

    func run() throws {
        for _ in 0..<max(1, runs) {
            print(try CipherSpeed.run(cipher: cipher, recordSize: record, records: max(1, records)).json)
            fflush(nil)
        }
    }
}

struct QueueMachineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue-machine",
        abstract: "W1's two queue state machines alone, one thread, through the wire encoding: CPU ns per item on each side."
    )

    @Option(help: "Payload bytes per item. Repeatable.")
    var payload: [Int] = [64, 1024]

    @Option(help: "Items per run.")
    var items: Int = 2_000_000

    @Option(help: "Items per push and per pop.")
    var batch: Int = 4096

    @Option(help: "Runs per payload size.")
    var runs: Int = 3

    @Flag(help: "At-most-once delivery (no ownership records or pop confirmations).")
    var atMostOnce = false

    func run() throws {
        var configuration = QueueConfiguration()
        if atMostOnce { configuration.delivery = .atMostOnce }
        for size in payload {
            for _ in 0..<max(1, runs) {
                print(try QueueMachineCycle.run(items: max(1, items), payloadSize: max(8, size), batch: max(1, batch), configuration: configuration).json)
                fflush(nil)
            }
        }
    }
}

struct TaskFloorBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "task-floor",
        abstract: "What Swift concurrency alone costs per task started and per task hop, on the global executor and on a reactor: the floor under W2 (JSON per run)."
    )

    @Option(help: "Units (tasks started, or hops) per measurement.")
    var units: Int = 1_000_000

    @Option(help: "Units outstanding at once (W2 keeps 256 calls in flight).")
    var inFlight: Int = 256

    @Option(help: "Runs on each executor.")
    var runs: Int = 3

    func validate() throws {
        guard (1...100_000_000).contains(units) else { throw ValidationError("--units must be between 1 and 100,000,000") }
        guard (1...65_536).contains(inFlight) else { throw ValidationError("--in-flight must be between 1 and 65,536") }
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be between 1 and 100") }
    }

    func run() async throws {
        for onReactor in [false, true] {
            for _ in 0..<runs {
                print(try await TaskFloor.run(units: units, inFlight: inFlight, onReactor: onReactor).json)
                fflush(nil)
            }
        }
    }
}

struct CallMachineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call-machine",
        abstract: "W2b's caller and executor machines alone, one thread, inline echo, through the wire encoding: CPU ns per call on each side."
    )

    @Option(help: "Calls per run.")
    var calls: Int = 1_000_000

    @Option(help: "Calls outstanding at once.")
    var inFlight: Int = 256

    @Option(help: "Calls per caller input (1: one call at a time, as separate tasks make them). Repeatable.")
    var batch: [Int] = [1, 32]

    @Option(help: "Runs per batch size.")
    var runs: Int = 3

    func run() throws {
        for size in batch {
            for _ in 0..<max(1, runs) {
                print(try CallMachineCycle.run(calls: max(1, calls), inFlight: max(1, inFlight), batch: max(1, size)).json)
                fflush(nil)
            }
        }
    }
}

struct ReactorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reactor",
        abstract: "Stream length-prefixed frames over loopback TCP between two reactors."
    )

    @OptionGroup var options: StreamOptions

    func run() throws {
        for size in options.payload {
            for kind in try options.backends() {
                for _ in 0..<options.runs {
                    print(try ReactorStream.run(backend: kind, payloadSize: size, frames: options.frameCount(size)).json)
                }
            }
        }
    }
}
