import Foundation

/// Reads the operation logs of a fault-injection run (the workloads' and the harness's) and
/// counts every item and call: what was acknowledged, what came out, what was lost and what
/// came out twice, and how long the pops took to recover after each fault.
///
/// The lines it reads (any other `op` is ignored; every line has `t` and `node`):
/// - `push-start` / `push` / `push-error` with `p`, `from`, `n`: the ids `p:from ..< p:from+n`
///   were handed to `push`, and `push` returned (acknowledged) or failed;
/// - `pop` with `ids`: a pop returned these items (logged before they are processed);
/// - `call`, `return`, `call-error` with `id`: a remote call was made, returned, failed;
/// - `start`, `stopped`: the workload process started, left gracefully;
/// - `fault` with `kind` and `target` (the harness): a fault began or was healed;
/// - `measure` with `name` and `value` (the harness): a figure it measured (merge time...).
public struct FaultCheck: Sendable {
    /// The figures of one run.
    public struct Report: Sendable, Codable, Equatable {
        /// Items whose `push` returned (acknowledged).
        public var pushed = 0
        /// Items handed to a `push` that never returned (its process died): neither lost nor owed.
        public var pushedUnacknowledged = 0
        /// Items whose `push` failed with an error.
        public var pushFailed = 0
        /// Distinct items popped.
        public var popped = 0
        /// Pops of items, counting every repeat.
        public var deliveries = 0
        /// Acknowledged items never popped: must be 0.
        public var lost = 0
        /// Acknowledged items never popped whose owner (the node that pushed them) was SIGKILLed
        /// and, after their push, another node too: both copies an item has while its owner
        /// still queues it (the owner's and its replica holder's, or its holder's and the
        /// owner's record) may have died with them, which replication does not cover. Not
        /// counted in ``lost``.
        public var lostBothHoldersDied = 0
        /// Extra deliveries (`deliveries - popped`).
        public var duplicates = 0
        /// Items delivered more than once.
        public var duplicatedItems = 0
        /// Popped items that no producer ever handed to `push` (corruption): must be 0.
        public var unexpected = 0
        /// Remote calls made, returned (with the right answer), failed with an error.
        public var calls = 0
        public var callsReturned = 0
        public var callsWrong = 0
        public var callsFailed = 0
        /// Calls made by a workload that left gracefully and never returned nor failed: must be 0.
        public var callsLost = 0
        /// Log lines that were not JSON objects.
        public var malformedLines = 0
        /// A few of the lost items and calls, for the reader.
        public var lostSample: [String] = []
        public var duplicateSample: [String] = []
        public var faults: [Fault] = []
        public var measures: [Measure] = []

        /// Whether something was acknowledged and nothing was lost: no lost item or call,
        /// nothing unexpected. (Logs with no acknowledged push and no call prove nothing.)
        public var passed: Bool { (pushed > 0 || calls > 0) && lost == 0 && callsLost == 0 && unexpected == 0 && callsWrong == 0 }

        public var duplicatePercent: Double { popped == 0 ? 0 : 100 * Double(duplicates) / Double(popped) }

        public init() {}
    }

    /// A fault the harness logged, and how the pops fared after it.
    public struct Fault: Sendable, Codable, Equatable {
        public var time: Double
        public var kind: String
        public var target: String
        /// Seconds from the fault until pops ran at half their rate of the 5 s before it again
        /// (over 1 s windows); with no pops before it, until the first pop; nil if never.
        public var recoverySeconds: Double?
        /// Pops after the fault (0: nothing was left to pop, or nothing came out again).
        public var popsAfter: Int
    }

    /// A figure the harness measured itself.
    public struct Measure: Sendable, Codable, Equatable {
        public var name: String
        public var value: Double

        public init(name: String, value: Double) {
            self.name = name
            self.value = value
        }
    }

    private var pushed: [String: Double] = [:]
    private var started: Set<String> = []
    private var failed: Set<String> = []
    private var pops: [String: Int] = [:]
    private var popTimes: [Double] = []
    private var callsMade: [String: String] = [:]  // call id -> caller
    private var callsEnded: Set<String> = []
    private var callsWrong = 0
    private var callsFailed = 0
    private var callsReturned = 0
    private var leftGracefully: Set<String> = []
    private var faults: [(time: Double, kind: String, target: String)] = []
    private var measures: [Measure] = []
    private var malformed = 0

    public init() {}

    /// Reads one log's text.
    public mutating func read(_ text: String) {
        for line in text.split(whereSeparator: \.isNewline) where !line.allSatisfy(\.isWhitespace) {
            guard let data = line.data(using: .utf8),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let op = object["op"] as? String
            else {
                malformed += 1
                continue
            }
            record(op, object)
        }
    }

    private mutating func record(_ op: String, _ object: [String: Any]) {
        let time = (object["t"] as? NSNumber)?.doubleValue ?? 0
        let node = object["node"] as? String ?? "?"
        func ids() -> [String] {
            guard let producer = object["p"] as? String, let from = (object["from"] as? NSNumber)?.intValue,
                  let count = (object["n"] as? NSNumber)?.intValue, count >= 0, count <= 10_000_000
            else { return [] }
            return (from..<from + count).map { "\(producer):\($0)" }
        }
        switch op {
        case "push-start": started.formUnion(ids())
        case "push": for id in ids() where pushed[id] == nil { pushed[id] = time }
        case "push-error": failed.formUnion(ids())
        case "pop":
            for id in object["ids"] as? [String] ?? [] {
                pops[id, default: 0] += 1
                popTimes.append(time)
            }
        case "call": if let id = object["id"] as? String { callsMade[id] = node }
        case "return":
            if let id = object["id"] as? String {
                callsEnded.insert(id)
                if object["ok"] as? Bool == false { callsWrong += 1 } else { callsReturned += 1 }
            }
        case "call-error":
            if let id = object["id"] as? String {
                callsEnded.insert(id)
                callsFailed += 1
            }
        case "stopped": leftGracefully.insert(node)
        case "fault":
            faults.append((time, object["kind"] as? String ?? "?", object["target"] as? String ?? "?"))
        case "measure":
            if let name = object["name"] as? String, let value = (object["value"] as? NSNumber)?.doubleValue {
                measures.append(Measure(name: name, value: value))
            }
        default: break
        }
    }

    /// The figures of everything read.
    public func report() -> Report {
        var report = Report()
        report.pushed = pushed.count
        report.pushFailed = failed.subtracting(pushed.keys).count
        report.pushedUnacknowledged = started.subtracting(pushed.keys).subtracting(failed).count
        report.popped = pops.count
        report.deliveries = pops.values.reduce(0, +)
        report.duplicates = report.deliveries - report.popped
        let repeated = pops.filter { $0.value > 1 }.keys.sorted(by: Self.idOrder)
        report.duplicatedItems = repeated.count
        report.duplicateSample = Array(repeated.prefix(10))
        let missing = pushed.keys.filter { pops[$0] == nil }.sorted(by: Self.idOrder)
        // SIGKILLs by target: an item whose owner and some other node were killed after its push.
        let kills = faults.filter { $0.kind == "sigkill" }
        let lost = missing.filter { id in
            let owner = String(Self.split(id).0)
            guard let at = pushed[id], kills.contains(where: { $0.target == owner && $0.time >= at }),
                  kills.contains(where: { $0.target != owner && $0.time >= at }) else { return true }
            return false
        }
        report.lostBothHoldersDied = missing.count - lost.count
        report.lost = lost.count
        report.unexpected = pops.keys.filter { !started.contains($0) && pushed[$0] == nil }.count
        report.calls = callsMade.count
        report.callsReturned = callsReturned
        report.callsWrong = callsWrong
        report.callsFailed = callsFailed
        let lostCalls = callsMade.filter { !callsEnded.contains($0.key) && leftGracefully.contains($0.value) }.keys
            .sorted(by: Self.idOrder)
        report.callsLost = lostCalls.count
        report.lostSample = Array((lost.prefix(10) + lostCalls.prefix(10)))
        report.malformedLines = malformed
        let times = popTimes.sorted()
        report.faults = faults.sorted { $0.time < $1.time }.map { fault in
            Fault(time: fault.time, kind: fault.kind, target: fault.target,
                  recoverySeconds: Self.recovery(after: fault.time, pops: times),
                  popsAfter: times.count - Self.firstIndex(atOrAfter: fault.time, in: times))
        }
        report.measures = measures
        return report
    }

    /// Seconds from `fault` until the pops' rate over a 1 s window is back at half the rate of
    /// the 5 s before the fault; with no pops before, until the first pop after it.
    static func firstIndex(atOrAfter time: Double, in pops: [Double]) -> Int {
        var low = 0, high = pops.count
        while low < high {
            let mid = (low + high) / 2
            if pops[mid] < time { low = mid + 1 } else { high = mid }
        }
        return low
    }

    static func recovery(after fault: Double, pops: [Double]) -> Double? {
        func firstIndex(atOrAfter time: Double) -> Int { Self.firstIndex(atOrAfter: time, in: pops) }
        let before = firstIndex(atOrAfter: fault) - firstIndex(atOrAfter: fault - 5)
        let after = firstIndex(atOrAfter: fault)
        guard after < pops.count else { return nil }
        let baseline = Double(before) / 5
        guard baseline >= 2 else { return pops[after] - fault }
        // Slide a 1 s window forward, pop by pop: recovered when it holds enough pops.
        let needed = Int((baseline / 2).rounded(.up))
        var start = after
        while start + needed - 1 < pops.count {
            if pops[start + needed - 1] - pops[start] <= 1 { return max(0, pops[start] - fault) }
            start += 1
        }
        return nil
    }

    /// `name:12` before `name:100`.
    static func idOrder(_ a: String, _ b: String) -> Bool {
        let (pa, ca) = split(a)
        let (pb, cb) = split(b)
        if pa != pb { return pa < pb }
        if let ca, let cb, ca != cb { return ca < cb }
        return a < b
    }

    private static func split(_ id: String) -> (Substring, Int?) {
        guard let colon = id.lastIndex(of: ":") else { return (Substring(id), nil) }
        let tail = id[id.index(after: colon)...]
        return (id[..<colon], Int(tail.hasPrefix("c") ? tail.dropFirst() : tail))
    }
}

extension FaultCheck.Report {
    /// A readable summary, a few lines.
    public var summary: String {
        var lines: [String] = []
        lines.append("items: \(pushed) pushed (acknowledged), \(popped) popped, \(lost) lost, \(duplicates) duplicate deliveries "
            + "(\(duplicatedItems) items, \(String(format: "%.2f", duplicatePercent)) %), \(unexpected) unexpected")
        if lostBothHoldersDied > 0 {
            lines.append("not popped, owner and another node SIGKILLed after the push (both copies may have died): \(lostBothHoldersDied)")
        }
        if pushedUnacknowledged > 0 || pushFailed > 0 {
            lines.append("pushes not acknowledged: \(pushedUnacknowledged) cut by their process's death, \(pushFailed) failed")
        }
        if calls > 0 {
            lines.append("calls: \(calls) made, \(callsReturned) returned, \(callsFailed) failed, \(callsWrong) wrong answers, \(callsLost) lost")
        }
        for fault in faults {
            let recovery = fault.recoverySeconds.map { "pops recovered after " + String(format: "%.2f s", $0) }
                ?? (fault.popsAfter == 0 ? "no pop after it" : "pops never recovered half their rate")
            lines.append("fault \(fault.kind) \(fault.target) at \(String(format: "%.3f", fault.time)): \(recovery) (\(fault.popsAfter) pops after)")
        }
        for measure in measures { lines.append("\(measure.name): \(String(format: "%.3f", measure.value))") }
        if malformedLines > 0 { lines.append("malformed log lines: \(malformedLines)") }
        if !lostSample.isEmpty { lines.append("lost, first: \(lostSample.joined(separator: " "))") }
        if !duplicateSample.isEmpty { lines.append("duplicated, first: \(duplicateSample.joined(separator: " "))") }
        if passed {
            lines.append("PASS: nothing lost")
        } else if pushed == 0 && calls == 0 {
            lines.append("FAIL: the logs hold no acknowledged push and no call")
        } else {
            lines.append("FAIL: \(lost) items and \(callsLost) calls lost, \(unexpected) unexpected, \(callsWrong) wrong answers")
        }
        return lines.joined(separator: "\n")
    }
}
