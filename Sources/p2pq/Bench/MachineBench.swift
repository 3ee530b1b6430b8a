import ArgumentParser
import Glibc
import P2PQReactor
import P2PQQueue
import P2PQWorkloads

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
