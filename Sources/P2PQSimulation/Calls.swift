import P2PQNodeMachine
import P2PQRemoteCall
import P2PQWire

/// Remote calls in a simulation: every node attaches the calls (``NodeMachine/attachCalls(queue:caller:executor:now:)``),
/// registers "echo" and executes; the ``callers`` each call "echo" every ``interval``, and an
/// echo task takes a drawn ``taskDuration``. A call's arguments are its token, so a result is
/// checked against its call and every execution is counted.
public struct CallWorkload: Sendable, Hashable {
    /// The nodes that make calls.
    public var callers: [Int]
    /// Between two calls of one caller.
    public var interval: UInt64
    /// How long one echo task runs.
    public var taskDuration: DelayDistribution
    /// Calls each executor runs at once.
    public var maxConcurrentCalls: Int
    /// Each call's timeout (the caller fails it with `.timedOut` after this).
    public var timeout: UInt64
    /// When the callers start and stop calling.
    public var start: UInt64
    public var end: UInt64

    public init(callers: [Int], interval: UInt64, taskDuration: DelayDistribution = .fixed(simulatedMillisecond),
                maxConcurrentCalls: Int = 16, timeout: UInt64 = 10 * simulatedSecond, start: UInt64 = 0, end: UInt64 = .max) {
        precondition(interval > 0, "a caller's calls need an interval between them")
        self.callers = callers
        self.interval = interval
        self.taskDuration = taskDuration
        self.maxConcurrentCalls = maxConcurrentCalls
        self.timeout = timeout
        self.start = start
        self.end = end
    }
}

/// What the calls of a run did, and what the checker found (``ClusterSimulation/checkCalls(faultFree:)``).
public struct CallReport: Sendable, Hashable {
    /// Calls made by the callers.
    public var made = 0
    /// Calls that returned their own arguments.
    public var succeeded = 0
    /// Calls that ended with an error, by the error's kind.
    public var failed: [String: Int] = [:]
    /// Calls whose caller crashed before they ended (nobody waits for them).
    public var abandoned = 0
    /// Calls still waiting at a live caller longer than their timeout and a grace period: lost.
    public var lost = 0
    /// Calls that returned another call's bytes.
    public var wrongResults = 0
    /// Executions beyond the first of one call (at-least-once: only faults may cause them).
    public var duplicateExecutions = 0
    /// Round-trip times of the calls that succeeded, in nanoseconds, sorted.
    public var latencies: [UInt64] = []

    /// The latency at quantile `q` (0...1), if any call succeeded.
    public func latency(at q: Double) -> UInt64? {
        guard !latencies.isEmpty else { return nil }
        return latencies[min(latencies.count - 1, Int(Double(latencies.count) * q))]
    }
}

/// The simulation's book of calls.
struct CallsState {
    var nextToken: UInt64 = 1
    /// Calls waiting for their result, by token: which node made them, and when.
    var waiting: [UInt64: (node: Int, time: UInt64)] = [:]
    /// Executions per call token.
    var executions: [UInt64: Int] = [:]
    var report = CallReport()
}

extension ClusterSimulation {
    /// The call queue every node attaches.
    static let callQueue = "p2pq.calls"

    /// The simulated wall clock (for deadline hints in call items): far from the monotonic one.
    var wallClock: UInt64 { now &+ (1 << 40) }

    /// Attaches node `n`'s calls and starts its executor (at its start and every restart).
    mutating func attachCalls(_ n: Int) {
        guard let workload = configuration.calls else { return }
        let (_, actions) = machines[n].attachCalls(
            queue: Self.callQueue, caller: CallerConfiguration(),
            executor: ExecutorConfiguration(maxConcurrentCalls: workload.maxConcurrentCalls), now: now)
        perform(actions, at: n)
        machines[n].registerCallFunction("echo")
        perform(machines[n].setCallProcessing(true, now: now), at: n)
    }

    /// Schedules every caller's first call.
    mutating func startCallers() {
        guard let workload = configuration.calls else { return }
        for (index, _) in workload.callers.enumerated() { events.schedule(.makeCall(caller: index), at: workload.start) }
    }

    /// Caller `index` makes its next call (unless its node is down) and schedules the one after.
    mutating func makeCall(_ index: Int) {
        guard let workload = configuration.calls, now < workload.end else { return }
        events.schedule(.makeCall(caller: index), at: now + workload.interval)
        let node = workload.callers[index]
        guard !crashed.contains(node), !paused.contains(node), !stopped.contains(node) else { return }
        let token = calls.nextToken
        calls.nextToken += 1
        calls.waiting[token] = (node, now)
        calls.report.made += 1
        let request = NodeCallRequest(function: "echo", arguments: Self.callArguments(token), timeout: workload.timeout, token: token)
        perform(machines[node].call(request, now: now, wallClock: wallClock), at: node)
    }

    static func callArguments(_ token: UInt64) -> [UInt8] { withUnsafeBytes(of: token.littleEndian) { Array($0) } }

    static func token(of arguments: [UInt8]) -> UInt64? {
        guard arguments.count == 8 else { return nil }
        return arguments.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// Calls ended at `node`.
    mutating func callsCompleted(_ ended: [NodeCallResult], at node: Int) {
        for call in ended {
            guard let made = calls.waiting.removeValue(forKey: call.token), made.node == node else { continue }
            switch call.result {
            case .success(let bytes):
                if bytes == Self.callArguments(call.token) {
                    calls.report.succeeded += 1
                    calls.report.latencies.append(now - made.time)
                } else {
                    calls.report.wrongResults += 1
                }
            case .failure(let error):
                let kind = "\(error)".prefix { $0 != "(" }
                calls.report.failed[String(kind), default: 0] += 1
            }
        }
    }

    /// Node `node` runs `tasks`: each echo ends after a drawn task duration.
    mutating func runCallTasks(_ tasks: [CallTask], at node: Int) {
        guard let workload = configuration.calls else { return }
        for task in tasks {
            let outcome: CallOutcome
            if task.function == "echo", let token = Self.token(of: task.arguments) {
                calls.executions[token, default: 0] += 1
                outcome = .success(task.arguments)
            } else {
                outcome = .unknownFunction
            }
            events.schedule(.taskFinished(node: node, task.id, outcome, incarnation: incarnations[node]),
                            at: now + workload.taskDuration.sample(&workloadRandom))
        }
    }

    /// Node `n` crashed: its waiting calls have nobody to return to.
    mutating func callerCrashed(_ n: Int) {
        let gone = calls.waiting.filter { $0.value.node == n }.keys
        calls.report.abandoned += gone.count
        for token in gone { calls.waiting[token] = nil }
    }

    /// Calls made and not ended, at callers that did not crash.
    public var callsWaiting: Int { calls.waiting.count }

    /// What the calls did so far. A call waiting at a live caller for longer than its timeout
    /// and `grace` is lost (its caller should have failed it by then); with `faultFree`, every
    /// failure and every second execution is reported in ``failures`` too.
    public mutating func checkCalls(faultFree: Bool, grace: UInt64 = 2 * simulatedSecond) -> CallReport {
        var report = calls.report
        guard let workload = configuration.calls else { return report }
        report.latencies.sort()
        report.lost = calls.waiting.values.filter { now > $0.time + workload.timeout + grace }.count
        report.duplicateExecutions = calls.executions.values.reduce(0) { $0 + max(0, $1 - 1) }
        if report.lost > 0 { fail("calls", "\(report.lost) calls lost (waiting past their timeout)") }
        if report.wrongResults > 0 { fail("calls", "\(report.wrongResults) calls returned another call's result") }
        if faultFree {
            if !report.failed.isEmpty { fail("calls", "calls failed in a fault-free run: \(report.failed.sorted { $0.key < $1.key })") }
            if report.duplicateExecutions > 0 { fail("calls", "\(report.duplicateExecutions) calls executed twice in a fault-free run") }
        }
        return report
    }
}
