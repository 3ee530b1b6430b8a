import Glibc
import P2PQReactor
import Synchronization

/// What Swift concurrency itself costs per unit of work on this machine, with nothing of ours in
/// it: the floor under W2. A remote call made from an async task needs at least one task hop in
/// the caller (the task suspends until its result arrives and is resumed), and a call executed
/// off the reactor needs one task started at the executor. Their CPU cost bounds calls/s from
/// above, whatever the rest of the path costs: two cores give at most 2 / (cost) per second.
///
/// Two measurements, each with `inFlight` units outstanding, on the global concurrent executor
/// and on a node-style reactor used as a task executor (``Reactor`` conforms to `TaskExecutor`):
/// - **task per unit**: a child task per unit, as off-reactor execution starts one per call;
/// - **hop per unit**: `inFlight` tasks, each suspending and being resumed once per unit
///   (`Task.yield()`), as a calling task is once per call.
///
/// CPU is the whole process's (user + system) over the run, divided by the units.
public struct TaskFloorResult: Sendable {
    public var executor: String
    public var units: Int
    public var inFlight: Int
    public var taskMicroseconds: Double
    public var hopMicroseconds: Double
    /// Tasks that ran and hops that returned (the run checks its own work).
    public var tasksRun: Int
    public var hopsDone: Int

    public var json: String {
        func f(_ x: Double) -> String { "\((x * 100).rounded() / 100)" }
        return #"{"workload":"task-floor","executor":"\#(executor)","units":\#(units),"in_flight":\#(inFlight),"#
            + #""task_cpu_us_per_unit":\#(f(taskMicroseconds)),"hop_cpu_us_per_unit":\#(f(hopMicroseconds)),"#
            + #""max_units_per_s_on_2_cores_task":\#(Int(2e6 / taskMicroseconds)),"max_units_per_s_on_2_cores_hop":\#(Int(2e6 / hopMicroseconds))}"#
    }
}

public enum TaskFloor {
    /// Runs both measurements on the global executor, or on a fresh reactor when `onReactor`.
    public static func run(units: Int, inFlight: Int, onReactor: Bool) async throws(ReactorError) -> TaskFloorResult {
        let units = Swift.max(1, units)
        let inFlight = Swift.max(1, Swift.min(inFlight, units))
        var configuration = ReactorConfiguration()
        configuration.threadName = "p2pq-floor"
        let reactor = onReactor ? try Reactor(configuration: configuration) : nil
        defer { reactor?.stop() }
        let executor: (any TaskExecutor)? = reactor

        // The measuring task runs on the same executor, so waiting for a child is no extra hop
        // to another one.
        let counts = Counts()
        let (taskSeconds, hopSeconds, perTask) = await withTaskExecutorPreference(executor) {
            let taskStart = processCPUSeconds()
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<units {
                    if index >= inFlight { await group.next() }
                    group.addTask(executorPreference: executor) { counts.tasks.add(1, ordering: .relaxed) }
                }
            }
            let taskSeconds = processCPUSeconds() - taskStart

            let perTask = units / inFlight
            let hopStart = processCPUSeconds()
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<inFlight {
                    group.addTask(executorPreference: executor) {
                        for _ in 0..<perTask {
                            await Task.yield()
                            counts.hops.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            return (taskSeconds, processCPUSeconds() - hopStart, perTask)
        }
        return TaskFloorResult(
            executor: onReactor ? "reactor" : "global", units: units, inFlight: inFlight,
            taskMicroseconds: taskSeconds * 1e6 / Double(units),
            hopMicroseconds: hopSeconds * 1e6 / Double(perTask * inFlight),
            tasksRun: counts.tasks.load(ordering: .relaxed), hopsDone: counts.hops.load(ordering: .relaxed)
        )
    }
}

private final class Counts: Sendable {
    let tasks = Atomic<Int>(0)
    let hops = Atomic<Int>(0)
}
