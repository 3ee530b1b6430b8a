import P2PQNodeMachine
import P2PQReactor
import P2PQRemoteCall
import P2PQWire

/// Connects the remote-call API to the node machine, which owns the caller and executor
/// machines and decides everything about calls: takes calls, cancels and finished tasks from
/// the async API in batches and feeds them in, keeps where each call's result goes, runs the
/// tasks it asks for (on the workers, or inline) and publishes the counters. Reactor thread only.
final class RemoteCallShell {
    unowned let core: NodeCore
    let bridge: RemoteCallBridge
    let queueName: String
    /// Call results refused: their sender had not been sent or announced the call.
    var refusedResults: Int { core.machine.callCounters?.caller.refusedResults ?? 0 }

    /// Where each call's result goes (``CallRoutes``).
    private var routes = CallRoutes()

    private var inlineBodies: [String: @Sendable ([UInt8]) -> CallOutcome] = [:]
    private var isStopped = false
    private var published = (calls: 0, executed: 0, retries: 0, duplicates: 0)

    init(core: NodeCore, bridge: RemoteCallBridge) {
        self.core = core
        self.bridge = bridge
        self.queueName = bridge.queueName
    }

    private var now: UInt64 { core.now }
    private var wallClock: UInt64 { core.environment.wallNanoseconds() }

    // MARK: From the API

    /// Runs what the async API and the workers queued.
    func drain() {
        let ops = bridge.takeOps()
        guard !isStopped else {
            for op in ops {
                switch op {
                case .call(let request): request.completion.resume(.failure(.nodeStopped))
                case .stream(let calls): calls.fail(.nodeStopped)
                default: break
                }
            }
            return
        }
        // Consecutive calls (from any number of tasks and streams) go to the machine as one
        // batch, and consecutive outcomes too: one action list per run. Ops still take effect
        // in order: a run is flushed before any other op.
        var outcomes: [(TaskID, CallOutcome)] = []
        var calls: [NodeCallRequest] = []
        var cancels: Set<UInt64> = []
        for op in ops {
            switch op {
            case .call, .stream:
                if !outcomes.isEmpty {
                    finish(outcomes)
                    outcomes.removeAll()
                }
                if !cancels.isEmpty {
                    cancel(cancels)
                    cancels.removeAll()
                }
                // Registered before the machine acts: some calls complete at once (memo hits).
                if case .call(let request) = op {
                    calls.append(routes.register(request))
                } else if case .stream(let streamCalls) = op {
                    routes.register(streamCalls, into: &calls)
                }
                continue
            default:
                break
            }
            if !calls.isEmpty {
                call(calls)
                calls.removeAll()
            }
            if case .cancel(let token) = op {
                cancels.insert(token)
                continue
            }
            if !cancels.isEmpty {
                cancel(cancels)
                cancels.removeAll()
            }
            if case .finished(let task, let outcome) = op {
                outcomes.append((task, outcome))
                continue
            }
            if case .finishedRun(let run) = op {
                outcomes.append(contentsOf: run)
                continue
            }
            if !outcomes.isEmpty {
                finish(outcomes)
                outcomes.removeAll()
            }
            switch op {
            case .call, .stream, .cancel, .finished, .finishedRun: break  // gathered above
            case .cancelStream(let stream):
                cancel(stream)
            case .register(let name, let inline):
                inlineBodies[name] = inline
                core.machine.registerCallFunction(name)
            case .process(let on):
                core.perform(core.machine.setCallProcessing(on, now: now))
            }
        }
        if !calls.isEmpty { call(calls) }
        if !cancels.isEmpty { cancel(cancels) }
        if !outcomes.isEmpty { finish(outcomes) }
    }

    /// Cancels the waiting calls with these API tokens (one scan for all of them).
    private func cancel(_ tokens: Set<UInt64>) {
        let named = routes.tokens(ofRequests: tokens)
        guard !named.isEmpty else { return }
        core.perform(core.machine.cancelCalls(named, now: now))
    }

    /// Cancels the waiting calls of a cancelled stream (one scan).
    private func cancel(_ stream: CallPipeline) {
        let named = routes.tokens(of: stream)
        guard !named.isEmpty else { return }
        core.perform(core.machine.cancelCalls(named, now: now))
    }

    private func finish(_ outcomes: [(TaskID, CallOutcome)]) {
        latencies.ended(outcomes, now: now)
        bridge.ended(outcomes)
        core.perform(core.machine.callsFinished(outcomes, now: now))
    }

    /// Hands `requests` to the machine in one batch.
    private func call(_ requests: [NodeCallRequest]) {
        if requests.count == 1 {
            return core.perform(core.machine.call(requests[0], now: now, wallClock: wallClock))
        }
        core.perform(core.machine.call(requests, now: now, wallClock: wallClock))
    }

    // MARK: From the node

    /// A remote-call message from `peer`.
    func receive(_ message: RemoteCallMessage, from peer: PeerID) {
        var wall: UInt64 = 0
        switch message {
        case .direct, .directRun:
            // A function registered before this call was made may still be on its way to this
            // thread (registration is handed over like every API op): take those ops first, or
            // the call would be answered "unknown function".
            if bridge.hasOps { drain() }
            wall = wallClock  // the calls' deadline hints; results and credit need no clock read
        case .results, .started, .cancel, .credit, .resultRun:
            break
        }
        core.perform(core.machine.received(message, from: peer, now: now, wallClock: wall))
    }

    /// The node stops: every waiting call fails with `.nodeStopped`, running tasks are cancelled.
    func stop() {
        guard !isStopped else { return }
        isStopped = true
        core.perform(core.machine.stopCalls(now: now))
        bridge.cancelAll()
        bridge.failQueued()
    }

    /// Counts for `/status` and tests.
    var counters: (caller: CallerCounters, executor: ExecutorCounters) {
        core.machine.callCounters ?? (CallerCounters(), ExecutorCounters())
    }

    // MARK: The machine's actions

    /// These calls ended (``NodeAction/completeCalls(_:)``): one routing pass for the run.
    func complete(_ ended: [NodeCallResult]) {
        routes.complete(ended)
    }

    /// Wakes the pipelined streams given results, once each (the node's actions ran out), and
    /// makes the calls array-backed streams take for the credits freed, in this turn.
    func wakeStreams() {
        var calls: [NodeCallRequest] = []
        for (stream, results) in routes.takeStreamResults() {
            guard let more = stream.deliver(results) else { continue }
            if isStopped {
                more.fail(.nodeStopped)
            } else {
                routes.register(more, into: &calls)
            }
        }
        if !calls.isEmpty { call(calls) }
    }

    /// Runs `tasks` (``NodeAction/runTasks(_:)``): inline functions here, the others handed to
    /// the workers in one batch. Of a run of more than ``earlyResults`` × 2 inline calls, the
    /// first ``earlyResults`` run now and the rest later in this turn, once their results are
    /// on their way (``runDeferredInline()``): the caller works on those while this side runs
    /// the rest, where the two sides would otherwise take turns over a whole window of calls.
    func run(_ tasks: [CallTask]) {
        latencies.started(tasks, now: now)
        // Once deferring, every later inline task waits too (one order, one flush).
        let budget = !deferredInline.isEmpty ? 0 : tasks.count <= 2 * Self.earlyResults ? Int.max : Self.earlyResults
        execute(tasks, inlineNow: budget)
    }

    /// Runs at most `inlineNow` of the inline tasks here (the rest wait for
    /// ``runDeferredInline()``) and hands the others to the workers in one batch.
    private func execute(_ tasks: [CallTask], inlineNow: Int) {
        var budget = inlineNow
        var offReactor: [CallTask] = []
        var outcomes: [(TaskID, CallOutcome)] = []
        outcomes.reserveCapacity(min(tasks.count, budget))
        // A run's tasks mostly call one function: its body is looked up once, not hashed per call.
        var lastFunction: String?
        var lastBody: (@Sendable ([UInt8]) -> CallOutcome)?
        for task in tasks {
            if task.function != lastFunction {
                lastFunction = task.function
                lastBody = inlineBodies[task.function]
            }
            // No inline body (also one registered again without it since it was deferred).
            guard let body = lastBody else {
                offReactor.append(task)
                continue
            }
            if budget > 0 {
                outcomes.append((task.id, body(task.arguments)))
                budget -= 1
            } else {
                deferredInline.append(task)
            }
        }
        if !offReactor.isEmpty { bridge.run(offReactor) }
        if !deferredInline.isEmpty { inlineRun.schedule() }
        if !outcomes.isEmpty { finishInline(outcomes) }
    }

    /// Inline calls of a large run waiting for ``runDeferredInline()``.
    private var deferredInline: [CallTask] = []
    private lazy var inlineRun = LaterInTurn(reactor: core.reactor) { [weak self] in self?.runDeferredInline() }
    /// How many calls of a large inline run are answered before the rest run. Measured with
    /// `bench rpc --pipeline 256` (docs/benchmarks.md): 32 fed the caller too little, a
    /// result sent per 64 calls cost more in system calls than the overlap won.
    static let earlyResults = 64

    /// Sends what the calls so far produced, then runs the deferred inline calls. A later-in-turn
    /// step, outside every link's receive path, so the send can start at once.
    private func runDeferredInline() {
        guard !deferredInline.isEmpty else { return }
        var tasks: [CallTask] = []
        swap(&tasks, &deferredInline)
        guard !isStopped else { return }
        core.flushCallsNow()
        execute(tasks, inlineNow: Int.max)
    }

    private func finishInline(_ outcomes: [(TaskID, CallOutcome)]) {
        latencies.ended(outcomes, now: now)
        core.perform(core.machine.callsFinished(outcomes, now: now))  // after this action (the driver's rule)
    }

    /// How long executed calls took, per function (for the dashboard).
    private(set) var latencies = CallLatencies()

    /// Calls made here and not answered yet (for the dashboard).
    var callsInFlight: Int { core.machine.callsInFlight }

    /// The machine's call counters, read in place: a getter called on the core's stored
    /// machine copies the whole machine first (once per flush, every turn with calls).
    private static func callCounters(in machine: inout NodeCore.Machine) -> (caller: CallerCounters, executor: ExecutorCounters)? {
        machine.callCounters
    }

    /// Publishes the counters' growth as metrics (once per flush of the calls).
    func publishCounters() {
        guard let (callerCounters, executorCounters) = Self.callCounters(in: &core.machine) else { return }
        let duplicates = executorCounters.duplicates + callerCounters.ignoredResults
        let metrics = core.metrics
        metrics.callsMade += callerCounters.calls - published.calls
        metrics.callsExecuted += executorCounters.executed - published.executed
        metrics.retries += callerCounters.retries - published.retries
        metrics.duplicates += duplicates - published.duplicates
        published = (callerCounters.calls, executorCounters.executed, callerCounters.retries, duplicates)
    }
}
