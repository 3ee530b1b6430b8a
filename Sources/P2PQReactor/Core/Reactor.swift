import CP2PQSystem
import DequeModule
import Dispatch
import Glibc
import Synchronization

/// A single-threaded event loop: one thread owns every socket, timer and handler registered on
/// it.
///
/// Other threads reach the loop only through ``execute(_:)`` (or ``submit(_:)``), which queue a
/// closure and wake the loop at most once per burst. Everything else (timers, listeners,
/// connections, UDP sockets) must be used on the loop thread; debug builds assert it.
///
/// One turn of the loop: wait for I/O (or the next timer, or a wake-up), dispatch what
/// arrived to handlers, run due timers, run submitted closures, then flush every connection
/// that wrote during the turn with one gather write (epoll) or one batched submission
/// (io_uring).
public final class Reactor: @unchecked Sendable {
    // @unchecked: the mutable state below is touched only on the loop thread (asserted); the
    // cross-thread parts are `inbox` (a Mutex) and `wakePending` (an atomic).

    public let configuration: ReactorConfiguration
    /// The backend this reactor runs on.
    public private(set) var backendKind: ReactorBackendKind = .epoll

    private struct Inbox {
        var tasks: [@Sendable () -> Void] = []
        /// Task jobs enqueued from other threads (see ``enqueue(_:)``).
        var jobs: [UnownedJob] = []
        var stopRequested = false
        var stopped = false
    }

    private let inbox = Mutex(Inbox())
    /// Set by the first submitter after the loop last drained the inbox: later submitters skip
    /// the eventfd write, so a burst costs one wake-up.
    private let wakePending = Atomic<Bool>(false)
    private let started = DispatchSemaphore(value: 0)
    private var startError: ReactorError?
    private var thread: pthread_t?
    private var loopThread: pthread_t?

    // Loop-thread state.
    var backend: (any ReactorBackend)!
    private var timers = TimerHeap()
    private var running = true
    private var draining: [@Sendable () -> Void] = []
    /// Task jobs to run this turn, and the array being run (swapped, so jobs that a job
    /// enqueues wait for the next round).
    private var jobs: [UnownedJob] = []
    private var runningJobs: [UnownedJob] = []
    /// Cleared when the loop thread is done: jobs enqueued after that go to the global executor.
    private let acceptsLocalJobs = Atomic<Bool>(true)
    /// Channels by slot; a token names a slot plus its generation, so stale events are ignored.
    private var channels: [RegisteredChannel?] = []
    /// Set while `shutdown` closes the channels: opening a socket then throws `.reactorStopped`.
    private(set) var isShuttingDown = false
    private var generations: [UInt32] = []
    private var freeSlots: [Int] = []
    /// Connections that wrote during this turn and flush at its end.
    var flushQueue: [TCPConnection] = []
    /// Actions deferred to the end of this turn, before the flush (see `deferToEndOfTurn`).
    private var endOfTurn: [() -> Void] = []
    private var endOfTurnSpare: [() -> Void] = []
    /// UDP sockets with datagrams queued during this turn.
    var datagramFlushQueue: [UDPSocket] = []
    private var datagramAreaStorage: DatagramArea?
    let chunkPool: ChunkPool

    /// Counters for tests and metrics: loop turns and wake-ups written.
    public private(set) var turns: UInt64 = 0
    /// Nanoseconds the loop spent working (from the end of a wait to the end of the turn's
    /// flush), for the loop-turn-time metric. Loop thread only.
    public private(set) var busyNanoseconds: UInt64 = 0
    private var turnStarted: UInt64 = 0

    /// The backend's wait returned: the working part of the turn starts. Two vDSO clock reads
    /// per turn (tens of nanoseconds) buy the loop-turn-time metric.
    @inline(__always)
    func waitEnded() {
        turnStarted = MonotonicTime.now().nanoseconds
    }
    private let wakeupsWritten = Atomic<UInt64>(0)
    private let emptyPollCount = Atomic<UInt64>(0)

    /// Polls that found nothing while busy-polling (``ReactorConfiguration/busyPoll``): the
    /// price of the lower latency. Any thread.
    public var emptyPolls: UInt64 { emptyPollCount.load(ordering: .relaxed) }

    /// Starts a reactor on a new thread and returns once its backend is ready.
    public init(configuration: ReactorConfiguration = ReactorConfiguration()) throws(ReactorError) {
        self.configuration = configuration
        self.chunkPool = ChunkPool(
            chunkSize: configuration.outboundChunkSize,
            cacheLimit: configuration.outboundChunkCacheLimit
        )
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attributes, { raw in
            let reactor = Unmanaged<Reactor>.fromOpaque(raw!).takeRetainedValue()
            reactor.threadMain()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            throw .system(call: "pthread_create", errno: rc)
        }
        thread = tid
        started.wait()
        if let error = startError {
            pthread_join(tid, nil)
            thread = nil
            throw error
        }
    }

    deinit {
        chunkPool.releaseAll()
        // Stopped by `requestStop()` and never joined: the thread's resources go when it ends.
        if let thread { pthread_detach(thread) }
    }

    /// Convenience: a reactor on the given backend.
    public convenience init(backend: ReactorBackendChoice) throws(ReactorError) {
        var configuration = ReactorConfiguration()
        configuration.backend = backend
        try self.init(configuration: configuration)
    }

    /// True when called on this reactor's loop thread.
    public var inReactorThread: Bool {
        guard let loopThread else { return false }
        return pthread_equal(loopThread, pthread_self()) != 0
    }

    /// Traps in debug builds when called off the loop thread.
    @inline(__always)
    public func assertInReactorThread(file: StaticString = #fileID, line: UInt = #line) {
        assert(inReactorThread, "must be called on the reactor thread", file: file, line: line)
    }

    // MARK: Cross-thread submission

    /// Queues `task` to run on the loop thread. Safe from any thread; a burst of calls costs
    /// one wake-up. Returns false, without running it, when the reactor has stopped.
    @discardableResult
    public func execute(_ task: @escaping @Sendable () -> Void) -> Bool {
        // On the loop thread (a task job running on this reactor, say) no wake-up is written:
        // the loop looks at `wakePending` before it waits.
        let onLoop = inReactorThread
        return inbox.withLock { inbox -> Bool in
            if inbox.stopped { return false }
            inbox.tasks.append(task)
            if onLoop {
                wakePending.store(true, ordering: .releasing)
                return true
            }
            // Woken under the lock: the loop marks the inbox stopped under the same lock before
            // it closes the eventfd, so a wake-up can never hit a closed (or reused) descriptor.
            if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
                wakeupsWritten.add(1, ordering: .relaxed)
                backend.wakeup()
            }
            return true
        }
    }

    /// Runs `body` on the loop thread and returns its result.
    public func submit<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let accepted = execute {
                continuation.resume(with: Result { try body() })
            }
            if !accepted { continuation.resume(throwing: ReactorError.reactorStopped) }
        }
    }

    /// How many eventfd wake-ups submitters have written (coalescing makes this far smaller
    /// than the number of submissions under load).
    public var wakeupCount: UInt64 { wakeupsWritten.load(ordering: .relaxed) }

    // MARK: Timers

    /// Runs `action` on the loop thread at `deadline`. Loop thread only.
    @discardableResult
    public func schedule(at deadline: MonotonicTime, _ action: @escaping () -> Void) -> TimerID {
        assertInReactorThread()
        return timers.schedule(deadline: deadline.nanoseconds, action)
    }

    /// Runs `action` on the loop thread after `delay`. Loop thread only.
    @discardableResult
    public func schedule(after delay: Duration, _ action: @escaping () -> Void) -> TimerID {
        schedule(at: MonotonicTime.now() + delay, action)
    }

    /// Cancels a pending timer; false if it already ran or was cancelled. Loop thread only.
    @discardableResult
    public func cancel(_ timer: TimerID) -> Bool {
        assertInReactorThread()
        return timers.cancel(timer)
    }

    /// Timers waiting to fire.
    public var pendingTimerCount: Int {
        assertInReactorThread()
        return timers.count
    }

    /// Objects the loop keeps alive until it has stopped (see ``keepAlive(_:)``).
    private var keptAlive: [AnyObject] = []

    /// Keeps `object` alive until the loop has stopped and every handler has heard
    /// `.reactorStopped`: handlers and timers may then hold it `unowned`, even if its other
    /// owners let go of it while the loop still runs. Call on the loop thread.
    public func keepAlive(_ object: AnyObject) {
        assertInReactorThread()
        keptAlive.append(object)
    }

    // MARK: Stop

    /// Stops the loop: runs work already submitted, closes every socket it owns (handlers see
    /// `.reactorStopped`), releases the backend and joins the thread. Idempotent. Must not be
    /// called on the loop thread itself (use ``requestStop()`` there).
    public func stop() {
        precondition(!inReactorThread, "stop() would join its own thread; use requestStop()")
        requestStop()
        let joinable: pthread_t? = inbox.withLock { _ in
            let t = thread
            thread = nil
            return t
        }
        if let joinable { pthread_join(joinable, nil) }
    }

    /// Asks the loop to stop after the current turn, from any thread, without waiting.
    public func requestStop() {
        inbox.withLock { inbox in
            guard !inbox.stopRequested, !inbox.stopped else { return }
            inbox.stopRequested = true
            if !wakePending.exchange(true, ordering: .acquiringAndReleasing) { backend.wakeup() }
        }
    }

    // MARK: The loop

    private func threadMain() {
        loopThread = pthread_self()
        _ = configuration.threadName.withCString { p2pq_set_thread_name($0) }
        do {
            let (backend, kind) = try makeBackend()
            self.backend = backend
            self.backendKind = kind
        } catch {
            startError = error
            inbox.withLock { $0.stopped = true }
            started.signal()
            return
        }
        started.signal()
        run()
        shutdown()
    }

    private func makeBackend() throws(ReactorError) -> (any ReactorBackend, ReactorBackendKind) {
        switch configuration.backend {
        case .exactly(.epoll):
            return (try EpollBackend(reactor: self), .epoll)
        case .exactly(.ioUring):
            return (try makeURingBackend(), .ioUring)
        case .automatic:
            // docs/benchmarks.md: on the stream workloads epoll is as fast as io_uring or
            // faster on this machine kind, so automatic means epoll; io_uring is opt-in.
            return (try EpollBackend(reactor: self), .epoll)
        }
    }

    private func makeURingBackend() throws(ReactorError) -> any ReactorBackend {
        #if P2PQ_IO_URING
        return try URingBackend(reactor: self)
        #else
        throw .backendUnavailable(
            .ioUring,
            reason: "this build has no io_uring support; install liburing-dev (apt-get install liburing-dev) and rebuild with P2PQ_IO_URING=1"
        )
        #endif
    }

    private func run() {
        let busyPoll = UInt64(max(0, configuration.busyPoll.nanosecondsClamped))
        // When the loop last had something to do; while `busyPoll` has not passed since, it
        // polls instead of sleeping.
        var lastActive: UInt64 = 0
        while running {
            var timeout = nextTimeout()
            let hadWork = timeout == 0
            var polling = false
            if busyPoll > 0, !hadWork, MonotonicTime.now().nanoseconds &- lastActive < busyPoll {
                timeout = 0
                polling = true
            }
            let dispatched = backend.poll(timeoutNanoseconds: timeout)
            runTimers()
            runSubmitted()
            runEndOfTurn()
            flushWrites()
            let end = MonotonicTime.now().nanoseconds
            if dispatched || hadWork {
                lastActive = end
            } else if polling {
                // An empty poll is waiting, not a turn: it stays out of the turn counters.
                emptyPollCount.add(1, ordering: .relaxed)
                continue
            }
            turns &+= 1
            busyNanoseconds &+= end &- turnStarted
        }
    }

    /// Nanoseconds to wait: 0 when work is ready, nil (forever) with no timers.
    private func nextTimeout() -> Int64? {
        if wakePending.load(ordering: .acquiring) || !jobs.isEmpty || !endOfTurn.isEmpty || !flushQueue.isEmpty || !datagramFlushQueue.isEmpty || backend.hasPendingWork { return 0 }
        guard let deadline = timers.earliestDeadline else { return nil }
        let now = MonotonicTime.now().nanoseconds
        return deadline > now ? Int64(clamping: deadline - now) : 0
    }

    private func runTimers() {
        guard !timers.isEmpty else { return }
        let now = MonotonicTime.now().nanoseconds
        // Timers that a timer schedules for "now" run in the next turn, so a zero-delay
        // rescheduling loop cannot starve I/O.
        var budget = timers.count
        while budget > 0, let action = timers.popExpired(now: now) {
            action()
            budget -= 1
        }
    }

    /// Submitted closures and task jobs, in rounds: a job's hop to the loop (a push, a call)
    /// runs in the next round of the same turn, and the task it resumes in the round after.
    /// Bounded, so that tasks that keep each other busy cannot starve I/O.
    private func runSubmitted() {
        var rounds = 0
        var budget = Swift.max(1, configuration.maxJobsPerTurn)
        repeat {
            runInbox()
            runJobs(budget: &budget)
            rounds += 1
        } while running && rounds < 8 && ((!jobs.isEmpty && budget > 0) || wakePending.load(ordering: .acquiring))
    }

    private func runInbox() {
        // Submitters (and requestStop) set the flag after queueing, so a clear flag means an
        // empty inbox and the lock can be skipped.
        guard wakePending.load(ordering: .acquiring) else { return }
        wakePending.store(false, ordering: .releasing)
        let stop = inbox.withLock { inbox -> Bool in
            swap(&inbox.tasks, &draining)
            if !inbox.jobs.isEmpty {
                jobs.append(contentsOf: inbox.jobs)
                inbox.jobs.removeAll(keepingCapacity: true)
            }
            return inbox.stopRequested
        }
        for task in draining { task() }
        draining.removeAll(keepingCapacity: true)
        if stop { running = false }
    }

    private func runJobs(budget: inout Int) {
        guard !jobs.isEmpty, budget > 0 else { return }
        swap(&jobs, &runningJobs)
        let executor = asUnownedTaskExecutor()
        let count = Swift.min(budget, runningJobs.count)
        for index in 0..<count { runningJobs[index].runSynchronously(on: executor) }
        budget -= count
        if count < runningJobs.count {
            // Over budget: the rest run next turn, ahead of the jobs enqueued since.
            jobs.insert(contentsOf: runningJobs[count...], at: 0)
        }
        runningJobs.removeAll(keepingCapacity: true)
    }

    /// Runs `action` once at the end of the current turn, after handlers, timers and submitted
    /// work, just before connections flush. Layers that batch (sealing many messages into one
    /// encrypted record, say) use it to do their work once per turn. Loop thread only.
    public func deferToEndOfTurn(_ action: @escaping () -> Void) {
        assertInReactorThread()
        endOfTurn.append(action)
    }

    private func runEndOfTurn() {
        // An action may defer another; bounded rounds keep a self-rescheduling action from
        // starving I/O (it runs again next turn).
        var rounds = 0
        while !endOfTurn.isEmpty && rounds < 4 {
            swap(&endOfTurn, &endOfTurnSpare)
            for action in endOfTurnSpare { action() }
            endOfTurnSpare.removeAll(keepingCapacity: true)
            rounds += 1
        }
    }

    func flushWrites() {
        if !datagramFlushQueue.isEmpty {
            let sockets = datagramFlushQueue
            datagramFlushQueue.removeAll(keepingCapacity: true)
            for socket in sockets where !socket.isClosed { socket.flushQueue() }
        }
        guard !flushQueue.isEmpty else { return }
        // A flush can close a connection whose handler then writes elsewhere: iterate a copy.
        var queue: [TCPConnection] = []
        swap(&queue, &flushQueue)
        for connection in queue {
            connection.inFlushQueue = false
            if connection.state != .closed { backend.flush(connection) }
        }
        if flushQueue.isEmpty {
            swap(&queue, &flushQueue)
            flushQueue.removeAll(keepingCapacity: true)
        }
    }

    private func shutdown() {
        // Work submitted before the stop runs once; later submissions are refused. Taking the
        // tasks and closing the inbox in one locked step bounds the drain: threads that keep
        // submitting cannot hold `stop()` up.
        let tasks = inbox.withLock { inbox -> [@Sendable () -> Void] in
            let t = inbox.tasks
            inbox.tasks = []
            inbox.stopped = true
            jobs.append(contentsOf: inbox.jobs)
            inbox.jobs = []
            return t
        }
        for task in tasks { task() }
        runEndOfTurn()
        flushWrites()
        // From here on, a close handler that opens a socket (a reconnect) gets `.reactorStopped`
        // instead of a channel nobody would ever close.
        isShuttingDown = true
        for case let channel? in channels {
            channel.close(reason: .reactorStopped)
        }
        timers.removeAll()
        backend.shutdown()
        channels.removeAll()
        // The handlers just heard `.reactorStopped`: what they point at may go now.
        keptAlive.removeAll()
        flushQueue.removeAll()
        datagramFlushQueue.removeAll()
        datagramAreaStorage = nil
        backend = nil
        // Tasks that prefer this reactor go on elsewhere: the jobs queued by now (and any
        // enqueued from here on) run on the global executor.
        acceptsLocalJobs.store(false, ordering: .releasing)
        for job in jobs { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
        jobs = []
    }

    // MARK: Channel registry (loop thread)

    func register(_ channel: RegisteredChannel) -> UInt64 {
        let slot: Int
        if let reused = freeSlots.popLast() {
            slot = reused
            channels[slot] = channel
        } else {
            slot = channels.count
            channels.append(channel)
            generations.append(0)
        }
        return ChannelToken.make(slot: slot, generation: generations[slot])
    }

    /// The live channel a token names, or nil if it was released since.
    @inline(__always)
    func channel(for token: UInt64) -> RegisteredChannel? {
        let slot = ChannelToken.slot(token)
        guard slot < channels.count, generations[slot] == ChannelToken.generation(token) else { return nil }
        return channels[slot]
    }

    /// Frees a channel's slot once the backend no longer references it.
    func release(token: UInt64) {
        let slot = ChannelToken.slot(token)
        guard slot < channels.count, generations[slot] == ChannelToken.generation(token) else { return }
        channels[slot] = nil
        generations[slot] = (generations[slot] &+ 1) & 0xFF_FFFF
        freeSlots.append(slot)
    }

    /// Open channels (for leak tests).
    public var openChannelCount: Int {
        assertInReactorThread()
        return channels.lazy.filter { $0 != nil }.count
    }

    /// Receive memory for UDP, made on first use and shared by all of this reactor's sockets.
    func datagramArea(slotSize: Int) -> DatagramArea {
        if let area = datagramAreaStorage, area.slotSize >= slotSize { return area }
        let area = DatagramArea(count: 16, slotSize: max(slotSize, 2048))
        datagramAreaStorage = area
        return area
    }

    func enqueueFlush(_ connection: TCPConnection) {
        guard !connection.inFlushQueue else { return }
        connection.inFlushQueue = true
        flushQueue.append(connection)
    }
}

// MARK: Task executor

/// A reactor is a task executor: a task that prefers it (`withTaskExecutorPreference`,
/// `Task(executorPreference:)`, `addTask(executorPreference:)`) runs on the loop thread between
/// I/O turns. Its hops to the loop then cost no thread wake-up, and a continuation the loop
/// resumes puts the task back on the same thread instead of the global pool. Such a task must
/// not block: while it runs, no I/O is served.
extension Reactor: TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if inReactorThread && acceptsLocalJobs.load(ordering: .acquiring) {
            jobs.append(job)
            return
        }
        let accepted = inbox.withLock { inbox -> Bool in
            if inbox.stopped { return false }
            inbox.jobs.append(job)
            if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
                wakeupsWritten.add(1, ordering: .relaxed)
                backend.wakeup()
            }
            return true
        }
        if !accepted { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }
}

/// A channel token packs a registry slot and its generation; io_uring adds an operation code
/// in the low byte of its user_data.
enum ChannelToken {
    @inline(__always) static func make(slot: Int, generation: UInt32) -> UInt64 {
        (UInt64(generation & 0xFF_FFFF) << 40) | (UInt64(slot) << 8)
    }
    @inline(__always) static func slot(_ token: UInt64) -> Int { Int((token >> 8) & 0xFFFF_FFFF) }
    @inline(__always) static func generation(_ token: UInt64) -> UInt32 { UInt32(token >> 40) & 0xFF_FFFF }
}

/// A value that may cross threads but is only usable on its reactor's thread.
///
/// Use it to keep a loop-confined object (a connection, a listener) in a Sendable place, and to
/// hand it back to closures submitted to the same reactor.
public struct ReactorBound<Value>: @unchecked Sendable {
    private let _value: Value
    public let reactor: Reactor

    public init(_ value: Value, reactor: Reactor) {
        reactor.assertInReactorThread()
        self._value = value
        self.reactor = reactor
    }

    /// The value; traps off the reactor thread.
    public var value: Value {
        precondition(reactor.inReactorThread, "ReactorBound value used off its reactor thread")
        return _value
    }
}
