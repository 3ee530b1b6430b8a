import Glibc
import P2PQRemoteCall
import Synchronization

/// A call as the async API hands it to the reactor.
struct CallRequest: Sendable {
    typealias Continuation = CheckedContinuation<Result<[UInt8], RemoteCallError>, Never>
    var token: UInt64
    var function: String
    var arguments: [UInt8]
    var memoize: Bool
    var timeout: Duration?
    /// The executing task this call is nested in (it gives up its slot while it waits).
    var nested: TaskID?
    var completion: CallCompletion
}

/// Where a call's result goes: the task awaiting it alone, or its place in a batch. (Calls of
/// a pipelined stream are handed over as ``StreamCalls``.)
enum CallCompletion: Sendable {
    case single(CallRequest.Continuation)
    case batch(CallBatch, index: Int)

    func resume(_ result: Result<[UInt8], RemoteCallError>) {
        switch self {
        case .single(let continuation): continuation.resume(returning: result)
        case .batch(let batch, let index): batch.complete(index, result)
        }
    }
}

/// The results of a batch of calls: its task is resumed once, when the last one is in.
final class CallBatch: Sendable {
    typealias Continuation = CheckedContinuation<[Result<[UInt8], RemoteCallError>], Never>
    private struct State: Sendable {
        var results: [Result<[UInt8], RemoteCallError>?]
        var remaining: Int
        var continuation: Continuation?
    }
    private let state: Mutex<State>

    init(count: Int, continuation: Continuation) {
        state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count, continuation: continuation))
    }

    /// Records the result of call `index` (the first result of each call counts).
    func complete(_ index: Int, _ result: Result<[UInt8], RemoteCallError>) {
        let done = state.withLock { state -> (Continuation, [Result<[UInt8], RemoteCallError>])? in
            guard state.results[index] == nil else { return nil }
            state.results[index] = result
            state.remaining -= 1
            guard state.remaining == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.results.map { $0! })
        }
        if let (continuation, results) = done { continuation.resume(returning: results) }
    }
}

/// A registered function as the worker side runs it: bytes in, outcome out.
struct Registration: Sendable {
    var memoize: Bool
    /// Runs off the reactor thread.
    var body: @Sendable ([UInt8]) async -> CallOutcome
    /// Set for inline registrations: runs on the reactor thread, must not block.
    var inlineBody: (@Sendable ([UInt8]) -> CallOutcome)?
    /// Set for synchronous registrations: runs on a call worker thread, a run of calls at a time.
    var syncBody: (@Sendable ([UInt8]) -> CallOutcome)? = nil
}

/// Work handed from any task to the reactor, in order, drained in one hop per batch.
enum RemoteCallOp: Sendable {
    case call(CallRequest)
    /// A chunk of a pipelined stream's calls: one op for all of them.
    case stream(StreamCalls)
    case cancel(token: UInt64)
    /// The stream was cancelled: its calls still waiting are cancelled.
    case cancelStream(CallPipeline)
    case finished(TaskID, CallOutcome)
    /// The outcomes of a run of synchronous calls, handed over at once.
    case finishedRun([(TaskID, CallOutcome)])
    case register(String, inline: (@Sendable ([UInt8]) -> CallOutcome)?)
    case process(Bool)
}

/// What an executing task knows about itself, for nested calls.
struct ExecutionContext: Sendable {
    var bridge: ObjectIdentifier
    var task: TaskID
}

enum RemoteCallContext {
    /// Set while a registered function runs, so calls it makes can give up its slot.
    @TaskLocal static var current: ExecutionContext?
}

/// The state shared by the async API, the worker tasks and the reactor-side shell. Every
/// hand-over to the reactor goes through one inbox: the first op of a batch schedules one
/// reactor task, which drains everything queued by then (calls, cancels, outcomes).
final class RemoteCallBridge: Sendable {
    let node: Node
    let queueName: String
    private let registry = Mutex<[String: Registration]>([:])
    private let inbox = Mutex<Inbox>(Inbox())
    private let running = Mutex<[TaskID: Running]>([:])
    private let tokens = Atomic<UInt64>(1)
    /// Entries of `running` marked `.cancelledEarly`: `ended` looks for one only when this is not 0.
    private let earlyCancels = Atomic<Int>(0)
    /// Set when the node stops (`cancelAll`).
    private let stopped = Atomic<Bool>(false)
    /// The threads that run synchronous functions.
    let workers: CallWorkers

    private struct Inbox: Sendable {
        var ops: [RemoteCallOp] = []
        var scheduled = false

        /// Whether the caller must schedule a drain (the first op since the last one).
        mutating func schedule() -> Bool {
            if scheduled { return false }
            scheduled = true
            return true
        }
    }

    private enum Running: Sendable {
        case task(RunningTask)
        /// Cancelled before its task started (or after it ended: see `ended`).
        case cancelledEarly
    }

    init(node: Node, queueName: String, workerThreads: Int) {
        self.node = node
        self.queueName = queueName
        self.workers = CallWorkers(threads: workerThreads)
    }

    var identity: ObjectIdentifier { ObjectIdentifier(self) }

    func nextToken() -> UInt64 { tokens.wrappingAdd(1, ordering: .relaxed).oldValue }

    // MARK: Inbox

    func submit(_ op: RemoteCallOp) {
        // One op (a call, an outcome) is the common case: appended as it is, no generic copy.
        let schedule = inbox.withLock { inbox -> Bool in
            inbox.ops.append(op)
            return inbox.schedule()
        }
        if schedule { scheduleDrain() }
    }

    /// Queues `ops` in order with one lock and at most one reactor hop.
    func submit(contentsOf ops: [RemoteCallOp]) {
        let schedule = inbox.withLock { inbox -> Bool in
            inbox.ops.append(contentsOf: ops)
            return inbox.schedule()
        }
        if schedule { scheduleDrain() }
    }

    private func scheduleDrain() {
        let running = node.executeOnCore { core in core.remoteCalls?.drain() }
        if !running { failQueued() }
    }

    /// Whether ops wait in the inbox (reactor side).
    var hasOps: Bool { inbox.withLock { !$0.ops.isEmpty } }

    /// Everything submitted so far (reactor side).
    func takeOps() -> [RemoteCallOp] {
        inbox.withLock { inbox in
            inbox.scheduled = false
            // Moved out, not copied: the inbox starts a fresh array.
            var ops: [RemoteCallOp] = []
            swap(&ops, &inbox.ops)
            return ops
        }
    }

    /// The node is gone: calls waiting in the inbox fail.
    func failQueued() {
        for op in takeOps() {
            switch op {
            case .call(let request): request.completion.resume(.failure(.nodeStopped))
            case .stream(let calls): calls.fail(.nodeStopped)
            default: break
            }
        }
    }

    // MARK: Registry

    func register(_ name: String, _ registration: Registration) {
        registry.withLock { $0[name] = registration }
        submit(.register(name, inline: registration.inlineBody))
    }

    // MARK: Calls

    /// Makes one call; the bytes of its result.
    nonisolated(nonsending) func call(_ function: String, _ arguments: [UInt8], memoize: Bool, timeout: Duration?) async throws(RemoteCallError) -> [UInt8] {
        if Task.isCancelled { throw .cancelled(function: function) }
        let token = nextToken()
        let context = RemoteCallContext.current
        let nested = context?.bridge == identity ? context?.task : nil
        let gate = CallGate()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CallRequest.Continuation) in
                let request = CallRequest(token: token, function: function, arguments: arguments, memoize: memoize,
                                          timeout: timeout, nested: nested, completion: .single(continuation))
                if !gate.submit({ self.submit(.call(request)) }) {
                    continuation.resume(returning: .failure(.cancelled(function: function)))
                }
            }
        } onCancel: {
            gate.cancel { self.submit(.cancel(token: token)) }
        }
        return try result.get()
    }

    /// Makes many calls of one function with one hand-over to the reactor and one resumption
    /// of the calling task: the results, in order. Cancelling the task cancels them all.
    nonisolated(nonsending) func callBatch(_ function: String, _ arguments: [[UInt8]], memoize: Bool, timeout: Duration?) async -> [Result<[UInt8], RemoteCallError>] {
        guard !arguments.isEmpty else { return [] }
        let cancelled = { arguments.map { _ in Result<[UInt8], RemoteCallError>.failure(.cancelled(function: function)) } }
        if Task.isCancelled { return cancelled() }
        let first = tokens.wrappingAdd(UInt64(arguments.count), ordering: .relaxed).oldValue
        let callTokens = (0..<UInt64(arguments.count)).map { first &+ $0 }
        let context = RemoteCallContext.current
        let nested = context?.bridge == identity ? context?.task : nil
        let gate = CallGate()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CallBatch.Continuation) in
                let batch = CallBatch(count: arguments.count, continuation: continuation)
                let ops = arguments.indices.map { index in
                    RemoteCallOp.call(CallRequest(token: callTokens[index], function: function, arguments: arguments[index],
                                                  memoize: memoize, timeout: timeout, nested: nested,
                                                  completion: .batch(batch, index: index)))
                }
                if !gate.submit({ self.submit(contentsOf: ops) }) {
                    continuation.resume(returning: cancelled())
                }
            }
        } onCancel: {
            gate.cancel { self.submit(contentsOf: callTokens.map { RemoteCallOp.cancel(token: $0) }) }
        }
    }

    // MARK: Worker side

    /// Runners started per batch at most: one per core, so CPU-bound functions use every core.
    static let runnerWidth = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// Starts a batch of tasks off the reactor: one hop per runner, not per call. Each runner
    /// takes the batch's calls in turn and starts each as a task that runs at once on the
    /// runner's thread (`Task.immediateDetached`), so a function that does not suspend costs no
    /// enqueue and no thread wake-up. A function that suspends goes on as its own task while its
    /// runner takes the next call; one that holds the thread holds only its runner, and the
    /// others take the rest of the batch. Each outcome is handed to the reactor as it is ready
    /// (the inbox wakes the reactor once per drain, not per outcome).
    ///
    /// Calls of synchronous functions (`registerSync`) start no task: they go to the worker
    /// threads as runs (``runSync(_:)``).
    func run(_ tasks: [CallTask]) {
        var asynchronous: [CallTask] = []
        var synchronous: [SyncCall] = []
        var registration: (name: String, value: Registration?)?
        for task in tasks {
            if registration?.name != task.function {
                registration = (task.function, registry.withLock { $0[task.function] })
            }
            if let body = registration?.value?.syncBody {
                synchronous.append(SyncCall(task: task.id, arguments: task.arguments, body: body))
            } else {
                asynchronous.append(task)
            }
        }
        if !synchronous.isEmpty { runSync(synchronous) }
        guard !asynchronous.isEmpty else { return }
        let work = CallRun(asynchronous)
        for _ in 0..<min(asynchronous.count, Self.runnerWidth) {
            Task.detached { [self] in runCalls(work) }
        }
    }

    /// Hands synchronous calls to the worker threads: split in at most one run per thread, each
    /// run worked in a loop by one thread and its outcomes handed to the reactor at once.
    func runSync(_ calls: [SyncCall]) {
        let parts = min(calls.count, workers.threadCount)
        var runs: [ArraySlice<SyncCall>] = []
        runs.reserveCapacity(parts)
        var start = 0
        for part in 0..<parts {
            let size = calls.count / parts + (part < calls.count % parts ? 1 : 0)
            runs.append(calls[start..<start + size])
            start += size
        }
        workers.enqueue(runs) { [self] run in execute(run) }
    }

    /// Runs one run of synchronous calls on a worker thread.
    private func execute(_ run: ArraySlice<SyncCall>) {
        var outcomes: [(TaskID, CallOutcome)] = []
        outcomes.reserveCapacity(run.count)
        for call in run {
            // A stopped node starts no more calls; the outcomes so far are dropped with it.
            if stopped.load(ordering: .relaxed) { return }
            if earlyCancels.load(ordering: .relaxed) > 0 && takeEarlyCancel(call.task) {
                // Nobody waits for it: not run, and its slot is freed like a cancelled task's.
                outcomes.append((call.task, .thrown(typeName: "Swift.CancellationError", description: "CancellationError()")))
                continue
            }
            outcomes.append((call.task, call.body(call.arguments)))
        }
        submit(.finishedRun(outcomes))
    }

    /// Whether `task` was cancelled before it started (the mark is consumed).
    private func takeEarlyCancel(_ task: TaskID) -> Bool {
        running.withLock { running in
            guard case .cancelledEarly = running[task] else { return false }
            running[task] = nil
            earlyCancels.subtract(1, ordering: .relaxed)
            return true
        }
    }

    private func runCalls(_ work: CallRun) {
        var registration: (name: String, value: Registration?)?
        // A stopped node starts no more calls: the rest of the batch is dropped (their callers
        // retry elsewhere once this node is seen dead or gone).
        while !stopped.load(ordering: .relaxed), let task = work.next() {
            // The calls of a batch mostly name one function: one registry lookup per run of them.
            if registration?.name != task.function {
                registration = (task.function, registry.withLock { $0[task.function] })
            }
            let body = registration?.value?.body
            Task.immediateDetached { [self] in await execute(task, body) }
        }
    }

    private func execute(_ task: CallTask, _ body: (@Sendable ([UInt8]) async -> CallOutcome)?) async {
        // Registered from inside, before the function runs: a function that holds the thread
        // (so that its runner does not get its handle back) is still reached by a cancel.
        withUnsafeCurrentTask { current in
            guard let current else { return }
            running.withLock { running in
                if case .cancelledEarly = running[task.id] {
                    earlyCancels.subtract(1, ordering: .relaxed)
                    current.cancel()
                }
                running[task.id] = .task(RunningTask(task: current))
            }
        }
        let outcome: CallOutcome
        if let body {
            outcome = await RemoteCallContext.$current.withValue(ExecutionContext(bridge: identity, task: task.id)) {
                await body(task.arguments)
            }
        } else {
            outcome = .unknownFunction
        }
        running.withLock { _ = $0.removeValue(forKey: task.id) }
        submit(.finished(task.id, outcome))
    }

    /// The executor wants a running task stopped.
    func cancel(_ task: TaskID) {
        running.withLock { running in
            switch running[task] {
            case .task(let running): running.task.cancel()
            case .cancelledEarly: break
            case nil:
                running[task] = .cancelledEarly
                earlyCancels.add(1, ordering: .relaxed)
            }
        }
    }

    /// The outcomes of `tasks` reached the reactor: a cancel that crossed one of them (it found no
    /// running task and was kept for a task not started yet) is forgotten.
    func ended(_ tasks: [(TaskID, CallOutcome)]) {
        guard earlyCancels.load(ordering: .relaxed) > 0 else { return }
        running.withLock { running in
            for (id, _) in tasks {
                guard case .cancelledEarly = running[id] else { continue }
                running[id] = nil
                earlyCancels.subtract(1, ordering: .relaxed)
            }
        }
    }

    /// The node stopped: running functions are cancelled and runners start no more calls.
    func cancelAll() {
        stopped.store(true, ordering: .relaxed)
        workers.stop()
        running.withLock { running in
            for case .task(let running) in running.values { running.task.cancel() }
            running = [:]
            earlyCancels.store(0, ordering: .relaxed)
        }
    }
}

/// A call of a synchronous function, as a worker thread runs it.
struct SyncCall: Sendable {
    var task: TaskID
    var arguments: [UInt8]
    var body: @Sendable ([UInt8]) -> CallOutcome
}

/// The calls of a batch still to start, shared by its runners.
private final class CallRun: Sendable {
    private let state: Mutex<(tasks: [CallTask], next: Int)>

    init(_ tasks: [CallTask]) { state = Mutex((tasks, 0)) }

    func next() -> CallTask? {
        state.withLock { state in
            guard state.next < state.tasks.count else { return nil }
            defer { state.next += 1 }
            return state.tasks[state.next]
        }
    }
}

/// A running call's task, as it registered itself. `UnsafeCurrentTask` is safe here because
/// the entry holding it is removed, under the table's lock, before the task ends, and because
/// only `cancel()` (which `Task` has too) is used from another thread.
private struct RunningTask: @unchecked Sendable {
    let task: UnsafeCurrentTask
}

/// Orders a call's submission against its cancellation, so a cancel never reaches the reactor
/// before the call it names.
private final class CallGate: Sendable {
    private enum State: Sendable { case pending, submitted, cancelled }
    private let state = Mutex<State>(.pending)

    /// Runs `submit` unless the call was cancelled already; false if it was.
    func submit(_ body: () -> Void) -> Bool {
        state.withLock { state in
            if state == .cancelled { return false }
            body()
            state = .submitted
            return true
        }
    }

    func cancel(_ body: () -> Void) {
        state.withLock { state in
            if state == .submitted { body() }
            state = .cancelled
        }
    }
}

/// The worker-side body of a function, with the error reporting of the protocol.
func outcome(of error: any Error) -> CallOutcome {
    .thrownTruncating(typeName: String(reflecting: type(of: error)), description: String(describing: error))
}

