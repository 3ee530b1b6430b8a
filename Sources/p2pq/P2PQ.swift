import ArgumentParser
import P2PQSimulationCommand

@main
struct P2PQ: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2pq",
        abstract: "A peer-to-peer work queue and remote-call engine on its own epoll/io_uring reactor.",
        discussion: "Logs go to standard error. Exit status:\n" + CLIError.exitStatusHelp,
        subcommands: [DemoCommand.self, NodeCommand.self, KeygenCommand.self, StatusCommand.self, PushCommand.self, PopCommand.self,
                      AckCommand.self, NackCommand.self,
                      QueueExampleCommand.self, FibCommand.self, PiCommand.self, Bench.self,
                      WorkloadCommand.self, CheckCommand.self, SimulateCommand.self]
    )

    static func main() async { await CLIMain.run() }
}
