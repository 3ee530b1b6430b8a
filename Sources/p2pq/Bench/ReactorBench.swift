import ArgumentParser
import Glibc
import P2PQReactor
import P2PQQueue
import P2PQWorkloads

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
