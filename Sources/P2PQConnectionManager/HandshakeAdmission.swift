/// Limits of ``HandshakeAdmission``. Times are nanoseconds.
public struct HandshakeAdmissionConfiguration: Hashable, Sendable {
    /// Inbound handshakes in progress at once, all sources together.
    public var maxHandshakes: Int
    /// Inbound handshakes in progress at once from one source address.
    public var maxPerSource: Int
    /// How long an inbound connection may take to deliver its first whole handshake message.
    /// A real peer sends it at once; a connection that has not is *stalled*.
    public var firstMessageTimeout: UInt64
    /// How often refusals, evictions and timeouts are summarised (one line per interval).
    public var reportInterval: UInt64
    /// Failed handshakes logged one by one per interval; the rest are only counted.
    public var failuresLoggedPerInterval: Int

    public init(maxHandshakes: Int = 144, maxPerSource: Int = 32, firstMessageTimeout: UInt64 = 1_000_000_000,
                reportInterval: UInt64 = 10_000_000_000, failuresLoggedPerInterval: Int = 5) {
        precondition(maxHandshakes > 0 && maxPerSource > 0, "handshake limits must be positive")
        self.maxHandshakes = maxHandshakes
        self.maxPerSource = maxPerSource
        self.firstMessageTimeout = firstMessageTimeout
        self.reportInterval = reportInterval
        self.failuresLoggedPerInterval = failuresLoggedPerInterval
    }
}

/// What ``HandshakeAdmission`` counted over one report interval.
public struct HandshakeAdmissionReport: Hashable, Sendable {
    /// New connections refused (the source's or the global limit was reached and no stalled
    /// handshake could make room).
    public var refused = 0
    /// Stalled handshakes closed to make room for a new connection.
    public var evicted = 0
    /// Handshakes closed because their first message did not come in time.
    public var timedOut = 0
    /// Handshakes that failed (wrong key, not a p2pq peer, garbage), reported with
    /// ``HandshakeAdmission/failed(_:now:)``; the first few of an interval are logged one by one.
    public var failed = 0
    /// Distinct source addresses among those (at most ``HandshakeAdmission/maxReportedSources``
    /// are told apart).
    public var sources = 0
    /// Nanoseconds the report covers.
    public var interval: UInt64 = 0

    public init() {}

    /// Whether anything was counted.
    public var isEmpty: Bool { refused == 0 && evicted == 0 && timedOut == 0 && failed == 0 }
}

/// Admission of inbound connections to the handshake, as a plain value: no sockets, no clock.
///
/// A connection that sends a byte and stalls costs the node a socket and a handshake slot
/// until a timeout; enough of them would keep real peers out. So:
/// - each inbound connection is admitted with ``admit(_:source:now:)``; at most
///   ``HandshakeAdmissionConfiguration/maxPerSource`` handshakes per source address and
///   ``HandshakeAdmissionConfiguration/maxHandshakes`` in all are in progress;
/// - at either limit the **oldest stalled** handshake (of that source, or of any source)
///   is closed to make room, so a flood of stalled connections cannot keep a real peer out; the
///   new connection is refused only when every handshake in the way has made progress;
/// - a handshake whose first message has not arrived ``HandshakeAdmissionConfiguration/firstMessageTimeout``
///   after admission is closed (``expire(now:)``); one whose first message came
///   (``progressed(_:)``) is then bounded only by the shell's handshake timeout;
/// - refusals, evictions, timeouts and failed handshakes are counted and summarised once per
///   ``HandshakeAdmissionConfiguration/reportInterval`` (``takeReport(now:)``), so an attack
///   costs a log line per interval, not one per connection.
///
/// The shell calls ``finished(_:)`` when a handshake ends either way, and arms a timer for
/// ``nextDeadline``.
public struct HandshakeAdmission<Link: Hashable & Sendable, Source: Hashable & Sendable>: Sendable {
    public enum Decision: Hashable, Sendable {
        /// Start the handshake; first close the stalled handshake `evicting`, if any.
        case admit(evicting: Link?)
        /// Close the new connection without a handshake.
        case refuse
    }

    private struct Entry: Sendable {
        var link: Link
        var source: Source
        var admittedAt: UInt64
        var progressed = false
    }

    public let configuration: HandshakeAdmissionConfiguration
    /// Handshakes in progress, oldest first (at most `maxHandshakes`: linear scans are cheap).
    private var entries: [Entry] = []
    private var perSource: [Source: Int] = [:]
    private var report = HandshakeAdmissionReport()
    /// Everything counted since the start (its `sources` and `interval` stay 0).
    public private(set) var totals = HandshakeAdmissionReport()
    private var reportSources: Set<Source> = []
    private var reportStart: UInt64?
    /// Distinct sources a report tells apart; beyond them it only counts.
    public static var maxReportedSources: Int { 1024 }

    public init(configuration: HandshakeAdmissionConfiguration = HandshakeAdmissionConfiguration()) {
        self.configuration = configuration
    }

    /// Handshakes in progress.
    public var count: Int { entries.count }
    /// Handshakes in progress from `source`.
    public func count(from source: Source) -> Int { perSource[source] ?? 0 }
    /// Whether `link` is tracked (admitted and not finished).
    public func isTracked(_ link: Link) -> Bool { entries.contains { $0.link == link } }

    /// A new inbound connection from `source`.
    public mutating func admit(_ link: Link, source: Source, now: UInt64) -> Decision {
        var evicting: Link?
        if count(from: source) >= configuration.maxPerSource {
            guard let index = entries.firstIndex(where: { !$0.progressed && $0.source == source }) else {
                return refuse(source, now: now)
            }
            evicting = remove(at: index).link
        } else if entries.count >= configuration.maxHandshakes {
            guard let index = entries.firstIndex(where: { !$0.progressed }) else {
                return refuse(source, now: now)
            }
            evicting = remove(at: index).link
        }
        if evicting != nil { count(\.evicted, source, now: now) }
        entries.append(Entry(link: link, source: source, admittedAt: now))
        perSource[source, default: 0] += 1
        return .admit(evicting: evicting)
    }

    /// `link`'s first handshake message arrived whole: it is no longer stalled.
    public mutating func progressed(_ link: Link) {
        if let index = entries.firstIndex(where: { $0.link == link }) { entries[index].progressed = true }
    }

    /// `link`'s handshake ended (completed, failed or closed): it no longer counts.
    public mutating func finished(_ link: Link) {
        if let index = entries.firstIndex(where: { $0.link == link }) { remove(at: index) }
    }

    /// `link`'s handshake failed (the shell closes it). Returns whether to log it on its own
    /// line: the first ``HandshakeAdmissionConfiguration/failuresLoggedPerInterval`` of an
    /// interval are, the rest only go into the report. Works for links not tracked, too.
    public mutating func failed(_ link: Link, source: Source, now: UInt64) -> Bool {
        finished(link)
        count(\.failed, source, now: now)
        return report.failed <= configuration.failuresLoggedPerInterval
    }

    /// The stalled handshakes whose first message is overdue, oldest first: close them.
    public mutating func expire(now: UInt64) -> [Link] {
        var expired: [Link] = []
        // Admission order is deadline order.
        while let index = entries.firstIndex(where: { !$0.progressed }),
              now >= entries[index].admittedAt &+ configuration.firstMessageTimeout {
            let entry = remove(at: index)
            count(\.timedOut, entry.source, now: now)
            expired.append(entry.link)
        }
        return expired
    }

    /// When ``expire(now:)`` or ``takeReport(now:)`` next has something to do.
    public var nextDeadline: UInt64? {
        let stalled = entries.first { !$0.progressed }.map { $0.admittedAt &+ configuration.firstMessageTimeout }
        let reportDue = reportStart.map { $0 &+ configuration.reportInterval }
        switch (stalled, reportDue) {
        case let (a?, b?): return min(a, b)
        case let (a?, nil): return a
        case let (nil, b?): return b
        case (nil, nil): return nil
        }
    }

    /// The counts of the interval that ended by `now`, if anything was counted that was not
    /// logged on its own line already; nil while the interval runs (the first event of a quiet
    /// spell starts one).
    public mutating func takeReport(now: UInt64) -> HandshakeAdmissionReport? {
        guard let start = reportStart, now >= start &+ configuration.reportInterval else { return nil }
        var done = report
        done.sources = reportSources.count
        done.interval = now - start
        report = HandshakeAdmissionReport()
        reportSources = []
        reportStart = nil
        let unlogged = done.refused + done.evicted + done.timedOut + max(0, done.failed - configuration.failuresLoggedPerInterval)
        return unlogged > 0 ? done : nil
    }

    private mutating func refuse(_ source: Source, now: UInt64) -> Decision {
        count(\.refused, source, now: now)
        return .refuse
    }

    private mutating func count(_ field: WritableKeyPath<HandshakeAdmissionReport, Int>, _ source: Source, now: UInt64) {
        if reportStart == nil { reportStart = now }
        report[keyPath: field] += 1
        totals[keyPath: field] += 1
        if reportSources.count < Self.maxReportedSources { reportSources.insert(source) }
    }

    @discardableResult
    private mutating func remove(at index: Int) -> Entry {
        let entry = entries.remove(at: index)
        if let n = perSource[entry.source], n > 1 { perSource[entry.source] = n - 1 } else { perSource[entry.source] = nil }
        return entry
    }
}
