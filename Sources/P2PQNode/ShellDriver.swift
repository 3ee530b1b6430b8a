import DequeModule
import P2PQReactor

/// How every shell performs a machine's actions: one at a time, in order, with one re-entry
/// rule. Actions that arrive while an action is being performed (its handler fed the machine
/// again: a send failed and was reported back, a callback pushed or popped) queue behind
/// those already waiting and are performed after the current one, never inside it. So a
/// handler always sees the effects of the actions before it, and none of the ones after.
final class ShellDriver<Action> {
    private var pending = Deque<Action>()
    private var performing = false
    private let handle: (consuming Action) -> Void
    private let drained: (() -> Void)?

    /// - Parameters:
    ///   - handle: performs one action.
    ///   - whenDrained: runs each time the waiting actions run out, before ``perform(_:)``
    ///     returns; actions it causes are performed (and it runs again) before the return.
    init(handle: @escaping (consuming Action) -> Void, whenDrained: (() -> Void)? = nil) {
        self.handle = handle
        self.drained = whenDrained
    }

    /// Performs `actions` now, or after the current action when called from inside one.
    func perform(_ actions: consuming [Action]) {
        guard !performing else {
            pending.append(contentsOf: actions)
            return
        }
        performing = true
        defer { performing = false }
        // The list is performed from its own storage (no copy into the queue), each action
        // moved out, so nothing here keeps a reference to what an action hands over.
        var batch = actions
        batch.reverse()
        while let action = batch.popLast() { handle(consume action) }
        repeat {
            while let action = pending.popFirst() { handle(consume action) }
            drained?()
        } while !pending.isEmpty
    }
}

/// A shell's "later in this turn": ``schedule()`` runs `body` once, after the handlers of the
/// current loop turn that are still to come and before the turn's end-of-turn step (where
/// links seal what they staged), however often it is scheduled meanwhile. It rides the
/// reactor's submitted-work step: scheduled from an I/O or timer handler, it runs in this
/// turn's step; from a closure or task job of that step, in its next round (at most eight a
/// turn); from the end-of-turn step, in the next turn. Only on the reactor thread.
final class LaterInTurn {
    private let reactor: Reactor
    private let body: () -> Void
    /// A run is scheduled and has not happened yet.
    private(set) var isScheduled = false

    init(reactor: Reactor, body: @escaping () -> Void) {
        self.reactor = reactor
        self.body = body
    }

    /// Runs `body` later in this turn, unless a run is already scheduled.
    func schedule() {
        guard !isScheduled else { return }
        isScheduled = true
        let bound = ReactorBound(self, reactor: reactor)
        reactor.execute { bound.value.runScheduled() }
    }

    /// Runs `body` now; a scheduled run still to come then does nothing (unless scheduled again).
    func runNow() {
        isScheduled = false
        body()
    }

    private func runScheduled() {
        guard isScheduled else { return }
        runNow()
    }
}

/// A machine's one timer on the reactor: ``arm(at:)`` replaces the previous deadline (arming
/// the same deadline again keeps the timer). The timer is disarmed before `fire` runs, so
/// `fire` may arm it again.
final class ShellTimer {
    private let reactor: Reactor
    private var timer: TimerID?
    private var deadline: UInt64 = 0
    private let fire: () -> Void

    init(reactor: Reactor, fire: @escaping () -> Void) {
        self.reactor = reactor
        self.fire = fire
    }

    /// Fires at `deadline` (monotonic nanoseconds) instead of any earlier arming.
    func arm(at deadline: UInt64) {
        if let timer {
            if self.deadline == deadline { return }
            reactor.cancel(timer)
        }
        self.deadline = deadline
        timer = reactor.schedule(at: MonotonicTime(nanoseconds: deadline)) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.fire()
        }
    }

    /// Disarms the timer, if armed.
    func cancel() {
        if let timer { reactor.cancel(timer) }
        timer = nil
    }
}
