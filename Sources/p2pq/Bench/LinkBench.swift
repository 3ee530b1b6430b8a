import ArgumentParser
import Glibc
import P2PQReactor
import P2PQQueue
import P2PQWorkloads

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
