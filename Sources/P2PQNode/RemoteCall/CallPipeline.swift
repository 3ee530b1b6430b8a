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
        /// Calls submitted and not yet answered (the shell keeps where each one's result goes,
        /// and finds them by stream when the stream is cancelled).
        var outstanding = 0
        var submittedAll = false
        var cancelled = false
        var consumer: CheckedContinuation<[Element]?, Never>?
        var producer: CheckedContinuation<Int, Never>?

        var finished: Bool { cancelled || (submittedAll && outstanding == 0 && head == ready.count) }
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
                if state.credits >= chunk || (state.credits > 0 && state.outstanding == 0 && state.head == state.ready.count) {
                    defer { state.credits = 0 }
                    return state.credits
                }
                state.producer = continuation
                return nil
            }
            if let taken { continuation.resume(returning: taken) }
        }
    }

    /// Submits the calls of stream indices `firstIndex...` (their encoded arguments, or the
    /// failure to encode them) with one hand-over to the reactor for the chunk: one op per run
    /// of encoded arguments, not one per call. `unused` credits go back to the window.
    func submit(firstIndex: Int, _ arguments: [Result<[UInt8], RemoteCallError>], unused: Int) {
        var runs: [StreamCalls] = []
        var failed: [Element] = []
        var count = 0
        var run: [[UInt8]] = []
        run.reserveCapacity(arguments.count)
        var runStart = firstIndex
        for (offset, argument) in arguments.enumerated() {
            switch argument {
            case .success(let bytes):
                if run.isEmpty { runStart = firstIndex + offset }
                run.append(bytes)
                count += 1
            case .failure(let error):
                failed.append((firstIndex + offset, .failure(error)))
                if !run.isEmpty {
                    runs.append(StreamCalls(stream: self, firstIndex: runStart, arguments: run))
                    run = []
                }
            }
        }
        if !run.isEmpty { runs.append(StreamCalls(stream: self, firstIndex: runStart, arguments: run)) }
        handOver.withLock { _ in
            let submit = state.withLock { state -> Bool in
                state.credits += unused
                guard !state.cancelled else { return false }
                state.outstanding += count
                return true
            }
            guard submit, !runs.isEmpty else { return }
            if runs.count == 1 { bridge.submit(.stream(runs[0])) } else { bridge.submit(contentsOf: runs.map { .stream($0) }) }
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

    /// Records results of this stream's calls (a reactor turn's, or the failures of calls a
    /// stopped node never made) and wakes its consumer once, so a consumer faster than the link
    /// is not resumed once per result. Each call is answered once: the shell forgets where a
    /// result goes when it hands it over.
    func deliver(_ results: [Element]) {
        let consumer = state.withLock { state -> (CheckedContinuation<[Element]?, Never>, [Element]?)? in
            guard !state.cancelled else { return nil }
            state.outstanding -= results.count
            state.ready.append(contentsOf: results)
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
        let (anyOutstanding, consumer, producer) = state.withLock { state in
            guard !state.cancelled else { return (false, CheckedContinuation<[Element]?, Never>?.none, CheckedContinuation<Int, Never>?.none) }
            state.cancelled = true
            let anyOutstanding = state.outstanding > 0
            state.outstanding = 0
            state.ready = []
            state.head = 0
            defer {
                state.consumer = nil
                state.producer = nil
            }
            return (anyOutstanding, state.consumer, state.producer)
        }
        // The shell finds the stream's calls still waiting and cancels them.
        if anyOutstanding { bridge.submit(.cancelStream(self)) }
        consumer?.resume(returning: nil)
        producer?.resume(returning: 0)
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }
}

/// Calls of one stream handed to the reactor together: consecutive stream indices from
/// `firstIndex`, one per argument.
struct StreamCalls: Sendable {
    let stream: CallPipeline
    var firstIndex: Int
    var arguments: [[UInt8]]

    /// Every call fails with `error` (the node stopped before they were made).
    func fail(_ error: RemoteCallError) {
        stream.deliver(arguments.indices.map { (firstIndex + $0, .failure(error)) })
    }
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
