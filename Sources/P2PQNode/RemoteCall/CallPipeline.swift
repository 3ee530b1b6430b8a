import P2PQRemoteCall
import Synchronization

/// The state of one pipelined stream of calls (``RemoteFunction/results(for:window:timeout:)``):
/// a window of credits bounds the calls in flight plus the results not yet taken; the producer
/// submits calls in chunks, the reactor delivers results, the consumer takes them.
final class CallPipeline: Sendable {
    typealias Element = (index: Int, result: Result<[UInt8], RemoteCallError>)

    private struct State: Sendable {
        /// Results delivered and not yet taken, first at `head`.
        var ready: [Element] = []
        var head = 0
        /// Window slots free for new calls.
        var credits: Int
        /// API tokens of the calls submitted and not yet answered (for cancellation).
        var outstanding: Set<UInt64> = []
        var submittedAll = false
        var cancelled = false
        var consumer: CheckedContinuation<[Element]?, Never>?
        var producer: CheckedContinuation<Int, Never>?

        var finished: Bool { cancelled || (submittedAll && outstanding.isEmpty && head == ready.count) }
    }

    private let state: Mutex<State>
    /// Held while calls or their cancels are handed to the bridge, so a cancel never reaches the
    /// reactor before a call it names. Not `state`'s lock: a stopped node fails the calls at
    /// once, and their completions take that one.
    private let handOver = Mutex<Void>(())
    let window: Int
    /// Most results the consumer takes at once (its iterator hands them out without a lock).
    private let maxTake: Int
    /// Credits the producer waits for before it submits again, so calls go out in chunks (one
    /// hand-over each) rather than one per result taken.
    private let chunk: Int
    let bridge: RemoteCallBridge
    let function: String
    let memoize: Bool
    let timeout: Duration?

    init(bridge: RemoteCallBridge, function: String, memoize: Bool, timeout: Duration?, window: Int) {
        self.bridge = bridge
        self.function = function
        self.memoize = memoize
        self.timeout = timeout
        self.window = window
        chunk = max(1, window / 8)
        maxTake = max(1, window / 4)
        state = Mutex(State(credits: window))
    }

    // MARK: Producer

    /// Waits for free window slots and takes them all: the number taken, 0 once cancelled.
    func acquire() async -> Int {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
            let taken = state.withLock { state -> Int? in
                if state.cancelled { return 0 }
                // Below a chunk, something is in flight or ready, and taking it frees more.
                if state.credits >= chunk || (state.credits > 0 && state.outstanding.isEmpty && state.head == state.ready.count) {
                    defer { state.credits = 0 }
                    return state.credits
                }
                state.producer = continuation
                return nil
            }
            if let taken { continuation.resume(returning: taken) }
        }
    }

    /// Submits `calls` (their stream indices and encoded arguments, or the failure to encode
    /// them) with one hand-over to the reactor; `unused` credits go back to the window.
    func submit(_ calls: [(index: Int, arguments: Result<[UInt8], RemoteCallError>)], unused: Int) {
        let count = calls.reduce(0) { count, call in if case .success = call.arguments { count + 1 } else { count } }
        let first = bridge.reserveTokens(count)
        var ops: [RemoteCallOp] = []
        ops.reserveCapacity(count)
        var failed: [Element] = []
        var token = first
        for call in calls {
            switch call.arguments {
            case .success(let bytes):
                ops.append(.call(CallRequest(token: token, function: function, arguments: bytes, memoize: memoize,
                                             timeout: timeout, nested: nil, completion: .stream(self, index: call.index, token: token))))
                token &+= 1
            case .failure(let error):
                failed.append((call.index, .failure(error)))
            }
        }
        handOver.withLock { _ in
            let submit = state.withLock { state -> Bool in
                state.credits += unused
                guard !state.cancelled else { return false }
                for op in ops { if case .call(let request) = op { state.outstanding.insert(request.token) } }
                return true
            }
            if submit && !ops.isEmpty { bridge.submit(contentsOf: ops) }
        }
        guard !failed.isEmpty else { return }
        let consumer = state.withLock { state -> (CheckedContinuation<[Element]?, Never>, [Element])? in
            guard !state.cancelled else { return nil }
            state.ready.append(contentsOf: failed)
            return takeForConsumer(&state)
        }
        if let (continuation, batch) = consumer { continuation.resume(returning: batch) }
    }

    /// The producer has submitted every argument.
    func finishSubmitting() {
        let consumer = state.withLock { state -> CheckedContinuation<[Element]?, Never>? in
            state.submittedAll = true
            guard state.finished, let consumer = state.consumer else { return nil }
            state.consumer = nil
            return consumer
        }
        consumer?.resume(returning: nil)
    }

    // MARK: Reactor

    /// The result of the call at `index` (any thread: a stopped node fails its calls).
    func complete(_ index: Int, token: UInt64, _ result: Result<[UInt8], RemoteCallError>) {
        deliver([(index, token, result)])
    }

    /// Records a reactor turn's results for this stream and wakes its consumer once, so a
    /// consumer faster than the link is not resumed once per result.
    func deliver(_ results: [(index: Int, token: UInt64, result: Result<[UInt8], RemoteCallError>)]) {
        let consumer = state.withLock { state -> (CheckedContinuation<[Element]?, Never>, [Element]?)? in
            guard !state.cancelled else { return nil }
            for (index, token, result) in results where state.outstanding.remove(token) != nil {
                state.ready.append((index, result))
            }
            if let taken = takeForConsumer(&state) { return (taken.0, taken.1) }
            return nil
        }
        if let (continuation, batch) = consumer { continuation.resume(returning: batch) }
    }

    /// The waiting consumer and the results it takes.
    private func takeForConsumer(_ state: inout State) -> (CheckedContinuation<[Element]?, Never>, [Element])? {
        guard let consumer = state.consumer, state.head < state.ready.count else { return nil }
        state.consumer = nil
        return (consumer, take(&state))
    }

    /// Up to `maxTake` ready results; their window slots are freed when the consumer has
    /// handed them all out (``next(consumed:)``).
    private func take(_ state: inout State) -> [Element] {
        let end = min(state.ready.count, state.head + maxTake)
        let batch = Array(state.ready[state.head..<end])
        state.head = end
        if state.head == state.ready.count {
            state.ready.removeAll(keepingCapacity: true)
            state.head = 0
        }
        return batch
    }

    /// Frees `count` window slots and wakes the producer when a chunk is free.
    private func release(_ count: Int, _ state: inout State) -> CheckedContinuation<Int, Never>? {
        state.credits += count
        guard state.credits >= chunk, let producer = state.producer else { return nil }
        state.producer = nil
        return producer
    }

    // MARK: Consumer

    /// The next results in completion order, after the consumer handed out `consumed` (their
    /// slots are freed); nil when every call is answered or the stream was cancelled.
    func next(consumed: Int) async -> [Element]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[Element]?, Never>) in
                let (answer, producer) = state.withLock { state -> ([Element]??, (CheckedContinuation<Int, Never>, Int)?) in
                    var producer: (CheckedContinuation<Int, Never>, Int)?
                    if !state.cancelled, let waiting = release(consumed, &state) {
                        producer = (waiting, state.credits)
                        state.credits = 0
                    }
                    if state.head < state.ready.count && !state.cancelled { return (.some(take(&state)), producer) }
                    if state.finished { return (.some(nil), producer) }
                    state.consumer = continuation
                    return (nil, producer)
                }
                if let (waiting, credits) = producer { waiting.resume(returning: credits) }
                if let answer { continuation.resume(returning: answer) }
            }
        } onCancel: {
            cancel()
        }
    }

    /// Cancels every call still outstanding and ends the stream (the consumer's task was
    /// cancelled or its iterator dropped).
    func cancel() {
        handOver.withLock { _ in cancelHoldingHandOver() }
    }

    private func cancelHoldingHandOver() {
        let (tokens, consumer, producer) = state.withLock { state in
            guard !state.cancelled else { return ([UInt64](), CheckedContinuation<[Element]?, Never>?.none, CheckedContinuation<Int, Never>?.none) }
            state.cancelled = true
            let tokens = Array(state.outstanding)
            state.outstanding = []
            state.ready = []
            state.head = 0
            defer {
                state.consumer = nil
                state.producer = nil
            }
            return (tokens, state.consumer, state.producer)
        }
        if !tokens.isEmpty { bridge.submit(contentsOf: tokens.map { RemoteCallOp.cancel(token: $0) }) }
        consumer?.resume(returning: nil)
        producer?.resume(returning: 0)
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }
}

/// Ends its pipeline when the iterator holding it goes away unfinished.
final class CallPipelineLifetime: Sendable {
    let pipeline: CallPipeline
    let producer: Task<Void, Never>

    init(pipeline: CallPipeline, producer: Task<Void, Never>) {
        self.pipeline = pipeline
        self.producer = producer
    }

    deinit {
        producer.cancel()
        pipeline.cancel()
    }
}
