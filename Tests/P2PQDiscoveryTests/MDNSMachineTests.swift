import Testing
import P2PQDiscovery
import P2PQTestSupport

let second: UInt64 = 1_000_000_000
let ms: UInt64 = 1_000_000
let local = MDNSAddress(bytes: [127, 0, 0, 1], port: 5353)
let service = DNSName("_p2pqueue._tcp.local")

func configuration(_ n: Int, cluster: String = "c0ffee", port: UInt16 = 7000) -> MDNSConfiguration {
    MDNSConfiguration(instanceName: "node-\(n)", hostName: DNSName("node-\(n).local"), servicePort: port + UInt16(n),
                      addresses: [[127, 0, 0, UInt8(n)]], peerID: "peer\(n)", clusterIdentifier: cluster, protocolVersion: "1")
}

func agent(_ n: Int, _ configure: (inout MDNSConfiguration) -> Void = { _ in }) -> MDNSMachine {
    var config = configuration(n)
    configure(&config)
    return MDNSMachine(configuration: config, randomNumberGenerator: SplitMix64(seed: UInt64(n)))
}

extension [MDNSAction] {
    var multicasts: [DNSMessage] {
        compactMap { if case .sendMulticast(let bytes) = $0 { return try? DNSMessage.decode(bytes) } else { return nil } }
    }
    /// Multicast responses (browse queries left out).
    var responses: [DNSMessage] { multicasts.filter(\.isResponse) }
    var unicasts: [(DNSMessage, MDNSAddress, Int)] {
        compactMap {
            if case .sendUnicast(let bytes, let to) = $0, let m = try? DNSMessage.decode(bytes) { return (m, to, bytes.count) }
            return nil
        }
    }
    var timer: UInt64? {
        compactMap { if case .armTimer(let at) = $0 { return at } else { return nil } }.last
    }
    var discovered: [MDNSPeerHint] {
        compactMap { if case .discovered(let hint) = $0 { return hint } else { return nil } }
    }
    var expired: [String] {
        compactMap { if case .expired(let peer, _) = $0 { return peer } else { return nil } }
    }
}

/// An agent past its announcements (started at 0, ticked at 1 s).
func started(_ n: Int, _ configure: (inout MDNSConfiguration) -> Void = { _ in }) -> MDNSMachine {
    var a = agent(n, configure)
    _ = a.start(now: 0)
    _ = a.tick(now: second)
    return a
}

/// A query as the agent answers it: the packet, then the tick after the shared-record delay.
func respond(_ agent: inout MDNSMachine, _ packet: [UInt8], from source: MDNSAddress = local, now: UInt64) -> [MDNSAction] {
    agent.received(packet, from: source, now: now) + agent.tick(now: now + 120 * ms)
}

func query(_ questions: [DNSQuestion], known: [DNSResourceRecord] = [], id: UInt16 = 0) -> [UInt8] {
    try! DNSMessage(id: id, questions: questions, answers: known).encoded()
}

func response(_ records: [DNSResourceRecord]) -> [UInt8] {
    try! DNSMessage(flags: DNSMessage.responseFlag | DNSMessage.authoritativeFlag, answers: records).encoded()
}

/// An agent's announcement, as another agent receives it.
func announcement(of n: Int, _ configure: (inout MDNSConfiguration) -> Void = { _ in }) -> [UInt8] {
    var other = agent(n, configure)
    guard case .sendMulticast(let bytes) = other.start(now: 0).first else { fatalError("no announcement") }
    return bytes
}

@Suite struct ResponderTests {
    @Test func announcesTwiceOneSecondApartWithEveryRecord() throws {
        var a = agent(1)
        let first = a.start(now: 0)
        let message = try #require(first.multicasts.first)
        #expect(message.isResponse && message.questions.isEmpty)
        #expect(Set(message.answers.map(\.type)) == [.ptr, .srv, .txt, .a])
        #expect(message.answers.count == 5)
        let txt = try #require(message.answers.first { $0.type == .txt })
        #expect(txt.data == .txt([Array("id=peer1".utf8), Array("cluster=c0ffee".utf8), Array("v=1".utf8)]))
        #expect(txt.cacheFlush && message.answers.first { $0.name == service }?.cacheFlush == false)
        let srv = try #require(message.answers.first { $0.type == .srv })
        #expect(srv.data == .srv(priority: 0, weight: 0, port: 7001, target: DNSName("node-1.local")))
        #expect(srv.ttl == 120 && txt.ttl == 4500)

        // The second announcement exactly one second later, then no more.
        var announcements = [UInt64(0)]
        var now: UInt64 = 0
        var timer = first.timer
        for _ in 0..<20 {
            guard let at = timer, at < 10 * second else { break }
            now = at
            let actions = a.tick(now: now)
            if actions.multicasts.contains(where: { $0.isResponse }) { announcements.append(now) }
            timer = actions.timer ?? nil
        }
        #expect(announcements == [0, second])
    }

    @Test func answersOnlyTheQuestionAsked() throws {
        var a = started(1)
        // A shared record: sent after 20–120 ms, not at once.
        #expect(a.received(query([DNSQuestion(name: service, type: .ptr)]), from: local, now: 5 * second).responses.isEmpty)
        #expect(a.tick(now: 5 * second + 19 * ms).responses.isEmpty)
        let reply = try #require(a.tick(now: 5 * second + 120 * ms).responses.first)
        #expect(reply.answers.map(\.data) == [.ptr(service.prepending("node-1"))])
        #expect(reply.additionals.isEmpty && reply.questions.isEmpty)
        // A question for something else gets nothing.
        #expect(a.received(query([DNSQuestion(name: service.prepending("other"), type: .srv)]), from: local, now: 6 * second).responses.isEmpty)
        // ANY for the instance: SRV and TXT.
        let any = a.received(query([DNSQuestion(name: service.prepending("node-1"), type: .any)]), from: local, now: 7 * second)
        #expect(Set(try #require(any.responses.first).answers.map(\.type)) == [.srv, .txt])
    }

    @Test func knownAnswerSuppression() {
        var a = started(1)
        let ptr = DNSResourceRecord(name: service, data: .ptr(service.prepending("node-1")), ttl: 4500)
        var known = ptr
        known.ttl = 2250                       // half the TTL: suppressed
        #expect(respond(&a, query([DNSQuestion(name: service, type: .ptr)], known: [known]), now: 5 * second).responses.isEmpty)
        #expect(a.statistics.suppressed == 1)
        known.ttl = 2249                       // less than half: answered
        #expect(respond(&a, query([DNSQuestion(name: service, type: .ptr)], known: [known]), now: 6 * second).responses.count == 1)
    }

    @Test func sameRecordNotMulticastTwiceInASecond() {
        var a = started(1)
        // SRV (unique) is answered at once, so the times are exact.
        let q = query([DNSQuestion(name: service.prepending("node-1"), type: .srv)])
        #expect(a.received(q, from: local, now: 5 * second).responses.count == 1)
        #expect(a.received(q, from: local, now: 5 * second + 999 * ms).responses.isEmpty)
        #expect(a.statistics.rateLimited == 1)
        #expect(a.received(q, from: local, now: 6 * second).responses.count == 1)
        // A delayed shared answer is checked when it is due: a PTR sent at 7.0x s is not
        // sent again for a query less than a second after.
        let ptr = query([DNSQuestion(name: service, type: .ptr)])
        #expect(respond(&a, ptr, now: 7 * second).responses.count == 1)
        #expect(respond(&a, ptr, now: 7 * second + 800 * ms).responses.isEmpty)
        #expect(a.statistics.rateLimited == 2)
        // The announcement at 1 s is itself rate limited against a reply at 0 s.
        var b = agent(2)
        _ = b.start(now: 0)
        let srvQuery = query([DNSQuestion(name: service.prepending("node-2"), type: .srv)])
        #expect(b.received(srvQuery, from: local, now: 0).responses.isEmpty)
        #expect(b.received(srvQuery, from: local, now: second).responses.count == 1)
        #expect(b.tick(now: second).responses.first?.answers.contains { $0.type == .srv } == false)
    }

    /// §7.4: another node multicast the same shared record meanwhile; ours is not sent.
    @Test func duplicateAnswerSuppression() {
        var a = started(1)
        let services = DNSName("_services._dns-sd._udp.local")
        #expect(a.received(query([DNSQuestion(name: services, type: .ptr)]), from: local, now: 5 * second).responses.isEmpty)
        let theirs = DNSResourceRecord(name: services, data: .ptr(service), ttl: 4500)
        _ = a.received(response([theirs]), from: MDNSAddress(bytes: [127, 0, 0, 2], port: 5353), now: 5 * second + 10 * ms)
        #expect(a.tick(now: 5 * second + 120 * ms).responses.isEmpty)
        #expect(a.statistics.suppressed == 1)
    }

    @Test func unicastQuestionGetsUnicastWhenRecentlyMulticast() throws {
        var a = started(1)
        let qu = query([DNSQuestion(name: service, type: .ptr, unicastResponse: true)])
        let actions = a.received(qu, from: local, now: 2 * second)
        let (reply, to, _) = try #require(actions.unicasts.first)
        #expect(to == local && reply.answers.count == 1 && actions.responses.isEmpty)
        // Not multicast within a quarter of the TTL (4500 s / 4): multicast instead.
        let late = respond(&a, qu, now: 2000 * second)
        #expect(late.responses.count == 1 && late.unicasts.isEmpty)
    }

    @Test func legacyQueryGetsASmallUnicastReply() throws {
        let legacySource = MDNSAddress(bytes: [127, 0, 0, 9], port: 40000)
        var a = started(1)
        let question = DNSQuestion(name: DNSName("node-1.local"), type: .a)
        let (reply, to, _) = try #require(a.received(query([question], id: 77), from: legacySource, now: 5 * second).unicasts.first)
        #expect(to == legacySource && reply.id == 77 && reply.questions == [question])
        #expect(reply.answers.count == 1 && reply.answers[0].ttl == 10 && !reply.answers[0].cacheFlush)

        // Many addresses: the reply stays within 512 bytes and says it is truncated.
        var big = started(2) { $0.addresses = (0..<100).map { [10, 0, UInt8($0 / 256), UInt8($0 % 256)] } }
        let q2 = DNSQuestion(name: DNSName("node-2.local"), type: .a)
        let (truncated, _, size) = try #require(big.received(query([q2], id: 5), from: legacySource, now: 5 * second).unicasts.first)
        #expect(size <= 512 && truncated.isTruncated && truncated.answers.count < 100 && !truncated.answers.isEmpty)
    }

    @Test("A flood of legacy queries gets a bounded number of unicast replies (per record and per source)")
    func legacyQueriesAreRateLimited() throws {
        var a = started(1)
        let questions = [DNSQuestion(name: DNSName("node-1.local"), type: .a),
                         DNSQuestion(name: service, type: .ptr),
                         DNSQuestion(name: DNSName("node-1._p2pqueue._tcp.local"), type: .srv)]
        var replies = 0
        var recordsSent = 0
        // 20,000 queries over 20 s, from 1,000 (possibly forged) sources on ever-changing ports.
        for i in 0..<20_000 {
            let source = MDNSAddress(bytes: [127, 0, UInt8(i % 1000 / 256), UInt8(i % 1000 % 256)],
                                     port: UInt16(10_000 + i % 50_000))
            let actions = a.received(query([questions[i % 3]], id: UInt16(i & 0xFFFF)), from: source,
                                    now: 5 * second + UInt64(i) * ms)
            replies += actions.unicasts.count
            recordsSent += actions.unicasts.reduce(0) { $0 + $1.0.answers.count }
        }
        // Each of the three records at most once a second over 20 s: about 60, never 20,000.
        #expect(replies <= 3 * 21)
        #expect(recordsSent <= 3 * 21)
        #expect(replies >= 3)
        #expect(a.statistics.legacyRateLimited >= 20_000 - 3 * 21)
        // One source asking fast gets one reply per second.
        var b = started(2)
        let asker = MDNSAddress(bytes: [127, 0, 0, 9], port: 40000)
        let q = [DNSQuestion(name: DNSName("node-2.local"), type: .a), DNSQuestion(name: service, type: .ptr)]
        #expect(b.received(query([q[0]], id: 1), from: asker, now: 5 * second).unicasts.count == 1)
        #expect(b.received(query([q[1]], id: 2), from: asker, now: 5 * second + 10 * ms).unicasts.isEmpty)
        #expect(b.received(query([q[1]], id: 3), from: asker, now: 6 * second + 10 * ms).unicasts.count == 1)
    }

    @Test func goodbyeOnStop() throws {
        var a = started(1)
        let goodbye = try #require(a.stop(now: 3 * second).responses.first)
        #expect(goodbye.answers.count == 5 && goodbye.answers.allSatisfy { $0.ttl == 0 })
        #expect(a.tick(now: 4 * second).isEmpty)
        #expect(a.received(query([DNSQuestion(name: service, type: .ptr)]), from: local, now: 5 * second).isEmpty)
        #expect(a.stop(now: 6 * second).isEmpty)
    }

    @Test func offLinkAndMalformedPacketsAreDropped() {
        var a = started(1)
        let q = query([DNSQuestion(name: service, type: .ptr)])
        #expect(a.received(q, from: MDNSAddress(bytes: [10, 0, 0, 1], port: 5353), now: 5 * second).isEmpty)
        #expect(a.received(q, from: MDNSAddress(bytes: Array(repeating: 0, count: 15) + [1], port: 5353), now: 5 * second).isEmpty)
        #expect(a.statistics.droppedOffLink == 2)
        #expect(a.received([1, 2, 3], from: local, now: 5 * second).isEmpty)
        #expect(a.statistics.malformed == 1)
        // The predicate is injectable.
        var b = started(2) { $0.isOnLink = { $0.bytes == [192, 168, 1, 7] } }
        #expect(b.received(q, from: local, now: 5 * second).isEmpty)
        #expect(respond(&b, q, from: MDNSAddress(bytes: [192, 168, 1, 7], port: 5353), now: 5 * second).responses.count == 1)
    }
}

@Suite struct BrowserTests {
    @Test func discoversAPeerFromItsAnnouncement() throws {
        var a = agent(1)
        _ = a.start(now: 0)
        let actions = a.received(announcement(of: 2), from: local, now: second)
        let hint = try #require(actions.discovered.first)
        #expect(hint.peerID == "peer2" && hint.port == 7002 && hint.addresses == [[127, 0, 0, 2]] && hint.protocolVersion == "1")
        // Hearing it again changes nothing.
        #expect(a.received(announcement(of: 2), from: local, now: 2 * second).discovered.isEmpty)
        #expect(a.discovered.count == 1)
    }

    @Test func ignoresOtherClustersItselfAndNonMDNSPorts() {
        var a = agent(1)
        _ = a.start(now: 0)
        #expect(a.received(announcement(of: 2) { $0.clusterIdentifier = "other" }, from: local, now: second).discovered.isEmpty)
        #expect(a.received(announcement(of: 3) { $0.peerID = "peer1" }, from: local, now: second).discovered.isEmpty)
        #expect(a.received(announcement(of: 1), from: local, now: second).discovered.isEmpty)
        #expect(a.received(announcement(of: 4), from: MDNSAddress(bytes: [127, 0, 0, 1], port: 999), now: second).discovered.isEmpty)
        #expect(a.statistics.ignoredResponses == 1)
        #expect(a.discovered.isEmpty)
    }

    @Test func goodbyeExpiresThePeerAfterOneSecond() throws {
        var a = agent(1)
        _ = a.start(now: 0)
        _ = a.received(announcement(of: 2), from: local, now: second)
        var b = agent(2)
        _ = b.start(now: 0)
        guard case .sendMulticast(let goodbye) = b.stop(now: 0).first else { throw Failure("no goodbye") }
        let actions = a.received(goodbye, from: local, now: 2 * second)
        #expect(actions.expired.isEmpty)
        #expect(a.tick(now: 2 * second + 999 * ms).expired.isEmpty)
        #expect(a.tick(now: 3 * second).expired == ["peer2"])
        #expect(a.discovered.isEmpty)
    }

    /// A restarted peer announces a new port with a cache-flush SRV: the peer is reported again
    /// with its new port at once, and the old SRV goes one second later (§10.2).
    @Test func cacheFlushReplacesARestartedPeersAddress() throws {
        var a = agent(1)
        _ = a.start(now: 0)
        #expect(a.received(announcement(of: 2), from: local, now: second).discovered.map(\.port) == [7002])
        let restarted = a.received(announcement(of: 2) { $0.servicePort = 9999 }, from: local, now: 5 * second)
        #expect(restarted.discovered.map(\.port) == [9999])
        let after = a.tick(now: 6 * second)
        #expect(after.discovered.isEmpty && after.expired.isEmpty)
        #expect(a.discovered.values.map(\.port) == [9999])
    }

    @Test func refreshesAt80PercentThenExpiresAtTheTTL() throws {
        var a = agent(1) { $0.initialQueryInterval = 10_000 * second; $0.maxQueryInterval = 10_000 * second }
        _ = a.start(now: 0)
        _ = a.tick(now: 200 * ms)  // the first browse query
        let t0 = second
        _ = a.received(announcement(of: 2), from: local, now: t0)
        // Follow the timer; record refresh queries for the SRV (TTL 120 s) until it expires.
        var refreshes: [UInt64] = []
        var expiredAt: UInt64?
        var now = t0
        var timer = a.tick(now: t0).timer
        for _ in 0..<50 {
            guard let at = timer, at <= t0 + 130 * second else { break }
            now = at
            let actions = a.tick(now: now)
            // (At the TTL the instance lacks its SRV and is resolved again: not a refresh.)
            if now - t0 < 120 * second, actions.multicasts.contains(where: { m in m.questions.contains { $0.type == .srv } }) {
                refreshes.append(now - t0)
            }
            if !actions.expired.isEmpty { expiredAt = now - t0 }
            timer = actions.timer
        }
        #expect(refreshes.count == 4)
        for (refresh, point) in zip(refreshes, [UInt64(80), 85, 90, 95]) {
            #expect((120 * second * point / 100...120 * second * (point + 2) / 100).contains(refresh), "refresh at \(refresh)")
        }
        #expect(expiredAt == 120 * second)
    }

    @Test func browseQueriesBackOffExponentially() {
        var a = agent(1) { $0.maxQueryInterval = 16 * second }
        var timer = a.start(now: 0).timer
        var queries: [UInt64] = []
        for _ in 0..<100 {
            guard let at = timer, at < 100 * second else { break }
            let actions = a.tick(now: at)
            if actions.multicasts.contains(where: { !$0.isResponse }) { queries.append(at) }
            timer = actions.timer
        }
        #expect(queries.count >= 6)
        #expect((20 * ms...120 * ms).contains(queries[0]))
        let gaps = zip(queries.dropFirst(), queries).map { $0 - $1 }
        #expect(Array(gaps.prefix(6)) == [1, 2, 4, 8, 16, 16].map { $0 * second })
    }

    @Test func browseQueryCarriesKnownAnswers() throws {
        var a = agent(1)
        let first = a.start(now: 0)
        _ = a.received(announcement(of: 2), from: local, now: 10 * ms)
        let query = try #require(a.tick(now: first.timer!).multicasts.first { !$0.isResponse })
        #expect(query.questions.map(\.type) == [.ptr])
        #expect(query.answers.map(\.data) == [.ptr(service.prepending("node-2"))])
    }

    /// A PTR alone makes the agent ask for the instance's SRV and TXT, then the host's address.
    @Test func resolvesIncompleteInstances() throws {
        var a = agent(1)
        _ = a.start(now: 0)
        let instance = service.prepending("node-5")
        let host = DNSName("node-5.local")
        _ = a.tick(now: 200 * ms)  // the first browse query
        let first = a.received(response([DNSResourceRecord(name: service, data: .ptr(instance), ttl: 4500)]), from: local, now: second)
        // Due at once (the timer is already armed for the announcement at 1 s).
        #expect(first.discovered.isEmpty)
        let ask = try #require(a.tick(now: second).multicasts.first { !$0.isResponse })
        #expect(Set(ask.questions.map(\.type)) == [.srv, .txt])
        let txt = DNSResourceRecord(name: instance, data: .txt([Array("id=peer5".utf8), Array("cluster=c0ffee".utf8)]), ttl: 4500)
        let srv = DNSResourceRecord(name: instance, data: .srv(priority: 0, weight: 0, port: 9, target: host), ttl: 120)
        let second2 = a.received(response([srv, txt]), from: local, now: 2 * second)
        #expect(second2.discovered.isEmpty)
        let askA = try #require(a.tick(now: 2 * second).multicasts.first { !$0.isResponse })
        #expect(askA.questions.filter { $0.name != service } == [DNSQuestion(name: host, type: .a)])
        let done = a.received(response([DNSResourceRecord(name: host, data: .a([127, 0, 0, 5]), ttl: 120)]), from: local, now: 3 * second)
        #expect(done.discovered.map(\.peerID) == ["peer5"])
    }
}

struct Failure: Error {
    let why: String
    init(_ why: String) { self.why = why }
}
