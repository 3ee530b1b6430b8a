import HeapModule
import P2PQWire

/// The knobs of a ``CallerMachine``.
public struct CallerConfiguration: Hashable, Sendable {
    /// Re-pushes after executor losses before a call fails with
    /// ``RemoteCallError/retriesExhausted(function:attempts:)``; a call runs at most
    /// `maxRetries + 1` attempts. At most 254.
    public var maxRetries: Int
    /// Calls (including coalesced ones) waiting for a result at once; further calls fail with
    /// ``RemoteCallError/tooManyOutstandingCalls(limit:)`` until `.capacityAvailable`.
    public var maxOutstandingCalls: Int
    /// Entries of the caller's memo cache (0 disables it).
    public var memoCacheEntries: Int
    /// Bytes (keys and results) of the caller's memo cache.
    public var memoCacheBytes: Int
    /// Largest encoded arguments; keep it so an item fits in one queue transfer.
    public var maxArgumentSize: Int
    /// The sequence number of the first call. Seed it differently per process start (e.g. from
    /// the node's incarnation) so a restarted node never reuses its predecessor's call IDs.
    public var firstSequence: UInt64
    /// How long calls wait here for credit (see *Direct calls* in ``CallerMachine``) while
    /// no executor that granted credit sends more, in ns; after that they are pushed on the
    /// queue, so an executor that stopped granting credit cannot hold them back.
    public var creditWait: UInt64

    public init(
        maxRetries: Int = 3,
        maxOutstandingCalls: Int = 65536,
        memoCacheEntries: Int = 1024,
        memoCacheBytes: Int = 64 << 20,
        maxArgumentSize: Int = (1 << 20) - 4096,
        firstSequence: UInt64 = 1,
        creditWait: UInt64 = 500_000_000
    ) {
        self.maxRetries = maxRetries
        self.maxOutstandingCalls = maxOutstandingCalls
        self.memoCacheEntries = memoCacheEntries
        self.memoCacheBytes = memoCacheBytes
        self.maxArgumentSize = maxArgumentSize
        self.firstSequence = firstSequence
        self.creditWait = creditWait
    }
}

/// What the shell must do after an input to ``CallerMachine``, in order.
public enum CallerAction: Sendable, Equatable {
    /// Push these item bytes onto the node's call queue (the call `CallID`).
    case push(CallID, item: [UInt8])
    /// The call is no longer wanted: remove its item from the local call queue if it is still
    /// there (best effort; if it moved on, its executor's started notice is answered with a
    /// cancel).
    case removeFromQueue(CallID)
    /// Send this message to the peer (cancels to executors).
    case send(RemoteCallMessage, to: PeerID)
    /// The call is over: resume whoever awaits it.
    case complete(CallID, Result<[UInt8], RemoteCallError>)
    /// Call ``CallerMachine/tick(now:)`` at this monotonic time (replaces earlier settings; a
    /// tick with nothing due is harmless).
    case armTimer(at: UInt64)
    /// The outstanding calls fell below the limit after a call was refused for it.
    case capacityAvailable
}

/// Counters of a ``CallerMachine``, for status and tests.
public struct CallerCounters: Hashable, Sendable {
    /// Calls made (each `call`, however it was answered).
    public var calls = 0
    /// Items pushed, first attempts and retries.
    public var pushes = 0
    /// Calls answered from the caller's memo cache.
    public var memoHits = 0
    /// Calls that joined an identical memoized call in flight.
    public var coalesced = 0
    /// Re-pushes after an executor died or left.
    public var retries = 0
    /// Results for calls no longer outstanding (duplicates, late, or cancelled).
    public var ignoredResults = 0
    /// Results refused for an outstanding call because they came from a peer that neither
    /// was sent the call directly nor sent a started notice for it (forged, or a confused
    /// member). The call stays outstanding.
    public var refusedResults = 0
    /// Calls failed by their deadline.
    public var timeouts = 0
    /// Calls cancelled by the caller.
    public var cancellations = 0
    /// Calls refused at the outstanding limit.
    public var refused = 0
    /// Items sent straight to an executor on its credit (first attempts and retries), instead
    /// of pushed on the queue.
    public var direct = 0
    /// Calls that waited here for credit because every executor that granted some had none
    /// left (sent on later credit, or pushed after ``CallerConfiguration/creditWait``).
    public var heldForCredit = 0
    /// Waiting calls pushed on the queue because no credit came within
    /// ``CallerConfiguration/creditWait`` or the last executor granting credit was lost.
    public var creditWaitsExpired = 0

    public init() {}
}

/// The caller side of remote calls on one node, as a plain value: turns calls into queue
/// items, tracks them until their results arrive, retries them when their executor is lost,
/// fails them at their deadline, and keeps the caller's memo cache.
///
/// No I/O, clocks or threads: inputs carry `now` (monotonic nanoseconds; `wallClock`, Unix
/// nanoseconds, where an item's deadline is written) and return ``CallerAction``s.
///
/// ## Nothing lost
/// - The caller owns each call until a result arrives or it fails. A call's life:
///   *queued* (pushed, no executor known) → *started* (an executor's started notice names the
///   peer) → *done*.
/// - A queued call is protected by the queue's at-least-once delivery: the queue re-queues
///   items held by a node that dies before it confirms a pop. Once an executor has popped the
///   item, the executor's started notice hands protection back to the caller: when membership
///   reports that executor dead or gone (``peerDied(_:now:)``, ``peerLeft(_:now:)``), the
///   call is pushed again with `attempt + 1`, up to ``CallerConfiguration/maxRetries``.
/// - Under faults a call may therefore run more than once (a re-pushed call, or an item the
///   queue delivered twice). The first result wins; later ones are ignored. Functions that
///   are memoized should be deterministic, since either execution's result may be cached.
/// - A started notice for a call that is not outstanding (cancelled, already answered, or of a
///   previous process) is answered with a cancel, so stray executions stop early.
/// - A result is accepted only from a peer the call was sent to directly or that sent a
///   started notice for it (any attempt: an earlier attempt's executor may still answer).
///   Executors always send the notice ahead of the result, so any other sender is refused
///   and counted (``CallerCounters/refusedResults``): a member cannot answer others' calls.
///
/// ## Direct calls
/// Executors grant this node credit (``RemoteCallMessage/credit(_:)``) for as many direct
/// calls as they have free slots: every linked node as soon as they process, and again as
/// their slots free up (this node's own executor too). While credit lasts, a new item goes
/// straight to an executor that has some (one hop, no queue, no balancing round), and names it
/// the executor at once. The calls of one input to one executor travel as runs
/// (``RemoteCallMessage/directRun(_:)``): consecutive sequences to one function with the same
/// attempt, flags and deadline share one header, their arguments one buffer. Which one: the
/// executor furthest behind its share, shares equal (`CreditSpread`). So calls spread evenly
/// over every executor with free slots, whether they come in a burst or one at a time, and
/// however fast each returns its credit: this node's own executor, whose credit comes back
/// without a round trip, gets no more for it. Executors that have spent their credit are
/// skipped, so under load each gets calls in proportion to its slots and as fast as it returns
/// credit (its service rate):
/// - When every executor that granted credit has none left, new calls wait here, in order,
///   and go out as credit arrives. Only when none arrives within
///   ``CallerConfiguration/creditWait``, or no executor granting credit is left, are they
///   pushed on the queue; with no credit ever granted, calls are pushed at once.
/// - A waiting call is this node's alone (no queue holds it); its deadline and cancellation
///   apply as to any call.
///
/// The calls of a batch that go to one executor in a row (same function and deadline, not
/// memoized, on credit) are booked as one record for the run (``RunBook``: the run as sent and
/// a bit per call waiting) rather than a flight and a ticket each; their results clear bits.
/// Whatever treats one of them apart (a cancel, its deadline, a lost link or executor, a
/// started notice) first turns the run's waiting calls into flights, so every such path is the
/// per-call one, and a call behaves the same however it was booked.
///
/// A direct call is protected like a started one (the executor's death re-pushes it) and,
/// since no queue acknowledges it, also by its link: when the link to its executor goes down
/// (``peerDisconnected(_:now:)``) before the result came, it is pushed again.
///
/// ## Memoization
/// Memoized calls are keyed by function name and encoded arguments. A success is cached (LRU,
/// bounded by entries and bytes); failures are not. An identical memoized call made while one
/// is in flight joins it (one execution, one item) if its deadline is no later than the
/// flight's, so the flight's item deadline covers it.
public struct CallerMachine: Sendable {
    public typealias Action = CallerAction

    /// This node: the caller of every call made here.
    public let localPeer: PeerID
    /// `localPeer.bytes`, computed once: every item carries them.
    private let localPeerBytes: [UInt8]
    public let configuration: CallerConfiguration
    public private(set) var counters = CallerCounters()

    /// One pushed item and everybody waiting for it.
    private struct Flight: Sendable {
        var function: String
        var arguments: [UInt8]
        var memoKey: MemoKey?
        var attempt: UInt8
        /// The executor named by the current attempt's started notice, or the peer it was sent
        /// to directly.
        var executor: PeerID?
        /// The current attempt went straight to `executor` (no queue holds it).
        var direct = false
        /// The current attempt waits here for credit (in `waiting`; no executor, no queue).
        var held = false
        /// Whether the flight's own call (same sequence) still waits for it.
        var ownTicket = true
        /// Calls that joined the flight (memo coalescing); empty, so unallocated, for most.
        var joined: [UInt64] = []

        /// Every call waiting for the flight `id` (this flight): a view, so the common case (its
        /// own call alone) allocates nothing.
        func tickets(of id: UInt64) -> FlightTickets {
            FlightTickets(own: ownTicket ? id : nil, joined: joined)
        }
        /// Monotonic deadline of the flight's item (its first call's), nil = none.
        var deadline: UInt64?
        /// Wall-clock deadline written into the item, 0 = none.
        var wallDeadline: UInt64
    }

    /// The calls waiting for one flight: its own (if still waiting), then the joined ones.
    struct FlightTickets: Sequence {
        let own: UInt64?
        let joined: [UInt64]

        func makeIterator() -> Iterator { Iterator(own: own, joined: joined.makeIterator()) }

        struct Iterator: IteratorProtocol {
            var own: UInt64?
            var joined: IndexingIterator<[UInt64]>

            mutating func next() -> UInt64? {
                if let first = own {
                    own = nil
                    return first
                }
                return joined.next()
            }
        }
    }

    private struct Ticket: Sendable {
        var flight: UInt64
        var deadline: UInt64?
    }

    private var nextSequence: UInt64
    /// Flights by ID (the sequence of their first call) and tickets by call sequence: both in
    /// windows indexed by sequence number, no hashing per call.
    private var flights = SequenceTable<Flight>()
    private var tickets = SequenceTable<Ticket>()
    /// Calls of a batch sent straight to one executor, as one record per run (see
    /// ``RunBook``): they have neither flight nor ticket until something treats one apart.
    private var runs = RunBook()
    private var ticketsWithDeadline = 0
    private var memoInFlight: [MemoKey: UInt64] = [:]
    private var memo: LRUCache<MemoKey, [UInt8]>
    /// Deadlines of calls, earliest first; an answered or cancelled call's entry stays until it
    /// reaches the top or the heap is rebuilt (lazy deletion, no search per call).
    private var deadlines = Heap<Deadline>()
    private var armedDeadline: UInt64?
    private var refusedSinceCapacity = false
    /// Peers membership reported dead or gone, so a late started notice from one counts as a
    /// loss. Bounded; oldest forgotten first.
    private var lostPeers = BoundedSet<PeerID>(capacity: 4096)
    /// Direct calls each executor still grants this node, and which gets the next; an
    /// executor stays at 0 once its credit is spent, as a source of more, until its link drops
    /// or it is lost.
    private var credits = CreditSpread()
    /// Flights waiting for credit, oldest first (entries of flights since answered, cancelled
    /// or sent are skipped), and how many of them still wait.
    private var waiting = FIFO<UInt64>()
    private var waitingCount = 0
    /// Since when the waiting calls have seen no credit arrive.
    private var waitingSince: UInt64 = 0
    /// The `now` of the current input.
    private var now: UInt64 = 0
    /// Direct calls of this input, by executor, as runs: one message per run at the end of the
    /// input. A short list (a caller holds credit of few executors), searched from the most
    /// recent: no hashing of a 32-byte ID per call, and no item encoded per call.
    private var directOut: [(peer: PeerID, runs: [CallRun])] = []
    /// Most credit remembered per executor (a misbehaving peer cannot make it grow without end).
    static let maxCredit = 1 << 20
    /// Other peers whose results a flight accepts besides its executor: executors of earlier
    /// attempts, and peers that announced a duplicate delivery. Kept aside, by flight ID, so a
    /// flight stays small: empty for almost every flight.
    private var formerExecutors: [UInt64: [PeerID]] = [:]
    /// Most earlier executors remembered per flight (one per retry, bounded by `maxRetries`,
    /// plus duplicate deliveries).
    static let maxFormerExecutors = 16

    public init(localPeer: PeerID, configuration: CallerConfiguration = CallerConfiguration()) {
        precondition((0...254).contains(configuration.maxRetries), "maxRetries must be in 0...254")
        precondition(configuration.maxOutstandingCalls > 0, "maxOutstandingCalls must be positive")
        self.localPeer = localPeer
        self.localPeerBytes = localPeer.bytes
        self.configuration = configuration
        self.nextSequence = configuration.firstSequence
        self.memo = LRUCache(maxEntries: configuration.memoCacheEntries, maxBytes: configuration.memoCacheBytes)
    }

    // MARK: Queries

    /// Calls waiting for a result (coalesced ones included).
    public var outstandingCalls: Int { tickets.count + runs.calls }
    /// Items in flight (a coalesced group counts once).
    public var flightCount: Int { flights.count + runs.calls }
    /// Whether a call now would be accepted rather than refused for the outstanding limit.
    public var hasCapacity: Bool { outstandingCalls < configuration.maxOutstandingCalls }
    /// Runs of direct calls booked as one record each, with calls waiting.
    public var bookedRuns: Int { runs.runs }
    /// Run records kept, finished ones not yet dropped included (tests of the memory bound).
    var runRecordsHeld: Int { runs.recordsHeld }
    /// Entries in the memo cache.
    public var memoCacheCount: Int { memo.count }
    /// Whether the memo cache holds a result for this function and these arguments.
    public func isCached(function: String, arguments: [UInt8]) -> Bool {
        memo.contains(MemoKey(function: function, arguments: arguments))
    }
    /// The executor running the flight of `call`, if a started notice named one.
    public func executor(of call: CallID) -> PeerID? {
        guard call.caller == localPeer else { return nil }
        if let index = runs.find(call.sequence) { return runs[index].executor }
        guard let ticket = tickets[call.sequence] else { return nil }
        return flights[ticket.flight]?.executor
    }
    /// The attempt number of the flight of `call`.
    public func attempt(of call: CallID) -> Int? {
        guard call.caller == localPeer else { return nil }
        if let index = runs.find(call.sequence) { return runs[index].run.map { Int($0.attempt) } }
        guard let ticket = tickets[call.sequence] else { return nil }
        return flights[ticket.flight].map { Int($0.attempt) }
    }
    /// Direct calls `peer` still grants this node.
    public func credit(of peer: PeerID) -> Int { credits.credit(of: peer) }
    /// Calls waiting here for credit.
    public var callsWaitingForCredit: Int { waitingCount }
    /// Whether `call` waits here for credit.
    public func isWaitingForCredit(_ call: CallID) -> Bool {
        guard call.caller == localPeer, let ticket = tickets[call.sequence] else { return false }
        return flights[ticket.flight]?.held ?? false
    }
    /// Whether `call` went straight to its executor (rather than through the queue).
    public func isDirect(_ call: CallID) -> Bool {
        guard call.caller == localPeer else { return false }
        if runs.find(call.sequence) != nil { return true }
        guard let ticket = tickets[call.sequence] else { return false }
        return flights[ticket.flight]?.direct ?? false
    }
    /// Whether `call` is still waiting for its result.
    public func isOutstanding(_ call: CallID) -> Bool {
        call.caller == localPeer && (tickets[call.sequence] != nil || runs.find(call.sequence) != nil)
    }

    // MARK: Inputs

    /// Makes a call.
    ///
    /// - Parameters:
    ///   - function: the registered name to call.
    ///   - arguments: the encoded arguments (also the memo key, with the name).
    ///   - memoize: share one execution among identical calls and cache the result.
    ///   - deadline: monotonic time (same clock as `now`) at which the call fails with
    ///     ``RemoteCallError/timedOut(function:)``; nil for none.
    ///   - wallClock: the wall-clock time now (Unix ns), to write the item's deadline as a hint
    ///     for executors; 0 writes none (the caller still enforces `deadline`).
    ///   - now: the current monotonic time in ns.
    /// - Returns: the call's ID and the actions: a `.push` of a new item, or nothing (joined an
    ///   identical memoized call in flight), or an immediate `.complete` (memo cache hit,
    ///   invalid call, deadline already passed, or the outstanding limit reached).
    public mutating func call(
        function: String, arguments: [UInt8], memoize: Bool = false, deadline: UInt64? = nil,
        now: UInt64, wallClock: UInt64 = 0
    ) -> (CallID, [Action]) {
        self.now = now
        var actions: [Action] = []
        let id = callOne(function: function, arguments: arguments, memoize: memoize, deadline: deadline, now: now, wallClock: wallClock, into: &actions)
        finish(&actions)
        return (id, actions)
    }

    /// One call of a batch (see ``call(batch:now:wallClock:)``).
    public struct Request: Sendable, Equatable {
        public var function: String
        public var arguments: [UInt8]
        public var memoize: Bool
        public var deadline: UInt64?

        public init(function: String, arguments: [UInt8], memoize: Bool = false, deadline: UInt64? = nil) {
            self.function = function
            self.arguments = arguments
            self.memoize = memoize
            self.deadline = deadline
        }
    }

    /// Makes many calls at once (the API's batch variant): as ``call(function:arguments:memoize:deadline:now:wallClock:)``
    /// for each, in order, with one action list.
    public mutating func call(batch: [Request], now: UInt64, wallClock: UInt64 = 0) -> ([CallID], [Action]) {
        self.now = now
        var actions: [Action] = []
        credits.beginInput(calls: batch.count)  // blocks per executor: runs on the wire
        var ids: [CallID] = []
        ids.reserveCapacity(batch.count)
        var next = 0
        while next < batch.count {
            let booked = bookRun(batch, from: next, wallClock: wallClock)
            if booked > 0 {
                for sequence in nextSequence - UInt64(booked)..<nextSequence { ids.append(CallID(caller: localPeer, sequence: sequence)) }
                next += booked
                continue
            }
            let request = batch[next]
            ids.append(callOne(
                function: request.function, arguments: request.arguments, memoize: request.memoize,
                deadline: request.deadline, now: now, wallClock: wallClock, into: &actions
            ))
            next += 1
        }
        finish(&actions)
        return (ids, actions)
    }

    /// Sends the calls of `batch` from `start` on that go to one executor in a row as one
    /// run booked as one record (``RunBook``): as many as share the first one's function and
    /// deadline, are valid and not memoized, fit in one run, within the outstanding limit and
    /// the executor's block of the spread (``CreditSpread/room(at:)``). The number of calls
    /// sent, 0 when the first one needs the per-call path (invalid, memoized, expired, refused,
    /// or no credit: it waits or is pushed).
    private mutating func bookRun(_ batch: [Request], from start: Int, wallClock: UInt64) -> Int {
        let first = batch[start]
        let nameLength = first.function.utf8.count
        guard !first.memoize, !credits.isEmpty, nameLength > 0, nameLength <= RemoteCallLimits.maxFunctionNameLength,
              first.deadline.map({ $0 > now }) ?? true else { return 0 }
        let room = configuration.maxOutstandingCalls - outstandingCalls
        guard room > 0, let index = credits.next() else { return 0 }
        let limit = Swift.min(room, credits.room(at: index), batch.count - start)
        var wallDeadline: UInt64 = 0
        if let deadline = first.deadline, wallClock > 0 { wallDeadline = wallClock &+ (deadline - now) }
        var run = CallRun(caller: localPeer, firstSequence: nextSequence, function: first.function, deadline: wallDeadline)
        run.reserveCapacity(forArguments: limit * (4 + first.arguments.count))
        while run.count < limit {
            let request = batch[start + run.count]
            guard !request.memoize, request.deadline == first.deadline, request.function == first.function,
                  request.arguments.count <= configuration.maxArgumentSize,
                  run.hasRoom(forArguments: request.arguments.count) else { break }
            run.append(arguments: request.arguments)
        }
        let count = run.count
        guard count > 0 else { return 0 }
        let executor = credits.take(index, count: count)
        nextSequence &+= UInt64(count)
        counters.calls += count
        counters.pushes += count
        counters.direct += count
        runs.book(run, executor: executor, deadline: first.deadline)
        if let deadline = first.deadline { deadlines.insert(Deadline(deadline: deadline, ticket: run.firstSequence)) }
        if let slot = directOut.lastIndex(where: { $0.peer == executor }) {
            directOut[slot].runs.append(run)
        } else {
            directOut.append((executor, [run]))
        }
        return count
    }

    /// Turns the waiting calls of the run booked at `index` into per-call flights (same
    /// executor, attempt and deadlines), for a path that treats one apart from the others.
    private mutating func explode(runAt index: Int) {
        let record = runs.remove(at: index)
        guard let run = record.run else { return }
        run.forEachCall { offset, arguments in
            guard record.isWaiting(offset) else { return }
            let sequence = record.firstSequence &+ UInt64(offset)
            flights.append(sequence, Flight(
                function: run.function, arguments: Array(arguments), memoKey: nil, attempt: run.attempt,
                executor: record.executor, direct: true, deadline: record.deadline, wallDeadline: run.deadline
            ))
            addTicket(sequence, Ticket(flight: sequence, deadline: record.deadline))
        }
    }

    /// Explodes the run holding call `sequence`, if one does (see ``explode(runAt:)``).
    private mutating func explodeRun(holding sequence: UInt64) {
        if let index = runs.find(sequence) { explode(runAt: index) }
    }

    private mutating func callOne(
        function: String, arguments: [UInt8], memoize: Bool, deadline: UInt64?,
        now: UInt64, wallClock: UInt64, into actions: inout [Action]
    ) -> CallID {
        let sequence = nextSequence
        nextSequence &+= 1
        let id = CallID(caller: localPeer, sequence: sequence)
        counters.calls += 1

        let nameLength = function.utf8.count
        if nameLength == 0 || nameLength > RemoteCallLimits.maxFunctionNameLength {
            actions.append(.complete(id, .failure(.invalidCall("function name must be 1...\(RemoteCallLimits.maxFunctionNameLength) UTF-8 bytes, not \(nameLength)"))))
            return id
        }
        if arguments.count > configuration.maxArgumentSize {
            actions.append(.complete(id, .failure(.invalidCall("arguments of \(arguments.count) bytes exceed the limit of \(configuration.maxArgumentSize)"))))
            return id
        }
        let key = memoize ? MemoKey(function: function, arguments: arguments) : nil
        if let key, let value = memo.value(for: key) {
            counters.memoHits += 1
            actions.append(.complete(id, .success(value)))
            return id
        }
        if let deadline, deadline <= now {
            counters.timeouts += 1
            actions.append(.complete(id, .failure(.timedOut(function: function))))
            return id
        }
        guard outstandingCalls < configuration.maxOutstandingCalls else {
            counters.refused += 1
            refusedSinceCapacity = true
            actions.append(.complete(id, .failure(.tooManyOutstandingCalls(limit: configuration.maxOutstandingCalls))))
            return id
        }

        if let key, let flightID = memoInFlight[key], let flightDeadline = flights[flightID].map({ $0.deadline }),
           flightDeadline == nil || (deadline != nil && deadline! <= flightDeadline!) {
            counters.coalesced += 1
            flights.modify(flightID) { $0.joined.append(sequence) }  // in place: no copy of the list
            addTicket(sequence, Ticket(flight: flightID, deadline: deadline))
        } else {
            var wallDeadline: UInt64 = 0
            // No wall clock given (0): no hint in the item, rather than one that looks expired.
            if let deadline, wallClock > 0 { wallDeadline = wallClock &+ (deadline - now) }
            var flight = Flight(
                function: function, arguments: arguments, memoKey: key, attempt: 1, executor: nil,
                deadline: deadline, wallDeadline: wallDeadline
            )
            push(sequence, &flight, into: &actions)
            flights.append(sequence, flight)  // once, with its destination
            if let key { memoInFlight[key] = sequence }
            addTicket(sequence, Ticket(flight: sequence, deadline: deadline))
        }
        return id
    }

    /// A remote-call message arrived from `peer`.
    public mutating func received(_ message: RemoteCallMessage, from peer: PeerID, now: UInt64) -> [Action] {
        self.now = now
        var actions: [Action] = []
        var cancels: [PeerID: [UInt64]] = [:]
        switch message {
        case .results(let entries):
            for entry in entries { resultArrived(entry.sequence, entry.outcome, from: peer, into: &actions) }
        case .resultRun(let run):
            var sequence = run.firstSequence
            for outcome in run.outcomes {
                resultArrived(sequence, outcome, from: peer, into: &actions)
                sequence &+= 1
            }
        case .started(let entries):
            for entry in entries {
                explodeRun(holding: entry.sequence)  // a direct call gets none: a duplicate delivery
                guard let flight = flights[entry.sequence] else {
                    // Nobody waits for it: stop the stray execution.
                    cancels[peer, default: []].append(entry.sequence)
                    continue
                }
                // Only the current attempt's notice counts; an older attempt may still answer
                // (its result is accepted) but no longer protects the call.
                guard entry.attempt == flight.attempt, flight.executor == nil, !flight.held else {
                    remember(peer, for: entry.sequence, executor: flight.executor)
                    continue
                }
                if lostPeers.contains(peer) {
                    // Membership already wrote the executor off: the notice arrived late.
                    remember(peer, for: entry.sequence, executor: nil)
                    lose(entry.sequence, into: &actions)
                    continue
                }
                flights.modify(entry.sequence) { $0.executor = peer }
            }
        case .credit(let slots):
            // A lost or departed peer's late credit is not used (its calls would be lost).
            if !lostPeers.contains(peer) {
                credits.grant(Int(slots), from: peer, limit: Self.maxCredit)
                waitingSince = now
                sendWaiting(into: &actions)
            }
        case .cancel, .direct, .directRun:
            break  // these go to executors
        }
        emit(cancels, into: &actions)
        finish(&actions)
        return actions
    }

    /// Membership declared `peer` dead: calls it was running are pushed again (or fail when
    /// out of retries).
    public mutating func peerDied(_ peer: PeerID, now: UInt64) -> [Action] {
        self.now = now
        return peerLost(peer)
    }

    /// `peer` left the cluster gracefully: treated like a death (a leaving node finishes or
    /// abandons its calls; re-pushing is safe because duplicate results are ignored).
    public mutating func peerLeft(_ peer: PeerID, now: UInt64) -> [Action] {
        self.now = now
        return peerLost(peer)
    }

    /// The link to `peer` went down (or was replaced): its credit is void, and the direct calls
    /// it was sent and has not answered are pushed again (what was on the link may be lost; a
    /// call that did arrive may then run twice, and the first result wins).
    public mutating func peerDisconnected(_ peer: PeerID, now: UInt64) -> [Action] {
        self.now = now
        credits.remove(peer)
        var actions: [Action] = []
        explodeRuns(runningOn: peer)
        for flightID in flights(on: peer, directOnly: true) {
            retireExecutor(of: flightID)
            flights.modify(flightID) { $0.direct = false }
            lose(flightID, into: &actions)
        }
        if credits.isEmpty { pushWaiting(into: &actions) }
        finish(&actions)
        return actions
    }

    /// The executor of `peer` (in practice this node's own) stopped processing: its credit is
    /// void and it is no longer waited for. Calls it was sent directly still run there.
    public mutating func executorStopped(_ peer: PeerID, now: UInt64) -> [Action] {
        self.now = now
        guard credits.remove(peer) else { return [] }
        var actions: [Action] = []
        if credits.isEmpty { pushWaiting(into: &actions) }
        finish(&actions)
        return actions
    }

    /// `peer` (re)joined: its started notices count again.
    public mutating func peerJoined(_ peer: PeerID, now: UInt64) -> [Action] {
        lostPeers.remove(peer)
        return []
    }

    /// The caller gave up on `call` (its task was cancelled): it completes with
    /// ``RemoteCallError/cancelled(function:)``. When nobody else waits for its item, the item
    /// is removed from the local queue if still there, and its executor told if it started.
    public mutating func cancel(_ call: CallID, now: UInt64) -> [Action] {
        self.now = now
        guard call.caller == localPeer else { return [] }
        explodeRun(holding: call.sequence)
        guard tickets[call.sequence] != nil else { return [] }
        var actions: [Action] = []
        var cancels: [PeerID: [UInt64]] = [:]
        counters.cancellations += 1
        detach(call.sequence, failing: { .cancelled(function: $0) }, cancels: &cancels, into: &actions)
        emit(cancels, into: &actions)
        finish(&actions)
        return actions
    }

    /// The timer fired: calls whose deadline passed fail with ``RemoteCallError/timedOut(function:)``.
    public mutating func tick(now: UInt64) -> [Action] {
        self.now = now
        var actions: [Action] = []
        var cancels: [PeerID: [UInt64]] = [:]
        armedDeadline = nil
        while let top = deadlines.min, top.deadline <= now {
            deadlines.removeMin()
            if let index = runs.index(startingAt: top.ticket), runs[index].deadline == top.deadline {
                explode(runAt: index)  // its calls' deadlines, now in the heap, come up next
                continue
            }
            guard let ticket = tickets[top.ticket], ticket.deadline == top.deadline else { continue }
            counters.timeouts += 1
            detach(top.ticket, failing: { .timedOut(function: $0) }, cancels: &cancels, into: &actions)
        }
        if waitingCount > 0 && now &- waitingSince >= configuration.creditWait {
            // Every executor that granted credit is silent: they are no longer waited for
            // (until they grant again), so later calls do not wait either.
            credits.removeAll()
            pushWaiting(into: &actions)
        }
        emit(cancels, into: &actions)
        finish(&actions)
        return actions
    }

    // MARK: Internals

    private mutating func addTicket(_ sequence: UInt64, _ ticket: Ticket) {
        tickets.append(sequence, ticket)
        if let deadline = ticket.deadline {
            ticketsWithDeadline += 1
            deadlines.insert(Deadline(deadline: deadline, ticket: sequence))
        }
    }

    private mutating func removeTicket(_ sequence: UInt64) -> Ticket? {
        guard let ticket = tickets.remove(sequence) else { return nil }
        if ticket.deadline != nil { ticketsWithDeadline -= 1 }
        return ticket
    }

    /// Sends the flight's current attempt: straight to the executor the spread picks; or,
    /// when executors granted credit but none has any left, keeps it waiting for credit; or
    /// else (or with `toQueue`) pushes it on the queue.
    /// The flight is not in `flights` meanwhile: its caller stores it afterwards, destination
    /// included (one table write per call).
    private mutating func push(_ flightID: UInt64, _ flight: inout Flight, toQueue: Bool = false, into actions: inout [Action]) {
        let best = toQueue ? nil : credits.next()
        if best == nil && !toQueue && !credits.isEmpty {
            if waitingCount == 0 { waitingSince = now }
            flight.held = true
            waiting.append(flightID)
            waitingCount += 1
            counters.heldForCredit += 1
            return
        }
        flight.held = false
        counters.pushes += 1
        if let index = best {
            let executor = credits.take(index)
            flight.executor = executor
            flight.direct = true
            addDirect(flightID, flight, to: executor)
            counters.direct += 1
            return
        }
        let item = CallItem(
            id: CallID(caller: localPeer, sequence: flightID), attempt: flight.attempt,
            function: flight.function, memoize: flight.memoKey != nil, deadline: flight.wallDeadline,
            arguments: flight.arguments
        )
        actions.append(.push(item.id, item: item.unvalidatedBytes(callerBytes: localPeerBytes)))  // validated in call()
    }

    /// Adds a direct call to `executor`'s runs of this input: to the last run when it continues
    /// it (the common case: a batch of calls to one function), else as a new run.
    private mutating func addDirect(_ sequence: UInt64, _ flight: Flight, to executor: PeerID) {
        guard let slot = directOut.lastIndex(where: { $0.peer == executor }) else {
            directOut.append((executor, [newRun(sequence, flight)]))
            return
        }
        let last = directOut[slot].runs.count - 1
        // No local copy of the run: it would share the buffer, and the append would copy it.
        if Self.extends(directOut[slot].runs[last], sequence, flight) {
            directOut[slot].runs[last].append(arguments: flight.arguments)  // in place
        } else {
            directOut[slot].runs.append(newRun(sequence, flight))
        }
    }

    private static func extends(_ run: CallRun, _ sequence: UInt64, _ flight: Flight) -> Bool {
        run.continues(sequence: sequence, attempt: flight.attempt, function: flight.function,
                      memoize: flight.memoKey != nil, deadline: flight.wallDeadline)
            && run.hasRoom(forArguments: flight.arguments.count)
    }

    private func newRun(_ sequence: UInt64, _ flight: Flight) -> CallRun {
        var run = CallRun(caller: localPeer, firstSequence: sequence, attempt: flight.attempt, function: flight.function,
                          memoize: flight.memoKey != nil, deadline: flight.wallDeadline)
        run.append(arguments: flight.arguments)
        return run
    }

    /// Sends waiting flights, oldest first, while credit lasts.
    private mutating func sendWaiting(into actions: inout [Action]) {
        credits.beginInput(calls: Swift.min(waitingCount, credits.totalCredit))
        defer { credits.endInput() }
        while waitingCount > 0, credits.totalCredit > 0, let flightID = waiting.popFirst() {
            guard var flight = flights[flightID], flight.held else { continue }
            waitingCount -= 1
            push(flightID, &flight, into: &actions)
            flights.modify(flightID) { $0 = flight }
        }
    }

    /// Pushes every waiting flight on the queue: credit stopped coming.
    private mutating func pushWaiting(into actions: inout [Action]) {
        while waitingCount > 0, let flightID = waiting.popFirst() {
            guard var flight = flights[flightID], flight.held else { continue }
            waitingCount -= 1
            counters.creditWaitsExpired += 1
            push(flightID, &flight, toQueue: true, into: &actions)
            flights.modify(flightID) { $0 = flight }
        }
        if waitingCount == 0 { waiting = FIFO() }
    }

    /// A waiting flight is over (answered, failed or abandoned): its entry in `waiting` goes
    /// stale; rebuild the list when stale entries dominate.
    private mutating func unwait() {
        waitingCount -= 1
        if waiting.count > 2 * waitingCount + 64 {
            waiting.removeAll { flights[$0]?.held != true }
        }
    }

    /// The direct calls of this input, one message per run (executors in ID order).
    private mutating func emitDirect(into actions: inout [Action]) {
        guard !directOut.isEmpty else { return }
        for (peer, runs) in directOut.sorted(by: { $0.peer < $1.peer }) {
            for run in runs { actions.append(.send(.directRun(run), to: peer)) }
        }
        directOut.removeAll(keepingCapacity: true)
    }

    private mutating func resultArrived(_ sequence: UInt64, _ outcome: CallOutcome, from peer: PeerID, into actions: inout [Action]) {
        if !runs.isEmpty, let index = runs.find(sequence) {
            // A call of a booked run: its executor alone answers it (never retried as a run).
            guard runs[index].executor == peer else {
                counters.refusedResults += 1
                return
            }
            let function = runs.answer(sequence, at: index)
            let result: Result<[UInt8], RemoteCallError>
            if case .success(let bytes) = outcome {
                result = .success(bytes)
            } else {
                result = .failure(RemoteCallError(outcome: outcome, function: function)!)
            }
            actions.append(.complete(CallID(caller: localPeer, sequence: sequence), result))
            return
        }
        guard let flight = flights.remove(sequence) else {
            counters.ignoredResults += 1
            return
        }
        guard accepts(flight, sequence, from: peer) else {
            // Rare (a forgery): put it back rather than look it up twice for every result.
            counters.refusedResults += 1
            flights.append(sequence, flight)
            return
        }
        forget(sequence, flight)
        let result: Result<[UInt8], RemoteCallError>
        if case .success(let bytes) = outcome {
            result = .success(bytes)
            if let key = flight.memoKey { memo.insert(bytes, for: key, cost: key.byteCount + bytes.count) }
        } else {
            result = .failure(RemoteCallError(outcome: outcome, function: flight.function)!)
        }
        for ticket in flight.tickets(of: sequence) where removeTicket(ticket) != nil {
            actions.append(.complete(CallID(caller: localPeer, sequence: ticket), result))
        }
    }

    /// Whether `peer` may deliver the result of flight `flightID`.
    private func accepts(_ flight: Flight, _ flightID: UInt64, from peer: PeerID) -> Bool {
        flight.executor == peer || (!formerExecutors.isEmpty && formerExecutors[flightID]?.contains(peer) == true)
    }

    /// Keeps `peer` able to deliver flight `flightID`'s result without naming it the executor.
    private mutating func remember(_ peer: PeerID, for flightID: UInt64, executor: PeerID?) {
        guard peer != executor else { return }
        var list = formerExecutors[flightID] ?? []
        guard !list.contains(peer), list.count < Self.maxFormerExecutors else { return }
        list.append(peer)
        formerExecutors[flightID] = list
    }

    /// The flight's executor is lost or replaced; its result stays acceptable.
    private mutating func retireExecutor(of flightID: UInt64) {
        guard let executor = flights[flightID]?.executor else { return }
        remember(executor, for: flightID, executor: nil)
        flights.modify(flightID) { $0.executor = nil }
    }

    /// Drops a finished or abandoned flight from the indexes.
    private mutating func forget(_ flightID: UInt64, _ flight: Flight) {
        if flight.held { unwait() }
        if !formerExecutors.isEmpty { formerExecutors[flightID] = nil }
        if let key = flight.memoKey, memoInFlight[key] == flightID { memoInFlight[key] = nil }
    }

    /// The flights `peer` holds (their current attempt named it), ascending. A scan: it runs
    /// only when a link drops or a peer is lost, and keeps the per-call path free of a
    /// per-executor index.
    private func flights(on peer: PeerID, directOnly: Bool) -> [UInt64] {
        flights.sequences { flight in flight.executor == peer && (!directOnly || flight.direct) }
    }

    private mutating func peerLost(_ peer: PeerID) -> [Action] {
        lostPeers.insert(peer)
        credits.remove(peer)
        var actions: [Action] = []
        explodeRuns(runningOn: peer)
        for flightID in flights(on: peer, directOnly: false) {
            retireExecutor(of: flightID)
            lose(flightID, into: &actions)
        }
        if credits.isEmpty { pushWaiting(into: &actions) }
        finish(&actions)
        return actions
    }

    /// The flight's executor is gone: push it again, or fail it when out of retries.
    private mutating func lose(_ flightID: UInt64, into actions: inout [Action]) {
        guard var flight = flights[flightID] else { return }
        if Int(flight.attempt) > configuration.maxRetries {
            flights.remove(flightID)
            forget(flightID, flight)
            let error = RemoteCallError.retriesExhausted(function: flight.function, attempts: Int(flight.attempt))
            for sequence in flight.tickets(of: flightID) where removeTicket(sequence) != nil {
                actions.append(.complete(CallID(caller: localPeer, sequence: sequence), .failure(error)))
            }
            return
        }
        flight.attempt += 1
        if let executor = flight.executor { remember(executor, for: flightID, executor: nil) }
        flight.executor = nil
        flight.direct = false
        counters.retries += 1
        push(flightID, &flight, into: &actions)
        flights.modify(flightID) { $0 = flight }
    }

    /// Fails one ticket; abandons its flight when nobody else waits for it.
    private mutating func detach(
        _ sequence: UInt64, failing error: (String) -> RemoteCallError,
        cancels: inout [PeerID: [UInt64]], into actions: inout [Action]
    ) {
        guard let ticket = removeTicket(sequence), var flight = flights[ticket.flight] else { return }
        actions.append(.complete(CallID(caller: localPeer, sequence: sequence), .failure(error(flight.function))))
        if sequence == ticket.flight { flight.ownTicket = false } else { flight.joined.removeAll { $0 == sequence } }
        guard !flight.ownTicket && flight.joined.isEmpty else {
            flights.modify(ticket.flight) { $0 = flight }
            return
        }
        flights.remove(ticket.flight)
        forget(ticket.flight, flight)
        if let executor = flight.executor {
            cancels[executor, default: []].append(ticket.flight)
        } else if !flight.held {
            actions.append(.removeFromQueue(CallID(caller: localPeer, sequence: ticket.flight)))
        }
    }

    private func emit(_ cancels: [PeerID: [UInt64]], into actions: inout [Action]) {
        for (peer, sequences) in cancels.sorted(by: { $0.key < $1.key }) {
            for chunk in Self.messageChunks(sequences) { actions.append(.send(.cancel(Array(chunk)), to: peer)) }
        }
    }

    /// `elements` in consecutive pieces that fit the entry limit of one message.
    private static func messageChunks<T>(_ elements: [T]) -> [ArraySlice<T>] {
        stride(from: 0, to: elements.count, by: RemoteCallLimits.maxEntriesPerMessage).map {
            elements[$0..<min(elements.count, $0 + RemoteCallLimits.maxEntriesPerMessage)]
        }
    }

    /// Common tail of every input: direct items, capacity signal and timer.
    private mutating func finish(_ actions: inout [Action]) {
        credits.endInput()
        emitDirect(into: &actions)
        if refusedSinceCapacity && outstandingCalls < configuration.maxOutstandingCalls {
            refusedSinceCapacity = false
            actions.append(.capacityAvailable)
        }
        rearm(&actions)
    }

    /// The deadline a heap entry for `sequence` stands for: its ticket's, or its run's (a run's
    /// entry is under its first sequence).
    private func currentDeadline(_ sequence: UInt64) -> UInt64? {
        if let ticket = tickets[sequence] { return ticket.deadline }
        guard let index = runs.index(startingAt: sequence) else { return nil }
        return runs[index].deadline
    }

    /// Explodes every run `executor` runs (see ``explode(runAt:)``).
    private mutating func explodeRuns(runningOn executor: PeerID) {
        // Looked up again each time: taking a record out may compact the book.
        while let index = runs.firstIndex(runningOn: executor) { explode(runAt: index) }
    }

    private mutating func rearm(_ actions: inout [Action]) {
        // Drop stale heap tops (answered or cancelled calls), and rebuild the heap when stale
        // entries dominate, so it stays proportional to the calls that have deadlines.
        while let top = deadlines.min, currentDeadline(top.ticket) != top.deadline { deadlines.removeMin() }
        if deadlines.count > 2 * (ticketsWithDeadline + runs.runsWithDeadline) + 64 {
            deadlines = Heap(tickets.sequences(where: { $0.deadline != nil }).compactMap { sequence in
                tickets[sequence]?.deadline.map { Deadline(deadline: $0, ticket: sequence) }
            } + runs.deadlines.map { Deadline(deadline: $0.deadline, ticket: $0.sequence) })
        }
        var next = deadlines.min?.deadline
        if waitingCount > 0 {
            let expiry = waitingSince &+ configuration.creditWait
            next = Swift.min(next ?? expiry, expiry)
        }
        guard let next else { return }
        if armedDeadline == nil || next < armedDeadline! {
            armedDeadline = next
            actions.append(.armTimer(at: next))
        }
    }
}

/// A call's deadline in the caller's deadline heap, ordered by time, then by call sequence.
struct Deadline: Comparable, Sendable {
    var deadline: UInt64
    var ticket: UInt64

    static func < (a: Deadline, b: Deadline) -> Bool { (a.deadline, a.ticket) < (b.deadline, b.ticket) }
}

/// A set that forgets its oldest members beyond `capacity`.
struct BoundedSet<Element: Hashable & Sendable>: Sendable {
    let capacity: Int
    /// Each member with the number of its insertion, so a stale entry of `order` (for a member
    /// removed and inserted again) is recognised and skipped.
    private var members: [Element: UInt64] = [:]
    private var order: [(element: Element, insertion: UInt64)] = []
    private var head = 0
    private var insertions: UInt64 = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { members.count }

    func contains(_ element: Element) -> Bool { members[element] != nil }

    mutating func insert(_ element: Element) {
        guard members[element] == nil else { return }
        insertions += 1
        members[element] = insertions
        order.append((element, insertions))
        while members.count > capacity, head < order.count {
            let oldest = order[head]
            head += 1
            if members[oldest.element] == oldest.insertion { members[oldest.element] = nil }
        }
        compact()
    }

    mutating func remove(_ element: Element) {
        // Its entry in `order` goes stale and is skipped when it comes up.
        members[element] = nil
        compact()
    }

    private mutating func compact() {
        if head > 64 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        if order.count > 2 * capacity + 64 {
            order = order[head...].filter { members[$0.element] == $0.insertion }
            head = 0
        }
    }
}
