import CP2PQSystem
import Foundation
import Glibc

/// The threads of a node that run synchronous functions (`registerSync`): each takes a run of
/// calls and works it in a loop, with no task per call, then hands the run's outcomes to the
/// reactor at once. Started on first use, ended when the node stops.
///
/// `@unchecked Sendable`: every stored variable is read and written only under `condition`.
final class CallWorkers: @unchecked Sendable {
    /// Threads of the pool.
    let threadCount: Int
    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var head = 0
    private var idle = 0
    private var started = false
    private var stopped = false

    private struct Job {
        var run: ArraySlice<SyncCall>
        var body: @Sendable (ArraySlice<SyncCall>) -> Void
    }

    init(threads: Int) {
        threadCount = max(1, threads)
    }

    /// Queues `runs`, each to be passed to `body` on one worker thread.
    func enqueue(_ runs: [ArraySlice<SyncCall>], _ body: @escaping @Sendable (ArraySlice<SyncCall>) -> Void) {
        condition.lock()
        guard !stopped else {
            condition.unlock()
            return
        }
        for run in runs { jobs.append(Job(run: run, body: body)) }
        let start = !started
        started = true
        // One waiting thread per run is enough; a busy thread takes the rest when it is done.
        if idle > 0 {
            if runs.count == 1 { condition.signal() } else { condition.broadcast() }
        }
        condition.unlock()
        if start {
            for index in 0..<threadCount {
                let thread = Thread { [self] in work(index) }
                thread.stackSize = 1 << 20
                thread.start()
            }
        }
    }

    /// Stops the threads: each ends after the run it works, runs not started are dropped.
    func stop() {
        condition.lock()
        stopped = true
        jobs = []
        head = 0
        condition.broadcast()
        condition.unlock()
    }

    private func work(_ index: Int) {
        // The kernel's name (seen by perf, top and /proc): otherwise a thread started from the
        // reactor inherits "p2pq-reactor".
        _ = "p2pq-sync-\(index)".withCString { p2pq_set_thread_name($0) }
        condition.lock()
        while true {
            while head == jobs.count && !stopped {
                idle += 1
                condition.wait()
                idle -= 1
            }
            if stopped {
                condition.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            }
            condition.unlock()
            job.body(job.run)
            condition.lock()
        }
    }
}
