import Testing
import P2PQConnectionManager

private typealias Admission = HandshakeAdmission<Int, String>

@Suite struct HandshakeAdmissionTests {
    @Test("At the per-source limit the source's oldest stalled handshake makes room; progressed ones are never evicted")
    func perSourceEvictsOldestStalled() {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(maxHandshakes: 100, maxPerSource: 3))
        #expect(a.admit(1, source: "x", now: 0) == .admit(evicting: nil))
        #expect(a.admit(2, source: "x", now: 1) == .admit(evicting: nil))
        a.progressed(1)  // a real peer: its first message came
        #expect(a.admit(3, source: "x", now: 2) == .admit(evicting: nil))
        #expect(a.admit(4, source: "x", now: 3) == .admit(evicting: 2))
        #expect(a.admit(5, source: "x", now: 4) == .admit(evicting: 3))
        // Another source is not affected.
        #expect(a.admit(6, source: "y", now: 5) == .admit(evicting: nil))
        #expect(a.count(from: "x") == 3 && a.isTracked(1))
        // Only progressed handshakes in the way: the new connection is refused.
        a.progressed(4)
        a.progressed(5)
        #expect(a.admit(7, source: "x", now: 6) == .refuse)
        a.finished(1)
        #expect(a.admit(8, source: "x", now: 7) == .admit(evicting: nil))
    }

    @Test("At the global limit the oldest stalled handshake of any source makes room")
    func globalEvictsOldestStalled() {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(maxHandshakes: 3, maxPerSource: 3))
        _ = a.admit(1, source: "a", now: 0)
        _ = a.admit(2, source: "b", now: 1)
        _ = a.admit(3, source: "c", now: 2)
        a.progressed(1)
        #expect(a.admit(4, source: "d", now: 3) == .admit(evicting: 2))
        #expect(a.count == 3)
    }

    @Test("500 stalled connections from one address, then a real peer: it is admitted at once, and the rest are bounded")
    func floodThenRealPeer() {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(maxHandshakes: 144, maxPerSource: 32))
        var evicted = 0
        for link in 0..<500 {
            guard case .admit(let victim) = a.admit(link, source: "127.0.0.1", now: UInt64(link)) else {
                Issue.record("refused stalled connection \(link)")
                return
            }
            if victim != nil { evicted += 1 }
        }
        #expect(a.count == 32 && evicted == 468)
        #expect(a.admit(1000, source: "127.0.0.1", now: 600) == .admit(evicting: 468))
        a.progressed(1000)
        // The real peer's handshake survives any number of later stalled connections.
        for link in 2000..<2100 { _ = a.admit(link, source: "127.0.0.1", now: 700) }
        #expect(a.isTracked(1000))
    }

    @Test("A handshake whose first message is overdue expires; one that progressed does not")
    func firstMessageDeadline() {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(firstMessageTimeout: 1 * second, reportInterval: 10 * second))
        _ = a.admit(1, source: "x", now: 0)
        _ = a.admit(2, source: "x", now: 100 * ms)
        _ = a.admit(3, source: "y", now: 200 * ms)
        a.progressed(2)
        #expect(a.nextDeadline == 1 * second)
        #expect(a.expire(now: 999 * ms).isEmpty)
        #expect(a.expire(now: 1 * second) == [1])
        #expect(a.expire(now: 2 * second) == [3])
        #expect(a.isTracked(2) && a.count == 1)
    }

    @Test("Refusals, evictions and timeouts are summarised once per interval, not once per connection")
    func reportSummarises() throws {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(maxHandshakes: 2, maxPerSource: 2,
                                                                         firstMessageTimeout: 1 * second, reportInterval: 10 * second))
        #expect(a.takeReport(now: 0) == nil)
        #expect(a.nextDeadline == nil)
        for link in 0..<361 { _ = a.admit(link, source: "10.0.0.\(link % 7)", now: UInt64(link) * ms) }
        a.progressed(359)
        a.progressed(360)
        #expect(a.admit(999, source: "10.0.0.9", now: 400 * ms) == .refuse)
        #expect(a.takeReport(now: 9 * second) == nil)  // the interval (from the first eviction, at 2 ms) runs
        #expect(a.nextDeadline == 10 * second + 2 * ms)
        let taken = a.takeReport(now: 10 * second + 2 * ms)
        let report = try #require(taken)
        #expect(report.evicted == 359 && report.refused == 1 && report.timedOut == 0)
        #expect(report.sources == 8 && report.interval == 10 * second)
        // A quiet spell reports nothing and arms nothing.
        #expect(a.takeReport(now: 30 * second) == nil)
        a.finished(359)
        a.finished(360)
        #expect(a.nextDeadline == nil)
    }

    @Test("Failed handshakes: the first few of an interval are logged one by one, the rest only summarised")
    func failuresAreRateLimited() throws {
        var a = Admission(configuration: HandshakeAdmissionConfiguration(reportInterval: 10 * second, failuresLoggedPerInterval: 5))
        var logged = 0
        for link in 0..<361 {
            _ = a.admit(link, source: "x", now: UInt64(link) * ms)
            if a.failed(link, source: "x", now: UInt64(link) * ms) { logged += 1 }
        }
        #expect(logged == 5 && a.count == 0)
        let taken = a.takeReport(now: 11 * second)
        let report = try #require(taken)
        #expect(report.failed == 361 && a.totals.failed == 361)
        // A single wrong-key peer: logged on its own line, no summary after it.
        let single = a.failed(999, source: "y", now: 20 * second)
        #expect(single)
        let after = a.takeReport(now: 31 * second)
        #expect(after == nil)
    }
}
