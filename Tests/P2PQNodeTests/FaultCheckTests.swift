import Foundation
import Glibc
import P2PQWorkloads
import Testing

/// The fault-injection suite's checker (`p2pq check`) must be able to fail: planted losses,
/// duplicates and lost calls in hand-written logs are counted, and a clean run passes.
@Suite("Fault-injection checker")
struct FaultCheckTests {
    /// A clean run: producer p pushes 0..<6 in two batches, two consumers pop them all once.
    static let producer = """
        {"t":100.0,"node":"p","op":"start"}
        {"t":100.1,"node":"p","op":"push-start","p":"p","from":0,"n":3}
        {"t":100.2,"node":"p","op":"push","p":"p","from":0,"n":3}
        {"t":100.3,"node":"p","op":"push-start","p":"p","from":3,"n":3}
        {"t":100.4,"node":"p","op":"push","p":"p","from":3,"n":3}
        """
    static let consumers = """
        {"t":100.5,"node":"c1","op":"pop","ids":["p:0","p:1"]}
        {"t":100.6,"node":"c2","op":"pop","ids":["p:2","p:3"]}
        {"t":100.7,"node":"c1","op":"pop","ids":["p:4","p:5"]}
        """

    @Test("A run where every item came out once passes")
    func cleanRun() {
        var check = FaultCheck()
        check.read(Self.producer)
        check.read(Self.consumers)
        let report = check.report()
        #expect(report.pushed == 6)
        #expect(report.popped == 6)
        #expect(report.deliveries == 6)
        #expect(report.lost == 0)
        #expect(report.duplicates == 0)
        #expect(report.unexpected == 0)
        #expect(report.passed)
    }

    @Test("A planted loss fails the run and names the item")
    func plantedLoss() {
        var check = FaultCheck()
        check.read(Self.producer)
        // p:4 never comes out.
        check.read(Self.consumers.replacingOccurrences(of: #""ids":["p:4","p:5"]"#, with: #""ids":["p:5"]"#))
        let report = check.report()
        #expect(report.lost == 1)
        #expect(report.lostSample == ["p:4"])
        #expect(!report.passed)
        #expect(report.summary.contains("FAIL"))
    }

    @Test("A planted duplicate is counted, and alone does not fail the run")
    func plantedDuplicate() {
        var check = FaultCheck()
        check.read(Self.producer)
        check.read(Self.consumers)
        check.read(#"{"t":101.0,"node":"c2","op":"pop","ids":["p:1","p:1"]}"#)
        let report = check.report()
        #expect(report.duplicates == 2)
        #expect(report.duplicatedItems == 1)
        #expect(report.duplicateSample == ["p:1"])
        #expect(report.deliveries == 8)
        #expect(report.lost == 0)
        #expect(report.passed)
        #expect(abs(report.duplicatePercent - 100.0 * 2 / 6) < 1e-9)
    }

    @Test("An item lost after its owner and another node were SIGKILLed is its own class, not a loss; with only the owner killed it is lost")
    func bothHoldersDied() {
        // p:4 and p:5 never come out; p is killed, then c2.
        let consumers = Self.consumers.replacingOccurrences(of: #"{"t":100.7,"node":"c1","op":"pop","ids":["p:4","p:5"]}"#, with: "")
        var check = FaultCheck()
        check.read(Self.producer)
        check.read(consumers)
        check.read(#"{"t":100.8,"node":"harness","op":"fault","kind":"sigkill","target":"p"}"#)
        let ownerOnly = check.report()
        #expect(ownerOnly.lost == 2 && ownerOnly.lostBothHoldersDied == 0 && !ownerOnly.passed)
        check.read(#"{"t":102.0,"node":"harness","op":"fault","kind":"sigkill","target":"c2"}"#)
        let both = check.report()
        #expect(both.lost == 0 && both.lostBothHoldersDied == 2 && both.passed)
        #expect(both.summary.contains("(both copies may have died): 2"))
        // A kill before the push does not count: those items were pushed after it.
        var early = FaultCheck()
        early.read(#"{"t":99.0,"node":"harness","op":"fault","kind":"sigkill","target":"c2"}"#)
        early.read(Self.producer)
        early.read(consumers)
        early.read(#"{"t":100.8,"node":"harness","op":"fault","kind":"sigkill","target":"p"}"#)
        #expect(early.report().lost == 2)
    }

    @Test("A push that never returned is not owed; an item nobody pushed is unexpected")
    func unacknowledgedAndUnexpected() {
        var check = FaultCheck()
        check.read(Self.producer)
        check.read(Self.consumers)
        // The producer died inside this push: its items may or may not come out.
        check.read(#"{"t":101.0,"node":"p","op":"push-start","p":"p","from":6,"n":2}"#)
        check.read(#"{"t":101.1,"node":"c1","op":"pop","ids":["p:6","q:9"]}"#)
        let report = check.report()
        #expect(report.pushedUnacknowledged == 2)
        #expect(report.lost == 0)
        #expect(report.unexpected == 1)
        #expect(!report.passed)
    }

    @Test("A call of a caller that left gracefully and never returned is lost; a dead caller's is not")
    func lostCall() {
        var check = FaultCheck()
        check.read("""
            {"t":1,"node":"a","op":"call","id":"a:c0"}
            {"t":1,"node":"a","op":"call","id":"a:c1"}
            {"t":2,"node":"a","op":"return","id":"a:c0","ok":true}
            {"t":3,"node":"a","op":"stopped"}
            {"t":1,"node":"b","op":"call","id":"b:c0"}
            """)
        let report = check.report()
        #expect(report.calls == 3)
        #expect(report.callsReturned == 1)
        #expect(report.callsLost == 1)
        #expect(report.lostSample == ["a:c1"])
        #expect(!report.passed)
    }

    @Test("Recovery after a fault: the gap until pops run at half their former rate")
    func recovery() {
        // 10 pops a second for 5 s, the fault at 105, nothing until 107.5, then 10 a second.
        var lines = (0..<50).map { #"{"t":\#(100 + Double($0) / 10),"node":"c","op":"pop","ids":["p:\#($0)"]}"# }
        lines += (0..<30).map { #"{"t":\#(107.5 + Double($0) / 10),"node":"c","op":"pop","ids":["p:\#(50 + $0)"]}"# }
        lines.append(#"{"t":105.0,"node":"harness","op":"fault","kind":"sigkill","target":"n2"}"#)
        lines.append(#"{"t":110.0,"node":"harness","op":"measure","name":"merge_s","value":1.5}"#)
        var check = FaultCheck()
        check.read(lines.joined(separator: "\n"))
        let report = check.report()
        #expect(report.faults.count == 1)
        let seconds = report.faults.first?.recoverySeconds ?? -1
        #expect(abs(seconds - 2.5) < 0.01)
        #expect(report.measures == [FaultCheck.Measure(name: "merge_s", value: 1.5)])
    }

    @Test("Logs with nothing acknowledged fail: they prove nothing")
    func emptyRun() {
        var check = FaultCheck()
        check.read(#"{"t":1,"node":"p","op":"start"}"#)
        let report = check.report()
        #expect(report.lost == 0)
        #expect(!report.passed)
        #expect(report.summary.contains("no acknowledged push"))
    }

    @Test("Malformed lines are counted, not fatal")
    func malformed() {
        var check = FaultCheck()
        check.read("{\"t\":1,\"node\":\"p\",\"op\":\"push\",\"p\":\"p\",\"from\":0,\"n\":1}\nnot json\n{\"t\":2,\"node\":\"c\",\"op\":\"pop\",\"ids\":[\"p:0\"]")
        let report = check.report()
        #expect(report.malformedLines == 2)
        #expect(report.lost == 1)
    }

    @Test("The operation log writes lines the checker reads, and item payloads carry their ids")
    func operationLogRoundTrip() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-faultcheck-\(getpid()).jsonl").path
        defer { unlink(path) }
        let log = try OperationLog(path: path, node: "w\"1")
        log.write(["op": .string("push-start"), "p": .string("w1"), "from": .int(0), "n": .int(2)])
        log.write(["op": .string("push"), "p": .string("w1"), "from": .int(0), "n": .int(2)])
        let payloads = (0..<2).map { FaultItem.payload(producer: "w1", counter: $0, size: 64) }
        #expect(payloads.allSatisfy { $0.count == 64 })
        log.write(["op": .string("pop"), "ids": .strings(payloads.map { FaultItem.id(of: $0) ?? "?" })])
        #expect(FaultItem.id(of: Array("no bar".utf8)) == nil)
        var check = FaultCheck()
        check.read(try String(contentsOfFile: path, encoding: .utf8))
        let report = check.report()
        #expect(report.malformedLines == 0)
        #expect(report.pushed == 2)
        #expect(report.popped == 2)
        #expect(report.passed)
    }
}
