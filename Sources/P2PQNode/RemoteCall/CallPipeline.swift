import P2PQRemoteCall
import Synchronization

/// The state of one pipelined stream of calls (``RemoteFunction/results(for:window:timeout:)``):
/// a window of credits bounds the calls in flight, and the results waiting for the consumer
/// beyond a window hold their calls' credits; the producer submits calls in chunks, the reactor
/// delivers results, the consumer takes them.
///
/// A delivered result frees its call's credit at once while at most `window` results wait, so
/// the next calls go out without waiting for the consumer's thread to take the results (a hop
/// per chunk off the round of a window); past that, a slow consumer holds back the calls.
/// Invariant, while the producer waits: `outstanding + credits + held == window`, where `held`
/// is `max(0, waiting − window)` (the slots of results waiting beyond the window), so at most
/// `2 × window` results wait.
///
/// A stream over an array of raw arguments has no producer: the pipeline takes the next
/// arguments itself as credits free up, on the reactor thread when results arrive (the shell
/// makes those calls in the same turn: no hop to a producer task and back per chunk), on the
/// consumer's thread when it frees slots held beyond the window.
@usableFromInline
final class CallPipeline: Sendable {
    @usableFromInline typealias Element = (index: Int, result: Result<[UInt8], RemoteCallError>)

    private struct State: Sendable {
        /// Results delivered and not yet taken, first at `head`.
        var ready: [Element] = []
        var head = 0
        /// Window slots free for new calls.
        var credits: Int
        /// Results delivered and not yet consumed (``next(consumed:)``), taken or not.
        var waiting = 0
        /// The first argument of ``CallPipeline/source`` not submitted yet.
        var nextArgument = 0
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
    /// Credits the producer (or an array source's refill) waits for before it submits again,
    /// so calls go out in chunks (one hand-over, and runs of calls on the wire) rather than one
    /// per result: a quarter of the window, as an eighth made runs small enough to cost the
    /// executor more per call once results free slots as they arrive.
    private let chunk: Int
    let bridge: RemoteCallBridge
    let function: String
    let memoize: Bool
    let timeout: Duration?
    /// The raw arguments of a stream over an array, submitted by the pipeline itself (nil: a
    /// producer task submits).
    private let source: [[UInt8]]?

    init(bridge: RemoteCallBridge, function: String, memoize: Bool, timeout: Duration?, window: Int, source: [[UInt8]]? = nil) {
        self.source = source
        self.bridge = bridge
        self.function = function
        self.memoize = memoize
        self.timeout = timeout
        self.window = window
        chunk = max(1, window / 4)
        maxTake = max(1, window / 4)
        state = Mutex(State(credits: window))
    }

    // MARK: Producer

    /// Submits the first window of an array source (its producer task's only step).
    func start() {
        handOver.withLock { _ in
            let calls = state.withLock { state in refill(&state) }
            if let calls { bridge.submit(.stream(calls)) }
        }
        if source?.isEmpty ?? false { finishSubmitting() }
    }

    /// The next arguments of an array source for the free credits (taken), counted as
    /// outstanding: when a chunk is free, or the source's rest, or nothing else will free more.
    private func refill(_ state: inout State) -> StreamCalls? {
        guard let source, !state.cancelled, !state.submittedAll else { return nil }
        let left = source.count - state.nextArgument
        guard state.credits >= Swift.min(chunk, left) || (state.outstanding == 0 && state.waiting <= window) else { return nil }
        let count = Swift.min(left, state.credits)
        let first = state.nextArgument
        state.nextArgument += count
        state.credits -= count
        state.outstanding += count
        if state.nextArgument == source.count { state.submittedAll = true }
        guard count > 0 else { return nil }
        return StreamCalls(stream: self, firstIndex: first, arguments: Array(source[first..<first + count]))
    }

    /// Waits for free window slots and takes them all: the number taken, 0 once cancelled.
    func acquire() async -> Int {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
            let taken = state.withLock { state -> Int? in
                if state.cancelled { return 0 }
                // Below a chunk, calls in flight or results held beyond the window free more.
                if state.credits >= chunk || (state.credits > 0 && state.outstanding == 0 && state.waiting <= window) {
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
        let (consumer, producer) = state.withLock { state -> (Resumption?, Credits?) in
            guard !state.cancelled else { return (nil, nil) }
            state.ready.append(contentsOf: failed)
            return (takeForConsumer(&state), release(settle(delivered: failed.count, &state), &state))
        }
        if let (continuation, credits) = producer { continuation.resume(returning: credits) }
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
    ///
    /// - Returns: an array source's next calls, for the credits freed; the caller makes them at
    ///   once (the shell, in this reactor turn, so a cancel submitted meanwhile still finds
    ///   them) or fails them (a stopped node).
    @discardableResult
    func deliver(_ results: [Element]) -> StreamCalls? {
        let (consumer, producer, more) = state.withLock { state -> (Resumption?, Credits?, StreamCalls?) in
            guard !state.cancelled else { return (nil, nil, nil) }
            state.outstanding -= results.count
            state.ready.append(contentsOf: results)
            let producer = release(settle(delivered: results.count, &state), &state)
            return (takeForConsumer(&state), producer, refill(&state))
        }
        if let (continuation, credits) = producer { continuation.resume(returning: credits) }
        if let (continuation, batch) = consumer { continuation.resume(returning: batch) }
        return more
    }

    typealias Resumption = (CheckedContinuation<[Element]?, Never>, [Element])
    typealias Credits = (CheckedContinuation<Int, Never>, Int)

    /// Counts `delivered` results in the waiting ones and `consumed` out: the window slots
    /// this frees. A delivered result frees its call's slot at once unless it waits beyond the
    /// window, where it holds the slot until results before it are consumed.
    private func settle(delivered: Int = 0, consumed: Int = 0, _ state: inout State) -> Int {
        let heldBefore = max(0, state.waiting - window)
        state.waiting += delivered - consumed
        return delivered - (max(0, state.waiting - window) - heldBefore)
    }

    /// The waiting consumer and the results it takes.
    private func takeForConsumer(_ state: inout State) -> Resumption? {
        guard let consumer = state.consumer, state.head < state.ready.count else { return nil }
        state.consumer = nil
        return (consumer, take(&state))
    }

    /// Up to `maxTake` ready results; they stop counting as waiting when the consumer has
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

    /// Frees `count` window slots; the producer to wake, with every free slot (taken), when a
    /// chunk is free.
    private func release(_ count: Int, _ state: inout State) -> Credits? {
        state.credits += count
        guard state.credits >= chunk, let producer = state.producer else { return nil }
        state.producer = nil
        defer { state.credits = 0 }
        return (producer, state.credits)
    }

    // MARK: Consumer

    /// The next results in completion order, after the consumer handed out `consumed` (the
    /// slots they held beyond the window are freed); nil when every call is answered or the
    /// stream was cancelled.
    @usableFromInline
    func next(consumed: Int) async -> [Element]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[Element]?, Never>) in
                // Held across the refill's submission, so a cancel cannot overtake the calls.
                handOver.withLock { _ in
                    let (answer, producer, more) = state.withLock { state -> ([Element]??, Credits?, StreamCalls?) in
                        var producer: Credits?
                        var more: StreamCalls?
                        if !state.cancelled {
                            producer = release(settle(consumed: consumed, &state), &state)
                            more = refill(&state)
                        }
                        if state.head < state.ready.count && !state.cancelled { return (.some(take(&state)), producer, more) }
                        if state.finished { return (.some(nil), producer, more) }
                        state.consumer = continuation
                        return (nil, producer, more)
                    }
                    if let more { bridge.submit(.stream(more)) }
                    if let (waiting, credits) = producer { waiting.resume(returning: credits) }
                    if let answer { continuation.resume(returning: answer) }
                }
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

    /// Every call fails with `error` (the node stopped before they were made), and so do the
    /// calls an array source takes meanwhile, up to the results the consumer lets wait.
    func fail(_ error: RemoteCallError) {
        var calls: StreamCalls? = self
        while let failing = calls {
            calls = failing.stream.deliver(failing.arguments.indices.map { (failing.firstIndex + $0, .failure(error)) })
        }
    }
}

/// Ends its pipeline when the iterator holding it goes away unfinished.
@usableFromInline
final class CallPipelineLifetime: Sendable {
    @usableFromInline let pipeline: CallPipeline
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
