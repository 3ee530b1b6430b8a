import Foundation
@testable import P2PQReactor
import Testing

@Suite("Reactor busy polling")
struct BusyPollTests {
    @Test("A busy-polling loop polls without sleeping for its window after work, then sleeps", arguments: ReactorBackendKind.allCases)
    func pollsThenSleeps(kind: ReactorBackendKind) async throws {
        try await withReactor(kind, configure: { $0.busyPoll = .milliseconds(100) }) { reactor in
            // A submitted closure is work: the window starts when it has run. (Read before:
            // on a loaded machine this task may resume after the window.)
            let start = reactor.emptyPolls
            let turnsAtStart = try await onLoop(reactor) { reactor.turns }
            try await Task.sleep(for: .milliseconds(300))
            let afterWindow = reactor.emptyPolls
            // Thousands on an idle core; a loaded CI core still gives the thread some slices.
            #expect(afterWindow - start >= 10, "the loop slept inside its busy-poll window (\(afterWindow - start) empty polls)")
            // The window has passed and nothing happened since: the loop sleeps, it does not poll.
            try await Task.sleep(for: .milliseconds(200))
            #expect(reactor.emptyPolls == afterWindow, "the loop kept polling after its window")
            // Empty polls are not turns: only the closures submitted here (and the loop's own
            // housekeeping, if any) counted.
            let turnsAfter = try await onLoop(reactor) { reactor.turns }
            #expect(turnsAfter - turnsAtStart < 10, "\(turnsAfter - turnsAtStart) turns counted beside \(afterWindow - start) empty polls")
        }
    }

    @Test("Without busy polling the loop never polls empty", arguments: ReactorBackendKind.allCases)
    func offByDefault(kind: ReactorBackendKind) async throws {
        try await withReactor(kind) { reactor in
            #expect(reactor.configuration.busyPoll == .zero)
            for _ in 0..<20 { try await onLoop(reactor) {} }
            try await Task.sleep(for: .milliseconds(50))
            #expect(reactor.emptyPolls == 0)
        }
    }

    @Test("Echo and a timer while both loops busy-poll", arguments: ReactorBackendKind.allCases)
    func echoWhilePolling(kind: ReactorBackendKind) async throws {
        try await withReactors(kind, configure: { $0.busyPoll = .milliseconds(5) }) { server, client in
            let message = patternBytes(count: 100_000, seed: 7)
            let echo = try await echoed(message, server: server, client: client)
            #expect(echo == message)
            // A timer due after the window has passed fires on a sleeping loop as on a polling one.
            let fired = Promise<Bool>()
            let scheduled = MonotonicTime.now()
            _ = try await onLoop(client) { client.schedule(after: .milliseconds(30)) { fired.fulfill(true) } }
            _ = try await fired.value(within: .seconds(5), "the timer")
            #expect(MonotonicTime.now() - scheduled >= .milliseconds(30))
        }
    }
}
