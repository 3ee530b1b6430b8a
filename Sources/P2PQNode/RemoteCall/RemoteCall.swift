import Foundation
import P2PQCodable
import P2PQRemoteCall

/// The knobs of a node's remote calls.
public struct RemoteCallConfiguration: Sendable {
    /// The caller side: retries (default 3), outstanding calls, memo cache size.
    public var caller: CallerConfiguration
    /// The executor side: memo cache size, argument limit, deadline grace. Its
    /// `maxConcurrentCalls` is set from ``RemoteCall/init(node:queueName:maxConcurrentCalls:configuration:)``.
    public var executor: ExecutorConfiguration
    /// Threads that run synchronous functions (``RemoteCall/registerSync(_:memoize:_:)``);
    /// `nil` means the smaller of `maxConcurrentCalls` and the core count. They are started on
    /// the first synchronous call and end when the node stops.
    public var syncThreads: Int?

    public init(caller: CallerConfiguration = CallerConfiguration(), executor: ExecutorConfiguration = ExecutorConfiguration(),
                syncThreads: Int? = nil) {
        self.caller = caller
        self.executor = executor
        self.syncThreads = syncThreads
    }
}

/// Remote calls over a node's call queue: functions registered by name on every node, called
/// from anywhere, run wherever the queue finds capacity, results back to the caller.
///
/// ```swift
/// let rpc = try await RemoteCall(node: node)
/// let square = rpc.register("square") { (n: Int) async throws -> Int in n * n }
/// try await rpc.process()           // without it this node only submits calls
/// let nine = try await square(3)
/// ```
///
/// A call runs at least once while its caller lives and may run more than once under faults
/// (an executor that dies after running it): memoized functions should be deterministic and
/// side effects idempotent. Failures are never cached.
public final class RemoteCall: Sendable {
    /// The node the calls go through.
    public let node: Node
    /// The call queue's name.
    public var queueName: String { bridge.queueName }
    /// Calls this node runs at once; nested calls do not hold a slot while they wait.
    public let maxConcurrentCalls: Int
    let bridge: RemoteCallBridge

    /// The default call queue.
    public static let defaultQueueName = "p2pq.calls"

    /// What the registered functions mostly do, for ``defaultMaxConcurrentCalls(for:processorCount:)``.
    public enum Workload: Sendable {
        /// `register`/`registerRaw` bodies: run off the reactor; they may compute or wait.
        case offReactor
        /// `registerInline`/`registerRawInline` bodies: short, run on the reactor thread.
        case inline
    }

    /// The default of `maxConcurrentCalls`: 16 per core for off-reactor functions, at least 64
    /// and at most 1,024; for inline functions the larger of that and 256.
    ///
    /// A slot is held while a call runs, not while it waits for a nested call. Off-reactor
    /// functions run on the global pool (one runner per core takes each batch), so slots beyond
    /// the core count let functions that wait (I/O, sleeps) overlap and keep batches large
    /// enough that the hand-overs stay cheap; CPU-bound ones then just queue on the pool.
    /// Inline functions finish within the reactor turn, so their slots bound only how many
    /// calls one turn takes: more means fewer, larger batches. Lower it to bound memory or
    /// load per node (each running call holds its arguments and its task); see docs/api.md.
    public static func defaultMaxConcurrentCalls(
        for workload: Workload = .offReactor,
        processorCount: Int = ProcessInfo.processInfo.activeProcessorCount
    ) -> Int {
        let offReactor = min(1024, max(64, 16 * max(1, processorCount)))
        switch workload {
        case .offReactor: return offReactor
        case .inline: return max(256, offReactor)
        }
    }

    /// Attaches remote calls to a running node (one `RemoteCall` per node).
    ///
    /// `maxConcurrentCalls` defaults to ``defaultMaxConcurrentCalls(for:processorCount:)`` for
    /// off-reactor functions; a node serving mostly inline functions may pass
    /// `RemoteCall.defaultMaxConcurrentCalls(for: .inline)`.
    ///
    /// - Throws: `RemoteCallError.nodeStopped` if the node is not running,
    ///   `RemoteCallError.invalidCall` for a bad setting or a second `RemoteCall` on the node.
    public init(
        node: Node, queueName: String = RemoteCall.defaultQueueName,
        maxConcurrentCalls: Int = RemoteCall.defaultMaxConcurrentCalls(),
        configuration: RemoteCallConfiguration = RemoteCallConfiguration()
    ) async throws(RemoteCallError) {
        guard maxConcurrentCalls > 0 else { throw .invalidCall("maxConcurrentCalls must be positive, not \(maxConcurrentCalls)") }
        guard (1...255).contains(queueName.utf8.count) else { throw .invalidCall("the queue name must be 1...255 UTF-8 bytes") }
        if let threads = configuration.syncThreads, !(1...1024).contains(threads) {
            throw .invalidCall("syncThreads must be 1...1024, not \(threads)")
        }
        self.node = node
        self.maxConcurrentCalls = maxConcurrentCalls
        let threads = configuration.syncThreads ?? min(maxConcurrentCalls, ProcessInfo.processInfo.activeProcessorCount)
        let bridge = RemoteCallBridge(node: node, queueName: queueName, workerThreads: threads)
        self.bridge = bridge
        var executorConfiguration = configuration.executor
        executorConfiguration.maxConcurrentCalls = maxConcurrentCalls
        let executor = executorConfiguration
        let caller = configuration.caller
        let attached = await node.withCore { core -> Bool in
            guard core.remoteCalls == nil, !core.isStopped else { return false }
            let (attached, actions) = core.machine.attachCalls(queue: bridge.queueName, caller: caller, executor: executor,
                                                               now: core.now)
            guard attached else { return false }
            core.remoteCalls = RemoteCallShell(core: core, bridge: bridge)
            core.perform(actions)
            return true
        }
        switch attached {
        case nil: throw .nodeStopped
        case false?: throw .invalidCall("the node already has remote calls attached")
        case true?: break
        }
    }

    // MARK: Registration

    /// Registers `body` under `name` and returns a handle to call it. Every node registers the
    /// same names; a node without the name answers calls with `RemoteCallError.unknownFunction`.
    /// Arguments and results are encoded with `CompactEncoder`, so the memo key (name plus
    /// encoded arguments) is the same for equal values.
    ///
    /// - Parameters:
    ///   - name: the function's name, the same on every node.
    ///   - memoize: identical concurrent calls share one execution and successful results are
    ///     cached (bounded LRU) at caller and executor.
    ///   - body: the function; it runs off the reactor thread and may await other registered
    ///     functions (it gives up its slot while it waits).
    @discardableResult
    public func register<A: Codable & Sendable, R: Codable & Sendable>(
        _ name: String, memoize: Bool = false, _ body: @escaping @Sendable (A) async throws -> R
    ) -> RemoteFunction<A, R> {
        bridge.register(name, Registration(memoize: memoize, body: { bytes in
            let arguments: A
            do { arguments = try CompactDecoder().decode(A.self, from: bytes) } catch { return .badArguments(truncated(error)) }
            do { return try encodeResult(await body(arguments)) } catch { return outcome(of: error) }
        }, inlineBody: nil))
        return function(name, memoize: memoize)
    }

    /// Registers a short, non-blocking function that runs on the node's reactor thread, with
    /// no hand-over to a worker task. It must not block or take long: it stalls all I/O of the
    /// node while it runs. It cannot make nested calls.
    @discardableResult
    public func registerInline<A: Codable & Sendable, R: Codable & Sendable>(
        _ name: String, memoize: Bool = false, _ body: @escaping @Sendable (A) throws -> R
    ) -> RemoteFunction<A, R> {
        let run: @Sendable ([UInt8]) -> CallOutcome = { bytes in
            let arguments: A
            do { arguments = try CompactDecoder().decode(A.self, from: bytes) } catch { return .badArguments(truncated(error)) }
            do { return try encodeResult(body(arguments)) } catch { return outcome(of: error) }
        }
        bridge.register(name, Registration(memoize: memoize, body: { run($0) }, inlineBody: run))
        return function(name, memoize: memoize)
    }

    /// Registers a synchronous function: its calls run on the node's call worker threads (see
    /// ``RemoteCallConfiguration/syncThreads``), a run of calls at a time in a loop, with no
    /// task per call and one hand-over to the reactor per run. For functions that compute and
    /// return without waiting; a function that blocks holds a worker thread (and the calls
    /// queued behind it). It cannot make nested calls. A cancel that arrives before the call
    /// starts skips it; one that arrives while it runs drops its result (the caller has failed
    /// the call already).
    @discardableResult
    public func registerSync<A: Codable & Sendable, R: Codable & Sendable>(
        _ name: String, memoize: Bool = false, _ body: @escaping @Sendable (A) throws -> R
    ) -> RemoteFunction<A, R> {
        let run: @Sendable ([UInt8]) -> CallOutcome = { bytes in
            let arguments: A
            do { arguments = try CompactDecoder().decode(A.self, from: bytes) } catch { return .badArguments(truncated(error)) }
            do { return try encodeResult(body(arguments)) } catch { return outcome(of: error) }
        }
        bridge.register(name, Registration(memoize: memoize, body: { run($0) }, inlineBody: nil, syncBody: run))
        return function(name, memoize: memoize)
    }

    /// Registers a synchronous function on raw bytes (see ``registerSync(_:memoize:_:)``).
    @discardableResult
    public func registerRawSync(
        _ name: String, memoize: Bool = false, _ body: @escaping @Sendable ([UInt8]) throws -> [UInt8]
    ) -> RawRemoteFunction {
        let run = rawOutcome(body)
        bridge.register(name, Registration(memoize: memoize, body: { run($0) }, inlineBody: nil, syncBody: run))
        return rawFunction(name, memoize: memoize)
    }

    /// Registers a function on raw bytes (no encoding).
    @discardableResult
    public func registerRaw(
        _ name: String, memoize: Bool = false,
        _ body: @escaping @Sendable ([UInt8]) async throws -> [UInt8]
    ) -> RawRemoteFunction {
        bridge.register(name, Registration(memoize: memoize, body: { bytes in
            do { return .success(try await body(bytes)) } catch { return outcome(of: error) }
        }, inlineBody: nil))
        return rawFunction(name, memoize: memoize)
    }

    /// Registers a short, non-blocking raw function that runs on the reactor thread (see
    /// ``registerInline(_:memoize:_:)``).
    @discardableResult
    public func registerRawInline(
        _ name: String, memoize: Bool = false, _ body: @escaping @Sendable ([UInt8]) throws -> [UInt8]
    ) -> RawRemoteFunction {
        let run = rawOutcome(body)
        bridge.register(name, Registration(memoize: memoize, body: { run($0) }, inlineBody: run))
        return rawFunction(name, memoize: memoize)
    }

    /// A handle on a function registered elsewhere (or later), for nodes that only call it and
    /// for recursion inside the function's own body.
    public func function<A: Codable & Sendable, R: Codable & Sendable>(
        _ name: String, memoize: Bool = false, arguments: A.Type = A.self, result: R.Type = R.self
    ) -> RemoteFunction<A, R> {
        RemoteFunction(bridge: bridge, name: name, memoize: memoize)
    }

    /// A raw handle on a function registered elsewhere.
    public func rawFunction(_ name: String, memoize: Bool = false) -> RawRemoteFunction {
        RawRemoteFunction(bridge: bridge, name: name, memoize: memoize)
    }

    // MARK: Executing

    /// Starts executing calls on this node, up to ``maxConcurrentCalls`` at once. A node that
    /// never calls it only submits calls; other nodes run them.
    public func process() async throws(RemoteCallError) {
        guard await node.withCore({ _ in true }) != nil else { throw .nodeStopped }
        bridge.submit(.process(true))
    }

    /// Stops taking new calls; running calls finish and answer.
    public func stopProcessing() {
        bridge.submit(.process(false))
    }

    /// Counters of both sides (calls, pushes, memo hits, retries; executed, duplicates).
    public func counters() async -> (caller: CallerCounters, executor: ExecutorCounters)? {
        await node.withCore { core in core.remoteCalls.map { ($0.counters.caller, $0.counters.executor) } } ?? nil
    }
}

/// A typed handle on a registered function; call it like an async function:
/// `let x = try await fib(30)`.
public struct RemoteFunction<A: Codable & Sendable, R: Codable & Sendable>: Sendable {
    let bridge: RemoteCallBridge
    /// The function's name.
    public let name: String
    /// Whether calls are memoized.
    public let memoize: Bool

    /// Calls the function somewhere in the cluster and waits for its result. Cancelling the
    /// calling task cancels the call.
    ///
    /// - Parameters:
    ///   - arguments: the call's arguments, encoded with `CompactEncoder`.
    ///   - timeout: fails the call with `RemoteCallError.timedOut` after this.
    nonisolated(nonsending) public func callAsFunction(_ arguments: A, timeout: Duration? = nil) async throws(RemoteCallError) -> R {
        let bytes: [UInt8]
        do { bytes = try CompactEncoder().encode(arguments) } catch { throw .invalidCall("arguments of \"\(name)\" did not encode: \(error)") }
        let result = try await bridge.call(name, bytes, memoize: memoize, timeout: timeout)
        do { return try CompactDecoder().decode(R.self, from: result) } catch {
            throw .badResult(function: name, description: String(describing: error))
        }
    }

    /// Many calls, one per element of `batch`, with one hand-over to the reactor and one
    /// resumption of the calling task: the results in order, each a success or its own error.
    /// The calls run concurrently, wherever there is capacity, like separate calls. Cancelling
    /// the calling task cancels them all.
    nonisolated(nonsending) public func call(batch: [A], timeout: Duration? = nil) async -> [Result<R, RemoteCallError>] {
        var results = [Result<R, RemoteCallError>?](repeating: nil, count: batch.count)
        var encoded: [[UInt8]] = []
        var positions: [Int] = []
        encoded.reserveCapacity(batch.count)
        positions.reserveCapacity(batch.count)
        let encoder = CompactEncoder()
        for (index, arguments) in batch.enumerated() {
            do {
                encoded.append(try encoder.encode(arguments))
                positions.append(index)
            } catch {
                results[index] = .failure(.invalidCall("arguments of \"\(name)\" did not encode: \(error)"))
            }
        }
        let answers = await bridge.callBatch(name, encoded, memoize: memoize, timeout: timeout)
        let decoder = CompactDecoder()
        for (position, answer) in zip(positions, answers) {
            results[position] = answer.flatMap { bytes in
                do { return .success(try decoder.decode(R.self, from: bytes)) } catch {
                    return .failure(.badResult(function: name, description: String(describing: error)))
                }
            }
        }
        return results.map { $0! }
    }
}

extension RemoteFunction {
    /// Pipelined calls, one per element of `arguments`, with at most `window` calls in flight
    /// (and at most `2 × window` results waiting to be taken: an answered call frees its slot at
    /// once while at most `window` wait): the results as they complete, each tagged with the
    /// index of its argument. Calls go to the reactor in chunks (one hand-over per chunk) and are
    /// made again each time the sequence is iterated. Ending the iteration early (or cancelling
    /// the iterating task) cancels the calls still outstanding.
    ///
    /// ```swift
    /// for await (index, result) in square.results(for: 0..<1_000_000) { … }
    /// ```
    public func results<S: Sequence & Sendable>(for arguments: S, window: Int = 256, timeout: Duration? = nil) -> RemoteCallResults<R>
    where S.Element == A {
        let name = name
        return RemoteCallResults(bridge: bridge, function: name, memoize: memoize, timeout: timeout, window: window,
                                 decode: { decodeResult(R.self, $0, function: name) }) { pipeline in
            await produce(arguments, into: pipeline) { encodeArguments($0, function: name) }
        }
    }

    /// Pipelined calls over an async sequence of arguments (see ``results(for:window:timeout:)-(S,_,_)``):
    /// each argument is submitted as it arrives, while the window has room.
    public func results<S: AsyncSequence & Sendable>(for arguments: S, window: Int = 256, timeout: Duration? = nil) -> RemoteCallResults<R>
    where S.Element == A, S.Failure == Never {
        let name = name
        return RemoteCallResults(bridge: bridge, function: name, memoize: memoize, timeout: timeout, window: window,
                                 decode: { decodeResult(R.self, $0, function: name) }) { pipeline in
            await produce(arguments, into: pipeline) { encodeArguments($0, function: name) }
        }
    }
}

/// The results of pipelined calls (``RemoteFunction/results(for:window:timeout:)-(S,_,_)``), in the
/// order they complete, each with the index of its argument. Iterating makes the calls.
public struct RemoteCallResults<R: Sendable>: AsyncSequence, Sendable {
    public typealias Element = (index: Int, result: Result<R, RemoteCallError>)
    public typealias Failure = Never

    let bridge: RemoteCallBridge
    let function: String
    let memoize: Bool
    let timeout: Duration?
    let window: Int
    let decode: @Sendable ([UInt8]) -> Result<R, RemoteCallError>
    /// Raw arguments the pipeline submits itself (``CallPipeline``); `produce` then only starts it.
    var source: [[UInt8]]? = nil
    let produce: @Sendable (CallPipeline) async -> Void

    public func makeAsyncIterator() -> AsyncIterator {
        let pipeline = CallPipeline(bridge: bridge, function: function, memoize: memoize, timeout: timeout,
                                    window: Swift.min(Swift.max(1, window), RemoteCallLimits.maxEntriesPerMessage),
                                    source: source)
        let produce = produce
        let producer = Task { await produce(pipeline) }
        return AsyncIterator(lifetime: CallPipelineLifetime(pipeline: pipeline, producer: producer), decode: decode)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        // Visible to inlined code: `next()` is specialized in the caller's module (a generic
        // call per result cost metadata lookups).
        @usableFromInline let lifetime: CallPipelineLifetime
        @usableFromInline let decode: @Sendable ([UInt8]) -> Result<R, RemoteCallError>
        /// Results taken from the stream at once, handed out one by one without a lock.
        @usableFromInline var taken: [CallPipeline.Element] = []
        @usableFromInline var position = 0

        init(lifetime: CallPipelineLifetime, decode: @escaping @Sendable ([UInt8]) -> Result<R, RemoteCallError>) {
            self.lifetime = lifetime
            self.decode = decode
        }

        @inlinable
        public mutating func next() async -> Element? {
            if position == taken.count {
                guard let batch = await lifetime.pipeline.next(consumed: taken.count) else {
                    taken = []
                    position = 0
                    return nil
                }
                taken = batch
                position = 0
            }
            let (index, result) = taken[position]
            position += 1
            return (index, result.flatMap(decode))
        }
    }
}

/// Submits `arguments` into `pipeline` in chunks as the window frees up.
private func produce<S: Sequence>(_ arguments: S, into pipeline: CallPipeline,
                                  encode: (S.Element) -> Result<[UInt8], RemoteCallError>) async {
    var iterator = arguments.makeIterator()
    var index = 0
    while true {
        let credits = await pipeline.acquire()
        if credits == 0 { return }
        var chunk: [Result<[UInt8], RemoteCallError>] = []
        chunk.reserveCapacity(credits)
        while chunk.count < credits, let element = iterator.next() { chunk.append(encode(element)) }
        let exhausted = chunk.count < credits
        pipeline.submit(firstIndex: index, chunk, unused: credits - chunk.count)
        index += chunk.count
        if exhausted {
            pipeline.finishSubmitting()
            return
        }
    }
}

/// Submits `arguments` into `pipeline` one by one as they arrive and the window has room.
private func produce<S: AsyncSequence>(_ arguments: S, into pipeline: CallPipeline,
                                       encode: (S.Element) -> Result<[UInt8], RemoteCallError>) async where S.Failure == Never {
    var iterator = arguments.makeAsyncIterator()
    var index = 0
    while true {
        let credits = await pipeline.acquire()
        if credits == 0 { return }
        for used in 0..<credits {
            // A slow source does not hold back calls already taken from it.
            guard let element = await iterator.next(isolation: nil), !pipeline.isCancelled else {
                pipeline.submit(firstIndex: index, [], unused: credits - used)
                pipeline.finishSubmitting()
                return
            }
            pipeline.submit(firstIndex: index, [encode(element)], unused: 0)
            index += 1
        }
    }
}

/// A handle on a function of raw bytes.
public struct RawRemoteFunction: Sendable {
    let bridge: RemoteCallBridge
    public let name: String
    public let memoize: Bool

    /// Calls the function with `arguments` and returns its result bytes.
    nonisolated(nonsending) public func callAsFunction(_ arguments: [UInt8], timeout: Duration? = nil) async throws(RemoteCallError) -> [UInt8] {
        try await bridge.call(name, arguments, memoize: memoize, timeout: timeout)
    }

    /// Many calls with one hand-over to the reactor and one resumption of the calling task:
    /// the results in order (see ``RemoteFunction/call(batch:timeout:)``).
    nonisolated(nonsending) public func call(batch: [[UInt8]], timeout: Duration? = nil) async -> [Result<[UInt8], RemoteCallError>] {
        await bridge.callBatch(name, batch, memoize: memoize, timeout: timeout)
    }

    /// Pipelined calls (see ``RemoteFunction/results(for:window:timeout:)-(S,_,_)``).
    public func results<S: Sequence & Sendable>(for arguments: S, window: Int = 256, timeout: Duration? = nil) -> RemoteCallResults<[UInt8]>
    where S.Element == [UInt8] {
        // An array (the common case) is submitted in slices by the pipeline itself, as results
        // free the window: no producer task, no generic iteration per call.
        if let array = arguments as? [[UInt8]] {
            return RemoteCallResults(bridge: bridge, function: name, memoize: memoize, timeout: timeout, window: window,
                                     decode: { .success($0) }, source: array) { pipeline in pipeline.start() }
        }
        return RemoteCallResults(bridge: bridge, function: name, memoize: memoize, timeout: timeout, window: window,
                                 decode: { .success($0) }) { pipeline in
            await produce(arguments, into: pipeline) { .success($0) }
        }
    }

    /// Pipelined calls over an async sequence of arguments.
    public func results<S: AsyncSequence & Sendable>(for arguments: S, window: Int = 256, timeout: Duration? = nil) -> RemoteCallResults<[UInt8]>
    where S.Element == [UInt8], S.Failure == Never {
        RemoteCallResults(bridge: bridge, function: name, memoize: memoize, timeout: timeout, window: window,
                          decode: { .success($0) }) { pipeline in
            await produce(arguments, into: pipeline) { .success($0) }
        }
    }
}

private func encodeArguments<A: Encodable>(_ arguments: A, function: String) -> Result<[UInt8], RemoteCallError> {
    do { return .success(try CompactEncoder().encode(arguments)) } catch {
        return .failure(.invalidCall("arguments of \"\(function)\" did not encode: \(error)"))
    }
}

private func decodeResult<R: Decodable>(_ type: R.Type, _ bytes: [UInt8], function: String) -> Result<R, RemoteCallError> {
    do { return .success(try CompactDecoder().decode(R.self, from: bytes)) } catch {
        return .failure(.badResult(function: function, description: String(describing: error)))
    }
}

private func encodeResult<R: Encodable>(_ value: R) -> CallOutcome {
    do { return .success(try CompactEncoder().encode(value)) } catch {
        return .thrownTruncating(typeName: "RemoteCallError.badResult", description: "the result did not encode: \(error)")
    }
}

private func truncated(_ error: any Error) -> String {
    let text = String(describing: error)
    return text.utf8.count <= RemoteCallLimits.maxDescriptionLength ? text : String(text.utf8.prefix(RemoteCallLimits.maxDescriptionLength - 3)) ?? "bad arguments"
}

/// A synchronous raw body as the executor runs it: its bytes, or the error it threw.
private func rawOutcome(_ body: @escaping @Sendable ([UInt8]) throws -> [UInt8]) -> @Sendable ([UInt8]) -> CallOutcome {
    { bytes in
        do { return .success(try body(bytes)) } catch { return outcome(of: error) }
    }
}
