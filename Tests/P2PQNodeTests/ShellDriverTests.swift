@testable import P2PQNode
import Testing

/// The one re-entry rule every shell follows.
@Suite struct ShellDriverTests {
    final class Log {
        var performed: [String] = []
    }

    @Test func actionsMadeWhilePerformingRunAfterTheCurrentOneNotInsideIt() {
        let log = Log()
        var driver: ShellDriver<String>!
        driver = ShellDriver(handle: { action in
            log.performed.append("begin \(action)")
            if action == "a" { driver.perform(["a1", "a2"]) }
            if action == "a1" { driver.perform(["a1x"]) }
            log.performed.append("end \(action)")
        })
        driver.perform(["a", "b"])
        #expect(log.performed == [
            "begin a", "end a", "begin b", "end b",
            "begin a1", "end a1", "begin a2", "end a2", "begin a1x", "end a1x",
        ])
        // Idle again: a new list is performed at once.
        driver.perform(["c"])
        #expect(log.performed.suffix(2) == ["begin c", "end c"])
    }

    @Test func whenDrainedRunsEachTimeTheActionsRunOutAndWhatItCausesIsPerformed() {
        let log = Log()
        var driver: ShellDriver<String>!
        var refills = 1
        driver = ShellDriver(handle: { log.performed.append($0) }, whenDrained: {
            log.performed.append("drained")
            if refills > 0 {
                refills -= 1
                driver.perform(["late"])
            }
        })
        driver.perform(["a"])
        #expect(log.performed == ["a", "drained", "late", "drained"])
    }
}
