import ArgumentParser
import Foundation
import Logging

/// A failure at run time (not a wrong command line): `p2pq` prints one line to standard error
/// and exits with the kind's code. Command-line mistakes stay ArgumentParser's
/// `ValidationError`s (usage text, exit 64).
struct CLIError: Error, CustomStringConvertible {
    /// What went wrong, as scripts tell it apart by exit status (codes from sysexits.h).
    enum Kind: Int32, CaseIterable {
        /// `p2pq pop`: no item came within the timeout.
        case nothingPopped = 3
        /// The node (or the address asked for) answered an error for the request: bad
        /// request, queue closed, too large, too many queues (HTTP 4xx other than 401/403).
        case refused = 65
        /// The node could not be reached: nothing listens there, connection reset, timed out.
        case unreachable = 69
        /// The node failed the request (HTTP 5xx), or the command failed while running.
        case failed = 70
        /// A node could not start: port taken, host name unresolvable, backend unavailable.
        case cannotStart = 71
        /// A key or token was refused: unreadable or malformed key file, key file readable
        /// by others, HTTP 401/403.
        case keyRefused = 77

        var summary: String {
            switch self {
            case .nothingPopped: return "pop: no item within the timeout"
            case .refused: return "the node refused the request (HTTP 4xx)"
            case .unreachable: return "the node could not be reached"
            case .failed: return "the node failed the request (HTTP 5xx), or the command failed"
            case .cannotStart: return "the node could not start (address in use, unresolvable host, ...)"
            case .keyRefused: return "a key file or token was refused (unreadable, malformed, readable by others, HTTP 401/403)"
            }
        }
    }

    let kind: Kind
    let message: String

    init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    var description: String { message }

    /// The kind for an HTTP status other than 200.
    static func kind(forHTTPStatus status: Int) -> Kind {
        switch status {
        case 401, 403: return .keyRefused
        case 400..<500: return .refused
        default: return .failed
        }
    }

    /// The exit statuses, for `--help` and docs/operations.md.
    static var exitStatusHelp: String {
        (["0: success", "64: the command line is wrong (with the usage text)"]
            + Kind.allCases.map { "\($0.rawValue): \($0.summary)" })
            .sorted { Int($0.prefix { $0.isNumber })! < Int($1.prefix { $0.isNumber })! }
            .joined(separator: "\n")
    }
}

/// Where `p2pq` starts: logs go to standard error, runtime failures become one line and
/// their exit status.
enum CLIMain {
    static func run() async {
        // swift-log's default handler writes to standard output, where `p2pq node` prints
        // its machine-readable lines and `p2pq pop` its items.
        LoggingSystem.bootstrap { label in StreamLogHandler.standardError(label: label) }
        ParentWatch.startIfRequested()
        do {
            var command = try P2PQ.parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("p2pq: \(error.message)\n".utf8))
            exit(error.kind.rawValue)
        } catch {
            // ArgumentParser's own errors (usage, help, explicit exit codes) keep their meaning;
            // any other error is a failure at run time, not a wrong command line.
            if !(error is ExitCode), P2PQ.exitCode(for: error) == .failure {
                FileHandle.standardError.write(Data("p2pq: \(error)\n".utf8))
                exit(CLIError.Kind.failed.rawValue)
            }
            P2PQ.exit(withError: error)
        }
        exit(0)
    }
}
