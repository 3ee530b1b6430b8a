import P2PQRemoteCall
import P2PQWire

/// How long the calls this node executed took, per function: a histogram of powers of two
/// (microseconds), for the dashboard's percentiles. The shell notes each batch of tasks handed
/// to the runners and each batch of results with one clock reading per batch; per call it
/// costs a slot in a window (no hashing) and a counter increment. A plain value.
struct CallLatencies: Sendable {
    /// Bucket `k` counts calls that took less than 2^k µs (and at least 2^(k-1)); the last
    /// one everything longer (over 2^38 µs, about 3 days).
    static let bucketCount = 40
    /// Functions followed; calls of others are not counted.
    static let maxFunctions = 64

    private(set) var names: [String] = []
    private var indexes: [String: Int32] = [:]
    private var lastName: String?
    private var lastIndex: Int32 = -1
    private(set) var counts: [[UInt64]] = []
    private var running = SequenceTable<Running>()

    struct Running: Sendable {
        var function: Int32
        var startedAt: UInt64
    }

    private mutating func index(of function: String) -> Int32 {
        if function == lastName { return lastIndex }
        let index: Int32
        if let known = indexes[function] {
            index = known
        } else if names.count < Self.maxFunctions {
            index = Int32(names.count)
            indexes[function] = index
            names.append(function)
            counts.append([UInt64](repeating: 0, count: Self.bucketCount))
        } else {
            index = -1
        }
        lastName = function
        lastIndex = index
        return index
    }

    /// Tasks handed to run at `now` (monotonic ns).
    mutating func started(_ tasks: [CallTask], now: UInt64) {
        for task in tasks {
            let function = index(of: task.function)
            if function >= 0 { running.append(task.id.rawValue, Running(function: function, startedAt: now)) }
        }
    }

    /// Tasks that ended by `now`.
    mutating func ended(_ outcomes: [(TaskID, CallOutcome)], now: UInt64) {
        for (task, _) in outcomes {
            guard let run = running.remove(task.rawValue) else { continue }
            let micros = (now &- run.startedAt) / 1000
            let bucket = min(Self.bucketCount - 1, micros == 0 ? 0 : 64 - micros.leadingZeroBitCount)
            counts[Int(run.function)][bucket] += 1
        }
    }

    /// Tasks started and not ended yet.
    var runningCount: Int { running.count }

    /// Per function: calls counted and the 50th, 90th and 99th percentiles in milliseconds (the
    /// upper bound of the bucket each falls in).
    func summary() -> [(function: String, count: UInt64, p50: Double, p90: Double, p99: Double)] {
        zip(names, counts).compactMap { name, buckets in
            let total = buckets.reduce(0, +)
            guard total > 0 else { return nil }
            func percentile(_ p: Double) -> Double {
                let rank = UInt64((Double(total) * p).rounded(.up))
                var seen: UInt64 = 0
                for (k, count) in buckets.enumerated() {
                    seen += count
                    if seen >= rank { return Double(UInt64(1) << UInt64(k)) / 1000 }
                }
                return Double(UInt64(1) << UInt64(Self.bucketCount - 1)) / 1000
            }
            return (name, total, percentile(0.5), percentile(0.9), percentile(0.99))
        }
    }
}
