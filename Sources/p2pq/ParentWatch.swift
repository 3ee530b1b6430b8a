import Foundation
import Glibc

/// With `P2PQ_EXIT_WITH_PARENT=1` in its environment, a `p2pq` process stops itself (SIGTERM to
/// its own PID, so a node still hands its items on) once the process that started it is gone.
/// The test suite and `p2pq demo`/`bench` set it for their children: a test process that crashes
/// or is killed must not leave node processes running. It is a watch, not
/// `PR_SET_PDEATHSIG`: that signal fires when the parent *thread* exits, and the threads that
/// start children (Swift's pool) are not the parent process's lifetime.
enum ParentWatch {
    static let variable = "P2PQ_EXIT_WITH_PARENT"

    static func startIfRequested() {
        guard ProcessInfo.processInfo.environment[variable] == "1" else { return }
        let parent = getppid()
        // Started by a process that is already gone (re-parented before this line ran).
        guard parent > 1 else { kill(getpid(), SIGTERM); return }
        let thread = Thread {
            while getppid() == parent { usleep(250_000) }
            FileHandle.standardError.write(Data("p2pq: the parent process (\(parent)) is gone; stopping (\(variable)=1)\n".utf8))
            kill(getpid(), SIGTERM)
            // A command that ignores SIGTERM or hangs in its stop is ended 30 s later.
            sleep(30)
            _exit(CLIError.Kind.failed.rawValue)
        }
        thread.name = "p2pq-parent-watch"
        thread.start()
    }

    /// This process's environment with the watch turned on, for a child process.
    static var childEnvironment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment[variable] = "1"
        return environment
    }
}
