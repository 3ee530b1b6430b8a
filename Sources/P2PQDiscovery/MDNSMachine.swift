/// An mDNS responder and DNS-SD browser for one service type, as a plain value.
///
/// No sockets, clocks or threads: every input carries `now` (monotonic nanoseconds) and
/// returns the ``MDNSAction``s the shell performs in order. The shell owns one UDP socket
/// joined to 224.0.0.251 and one timer.
///
/// ## Inputs
/// - ``start(now:)`` announces this node's records and starts browsing.
/// - ``received(_:from:now:)`` for every datagram. Sources that fail the on-link predicate
///   are dropped before decoding; malformed packets are counted and dropped.
/// - ``tick(now:)`` when the timer armed by `.armTimer(at:)` fires.
/// - ``stop(now:)`` sends goodbyes (TTL 0); then every input returns nothing.
///
/// ## Responder (RFC 6762)
/// Records: `_services._dns-sd._udp.local PTR <type>`, `<type> PTR <instance>` (shared),
/// `<instance> SRV 0 0 <port> <host>`, `<instance> TXT id= cluster= v=`, `<host> A` (unique,
/// with the cache-flush bit). It announces them `announcements` times (1 s apart, doubling),
/// answers only the questions asked (no additional records), leaves out what the query lists as
/// known answers with at least half the TTL left (§7.1), never multicasts a record twice within
/// a second (§6), multicasts unique records at once and shared ones after a random 20–120 ms
/// (dropping those another responder multicast meanwhile, §7.4), replies by unicast to a QU question whose records were multicast within a
/// quarter of their TTL (§5.4), and answers legacy queries (source port other than the mDNS
/// port) by unicast with the query's ID and questions, TTLs of at most 10 s and at most
/// `legacyReplyLimit` bytes (§6.7). Legacy replies are rate-limited like multicast answers, so
/// a flood of queries (perhaps with forged sources) cannot turn the node into an amplifier: a
/// record goes into a legacy reply at most once per `multicastRateLimit`, and a source address
/// gets at most one legacy reply per `multicastRateLimit` (tracking at most
/// `maxLegacySources` sources). Names carry the PeerID, so they are unique without probing.
///
/// ## Browser
/// Browse queries for the PTR of the service type, after 20–120 ms, then 1 s, 2 s, 4 s ... up
/// to `maxQueryInterval`, carrying known answers. Records from responses are cached with their
/// TTLs, refreshed by queries at 80, 85, 90 and 95 % of the TTL (plus up to 2 %, §5.2) and
/// dropped when it runs out; a goodbye makes a record expire one second later (§10.1), a
/// cache-flush record does the same to older records of its name and type (§10.2). Instances
/// without SRV, TXT or address are resolved by queries (1 s, doubling up to 60 s). An instance
/// with its PTR, SRV, TXT and an A record, this cluster's identifier and another PeerID is
/// reported once as `.discovered` (again when its address changes) and as `.expired` when a
/// record it needs goes.
public struct MDNSMachine: Sendable {
    public let configuration: MDNSConfiguration
    public private(set) var statistics = MDNSStatistics()
    public private(set) var isStarted = false
    public private(set) var isStopped = false
    /// The peers reported as discovered and not expired, by instance name.
    public private(set) var discovered: [DNSName: MDNSPeerHint] = [:]

    private var random: any RandomNumberGenerator & Sendable
    private let own: [DNSResourceRecord]
    /// When each of `own` was last multicast.
    private var lastMulticast: [UInt64?]
    /// When each of `own` last went into a legacy (unicast) reply.
    private var lastLegacyReply: [UInt64?]
    /// When each source address last got a legacy reply (at most `maxLegacySources`).
    private var legacySources: [[UInt8]: UInt64] = [:]
    private var announcementsSent = 0
    private var nextAnnouncement: UInt64?
    private var nextBrowse: UInt64?
    private var browseInterval: UInt64
    private var cache: [CacheKey: CacheEntry] = [:]
    private var resolving: [QuestionKey: Retry] = [:]
    private var armedDeadline: UInt64?
    /// Shared records (PTRs) waiting for their random 20–120 ms answer delay (§6).
    private var delayedAnswers: (due: UInt64, indices: Set<Int>)?

    static let second: UInt64 = 1_000_000_000
    /// Refresh queries at these per mille of the TTL (RFC 6762 §5.2).
    static let refreshPoints: [UInt64] = [800, 850, 900, 950]
    static let servicesName = DNSName("_services._dns-sd._udp.local")
    static let legacyTTLCap: UInt32 = 10
    static let maxResolveInterval: UInt64 = 60 * second

    struct CacheKey: Hashable, Sendable {
        var name: DNSName
        var data: DNSRecordData
    }

    struct CacheEntry: Sendable {
        var record: DNSResourceRecord
        var receivedAt: UInt64
        var expiresAt: UInt64
        /// Next refresh query, nil when none is left (or after a goodbye).
        var refreshAt: UInt64?
        var refreshesDone = 0
    }

    struct QuestionKey: Hashable, Sendable {
        var name: DNSName
        var type: DNSRecordType
    }

    struct Retry: Sendable {
        var due: UInt64
        var interval: UInt64
    }

    /// An agent announcing and browsing as `configuration` says; `randomNumberGenerator` draws
    /// its answer delays and query jitter (its only randomness: a seeded one replays a run).
    public init(configuration: MDNSConfiguration,
                randomNumberGenerator: any RandomNumberGenerator & Sendable) {
        precondition(configuration.announcements >= 1, "announcements must be positive")
        precondition(configuration.initialQueryInterval > 0 && configuration.initialQueryInterval <= configuration.maxQueryInterval,
                     "query intervals must be positive and ordered")
        self.configuration = configuration
        random = randomNumberGenerator
        browseInterval = configuration.initialQueryInterval
        let instance = configuration.instanceFullName
        let txt: [[UInt8]] = [
            Array("id=\(configuration.peerID)".utf8),
            Array("cluster=\(configuration.clusterIdentifier)".utf8),
            Array("v=\(configuration.protocolVersion)".utf8),
        ]
        var records = [
            DNSResourceRecord(name: Self.servicesName, data: .ptr(configuration.serviceType), ttl: configuration.otherRecordTTL),
            DNSResourceRecord(name: configuration.serviceType, data: .ptr(instance), ttl: configuration.otherRecordTTL),
            DNSResourceRecord(name: instance, data: .srv(priority: 0, weight: 0, port: configuration.servicePort,
                                                         target: configuration.hostName),
                              ttl: configuration.hostRecordTTL, cacheFlush: true),
            DNSResourceRecord(name: instance, data: .txt(txt), ttl: configuration.otherRecordTTL, cacheFlush: true),
        ]
        for address in configuration.addresses {
            records.append(DNSResourceRecord(name: configuration.hostName, data: .a(address),
                                             ttl: configuration.hostRecordTTL, cacheFlush: true))
        }
        own = records
        lastMulticast = Array(repeating: nil, count: records.count)
        lastLegacyReply = Array(repeating: nil, count: records.count)
    }

    /// This node's records, as announced.
    public var ownRecords: [DNSResourceRecord] { own }

    // MARK: Inputs

    /// Announces (the first announcement goes out now) and schedules the first browse query.
    public mutating func start(now: UInt64) -> [MDNSAction] {
        guard !isStarted, !isStopped else { return [] }
        isStarted = true
        var actions: [MDNSAction] = []
        announce(now: now, into: &actions)
        nextBrowse = now + 20_000_000 + UInt64.random(in: 0...100_000_000, using: &random)
        rearm(&actions)
        return actions
    }

    /// A datagram arrived from `source`.
    public mutating func received(_ packet: [UInt8], from source: MDNSAddress, now: UInt64) -> [MDNSAction] {
        guard isStarted, !isStopped else { return [] }
        guard configuration.isOnLink(source) else {
            statistics.droppedOffLink += 1
            return []
        }
        let message: DNSMessage
        switch Result(catching: { () throws(DNSError) in try DNSMessage.decode(packet) }) {
        case .success(let decoded): message = decoded
        case .failure:
            statistics.malformed += 1
            return []
        }
        // Other opcodes are not mDNS (§18.3); a non-zero rcode must be ignored (§18.11).
        guard message.opcode == 0, message.responseCode == 0 else { return [] }
        var actions: [MDNSAction] = []
        if message.isResponse {
            guard source.port == configuration.mdnsPort else {
                statistics.ignoredResponses += 1
                return []
            }
            suppressDuplicates(message.answers)
            learn(message.answers + message.additionals, now: now, into: &actions)
            planResolution(now: now)
        } else {
            answer(message, from: source, now: now, into: &actions)
        }
        rearm(&actions)
        return actions
    }

    /// The timer fired: announcements, browse, refresh and resolve queries, expiry.
    public mutating func tick(now: UInt64) -> [MDNSAction] {
        guard isStarted, !isStopped else { return [] }
        if let armed = armedDeadline, armed <= now { armedDeadline = nil }
        var actions: [MDNSAction] = []
        if let due = nextAnnouncement, due <= now { announce(now: now, into: &actions) }
        if let delayed = delayedAnswers, delayed.due <= now {
            delayedAnswers = nil
            // The rate limit holds at sending time.
            let due = delayed.indices.sorted().filter { index in
                if mayMulticast(index, now: now) { return true }
                statistics.rateLimited += 1
                return false
            }
            multicastResponse(due, now: now, into: &actions)
        }

        var questions: [DNSQuestion] = []
        var asked = Set<QuestionKey>()
        func ask(_ name: DNSName, _ type: DNSRecordType) {
            if asked.insert(QuestionKey(name: name, type: type)).inserted {
                questions.append(DNSQuestion(name: name, type: type))
            }
        }
        if let due = nextBrowse, due <= now {
            ask(configuration.serviceType, .ptr)
            nextBrowse = now + browseInterval
            let cap = configuration.maxQueryInterval
            browseInterval = browseInterval > cap / 2 ? cap : browseInterval * 2
        }

        // Expiry first, so a refresh is not asked for a record that is gone.
        var changed = false
        for (key, entry) in cache where entry.expiresAt <= now {
            cache[key] = nil
            changed = true
        }
        for key in cache.keys.sorted(by: { $0.name.description < $1.name.description }) {
            guard var entry = cache[key], let refresh = entry.refreshAt, refresh <= now else { continue }
            entry.refreshesDone += 1
            entry.refreshAt = refreshTime(entry.receivedAt, ttl: entry.record.ttl, point: entry.refreshesDone)
            cache[key] = entry
            if isWanted(entry.record) { ask(entry.record.name, entry.record.type) }
        }
        if changed { reconcile(into: &actions) }

        planResolution(now: now)
        for (key, retry) in resolving.sorted(by: { $0.key.name.description < $1.key.name.description }) where retry.due <= now {
            ask(key.name, key.type)
            resolving[key] = Retry(due: now + retry.interval, interval: min(Self.maxResolveInterval, retry.interval * 2))
        }

        if !questions.isEmpty { sendQuery(questions, now: now, into: &actions) }
        rearm(&actions)
        return actions
    }

    /// Multicasts every record with TTL 0 (goodbye) and stops.
    public mutating func stop(now: UInt64) -> [MDNSAction] {
        guard !isStopped else { return [] }
        isStopped = true
        delayedAnswers = nil
        guard isStarted else { return [] }
        let goodbyes = own.map { record -> DNSResourceRecord in
            var record = record
            record.ttl = 0
            return record
        }
        var actions: [MDNSAction] = []
        let message = DNSMessage(flags: DNSMessage.responseFlag | DNSMessage.authoritativeFlag, answers: goodbyes)
        if let bytes = try? message.encoded() { actions.append(.sendMulticast(bytes)) }
        return actions
    }

    // MARK: Responder

    private mutating func announce(now: UInt64, into actions: inout [MDNSAction]) {
        let indices = own.indices.filter { mayMulticast($0, now: now) }
        multicastResponse(indices, now: now, into: &actions)
        announcementsSent += 1
        if announcementsSent < configuration.announcements {
            nextAnnouncement = now + configuration.announceInterval << UInt64(min(announcementsSent - 1, 16))
        } else {
            nextAnnouncement = nil
        }
    }

    private func mayMulticast(_ index: Int, now: UInt64) -> Bool {
        guard let last = lastMulticast[index] else { return true }
        return now >= last + configuration.multicastRateLimit
    }

    private mutating func multicastResponse(_ indices: [Int], now: UInt64, into actions: inout [MDNSAction]) {
        guard !indices.isEmpty else { return }
        let message = DNSMessage(flags: DNSMessage.responseFlag | DNSMessage.authoritativeFlag,
                                 answers: indices.map { own[$0] })
        guard let bytes = try? message.encoded(), bytes.count <= configuration.maxPacketSize else { return }
        for index in indices { lastMulticast[index] = now }
        actions.append(.sendMulticast(bytes))
    }

    private func matches(_ question: DNSQuestion, _ record: DNSResourceRecord) -> Bool {
        (question.recordClass == DNSClass.internet || question.recordClass == DNSClass.any)
            && (question.type == .any || question.type == record.type)
            && question.name == record.name
    }

    private mutating func answer(_ query: DNSMessage, from source: MDNSAddress, now: UInt64, into actions: inout [MDNSAction]) {
        let legacy = source.port != configuration.mdnsPort
        var multicast: [Int] = []
        var unicast: [Int] = []
        var answeredQuestions: [DNSQuestion] = []
        var chosen = Set<Int>()
        for question in query.questions {
            var answeredThis = false
            for (index, record) in own.enumerated() where matches(question, record) {
                answeredThis = true
                guard !chosen.contains(index) else { continue }
                // Known-answer suppression (§7.1): the querier has it with at least half its TTL.
                if query.answers.contains(where: { $0.name == record.name && $0.data == record.data && $0.ttl >= record.ttl / 2 }) {
                    statistics.suppressed += 1
                    continue
                }
                chosen.insert(index)
                if legacy {
                    if let last = lastLegacyReply[index], now < last + configuration.multicastRateLimit {
                        statistics.rateLimited += 1
                        statistics.legacyRateLimited += 1
                    } else {
                        unicast.append(index)
                    }
                } else if question.unicastResponse, let last = lastMulticast[index],
                          now < last + UInt64(record.ttl) * Self.second / 4 {
                    unicast.append(index)
                } else if mayMulticast(index, now: now) {
                    multicast.append(index)
                } else {
                    statistics.rateLimited += 1
                }
            }
            if answeredThis { answeredQuestions.append(question) }
        }
        // Unique records are answered at once; shared ones (several nodes may hold the same
        // PTR) after a random 20–120 ms, so that answers from many nodes do not collide (§6).
        multicastResponse(multicast.filter { own[$0].cacheFlush }, now: now, into: &actions)
        let shared = multicast.filter { !own[$0].cacheFlush }
        if !shared.isEmpty {
            let due = delayedAnswers?.due ?? now + 20_000_000 + UInt64.random(in: 0...100_000_000, using: &random)
            delayedAnswers = (due, (delayedAnswers?.indices ?? []).union(shared))
        }
        guard !unicast.isEmpty else { return }
        if legacy {
            guard admitLegacyReply(to: source, now: now) else {
                statistics.rateLimited += unicast.count
                statistics.legacyRateLimited += unicast.count
                return
            }
            for index in unicast { lastLegacyReply[index] = now }
            legacyReply(to: query, questions: answeredQuestions, records: unicast.map { own[$0] }, source: source, into: &actions)
        } else {
            let message = DNSMessage(flags: DNSMessage.responseFlag | DNSMessage.authoritativeFlag,
                                     answers: unicast.map { own[$0] })
            if let bytes = try? message.encoded(), bytes.count <= configuration.maxPacketSize {
                actions.append(.sendUnicast(bytes, to: source))
            }
        }
    }

    /// Whether `source` may have a legacy reply now (one per `multicastRateLimit`); records it.
    /// When the table is full, sources past their interval are forgotten; if none is, the
    /// reply is refused rather than the table grown.
    private mutating func admitLegacyReply(to source: MDNSAddress, now: UInt64) -> Bool {
        let limit = configuration.multicastRateLimit
        if let last = legacySources[source.bytes], now < last + limit { return false }
        if legacySources[source.bytes] == nil, legacySources.count >= configuration.maxLegacySources {
            legacySources = legacySources.filter { now < $0.value + limit }
            guard legacySources.count < configuration.maxLegacySources else { return false }
        }
        legacySources[source.bytes] = now
        return true
    }

    /// A reply a plain DNS resolver understands (§6.7): its ID and questions, short TTLs, no
    /// cache-flush bits, within `legacyReplyLimit` bytes (records that do not fit are left out
    /// and TC is set; nothing is sent if not even one fits).
    private func legacyReply(to query: DNSMessage, questions: [DNSQuestion], records: [DNSResourceRecord],
                             source: MDNSAddress, into actions: inout [MDNSAction]) {
        var answers = records.map { record -> DNSResourceRecord in
            var record = record
            record.ttl = min(record.ttl, Self.legacyTTLCap)
            record.cacheFlush = false
            return record
        }
        var flags = DNSMessage.responseFlag | DNSMessage.authoritativeFlag
        while !answers.isEmpty {
            let message = DNSMessage(id: query.id, flags: flags, questions: questions, answers: answers)
            if let bytes = try? message.encoded(), bytes.count <= configuration.legacyReplyLimit {
                actions.append(.sendUnicast(bytes, to: source))
                return
            }
            answers.removeLast()
            flags |= DNSMessage.truncatedFlag
        }
    }

    /// Duplicate-answer suppression (§7.4): another responder just multicast a record we were
    /// about to send, with at least half our TTL, so ours would add nothing.
    private mutating func suppressDuplicates(_ answers: [DNSResourceRecord]) {
        guard var delayed = delayedAnswers else { return }
        for index in delayed.indices {
            let record = own[index]
            if answers.contains(where: { $0.name == record.name && $0.data == record.data && $0.ttl >= record.ttl / 2 }) {
                delayed.indices.remove(index)
                statistics.suppressed += 1
            }
        }
        delayedAnswers = delayed.indices.isEmpty ? nil : delayed
    }

    // MARK: Browser

    private mutating func sendQuery(_ questions: [DNSQuestion], now: UInt64, into actions: inout [MDNSAction]) {
        // Known answers (§7.1): our cached PTRs for the service type with more than half their TTL left.
        var known: [DNSResourceRecord] = []
        if questions.contains(where: { $0.type == .ptr && $0.name == configuration.serviceType }) {
            for entry in cache.values where entry.record.type == .ptr && entry.record.name == configuration.serviceType {
                let total = UInt64(entry.record.ttl) * Self.second
                guard entry.expiresAt > now, entry.expiresAt - now > total / 2 else { continue }
                var record = entry.record
                record.ttl = UInt32((entry.expiresAt - now) / Self.second)
                known.append(record)
            }
            known.sort { $0.data.ptrTarget.description < $1.data.ptrTarget.description }
        }
        while true {
            let message = DNSMessage(questions: questions, answers: known)
            if let bytes = try? message.encoded(), bytes.count <= configuration.maxPacketSize {
                actions.append(.sendMulticast(bytes))
                return
            }
            // Too many known answers for one packet: list fewer (a TC continuation is not worth it).
            if known.isEmpty { return }
            known.removeLast(max(1, known.count / 2))
        }
    }

    /// Records worth caching: our service's PTRs, SRV and TXT of its instances, and addresses.
    private func isWanted(_ record: DNSResourceRecord) -> Bool {
        switch record.data {
        case .ptr: return record.name == configuration.serviceType
        case .srv, .txt: return isInstanceName(record.name)
        case .a, .aaaa: return true
        case .opaque: return false
        }
    }

    private func isInstanceName(_ name: DNSName) -> Bool {
        name.labels.count == configuration.serviceType.labels.count + 1
            && DNSName(labels: Array(name.labels.dropFirst())) == configuration.serviceType
    }

    /// Hosts named by cached SRV records.
    private var srvTargets: Set<DNSName> {
        var targets = Set<DNSName>()
        for entry in cache.values {
            if case .srv(_, _, _, let target) = entry.record.data { targets.insert(target) }
        }
        return targets
    }

    private mutating func learn(_ records: [DNSResourceRecord], now: UInt64, into actions: inout [MDNSAction]) {
        let ownInstance = configuration.instanceFullName
        // Addresses last, so they can join SRV targets from the same packet.
        let ordered = records.filter { !$0.type.isAddress } + records.filter { $0.type.isAddress }
        var changed = false
        var targets: Set<DNSName>?
        for record in ordered where record.recordClass == DNSClass.internet && isWanted(record) {
            // Our own records come back through multicast loopback.
            if record.name == ownInstance || record.name == configuration.hostName { continue }
            if case .ptr(ownInstance) = record.data { continue }
            if record.type.isAddress {
                if targets == nil { targets = srvTargets }
                guard targets!.contains(record.name) else { continue }
            }
            let key = CacheKey(name: record.name, data: record.data)
            if record.ttl == 0 {
                // Goodbye: expire in one second (§10.1), so a reannouncement can still save it.
                if var entry = cache[key] {
                    entry.expiresAt = min(entry.expiresAt, now + Self.second)
                    entry.refreshAt = nil
                    cache[key] = entry
                }
                continue
            }
            if record.cacheFlush {
                // §10.2: older records of the same name and type go in one second.
                for (other, entry) in cache where other.name == record.name && other.data.type == record.type
                    && other.data != record.data && entry.receivedAt + Self.second <= now {
                    cache[other]!.expiresAt = min(entry.expiresAt, now + Self.second)
                    cache[other]!.refreshAt = nil
                }
            }
            if cache[key] == nil && cache.count >= configuration.maxCacheEntries { continue }
            let ttl = UInt64(record.ttl) * Self.second
            var stored = record
            stored.cacheFlush = false
            if case .srv = record.data { targets = nil }
            cache[key] = CacheEntry(record: stored, receivedAt: now, expiresAt: now + ttl,
                                    refreshAt: refreshTime(now, ttl: record.ttl, point: 0))
            changed = true
        }
        if changed { reconcile(into: &actions) }
    }

    /// The `point`-th refresh time (80, 85, 90, 95 % of the TTL, plus up to 2 %), or nil after the last.
    private mutating func refreshTime(_ receivedAt: UInt64, ttl: UInt32, point: Int) -> UInt64? {
        guard point < Self.refreshPoints.count else { return nil }
        let total = UInt64(ttl) * Self.second
        let permille = Self.refreshPoints[point] + UInt64.random(in: 0...20, using: &random)
        return receivedAt + total / 1000 * permille
    }

    /// Queries for what incomplete instances lack; forgets questions that got their answer.
    private mutating func planResolution(now: UInt64) {
        var wanted = Set<QuestionKey>()
        for entry in cache.values {
            guard entry.record.name == configuration.serviceType, case .ptr(let instance) = entry.record.data else { continue }
            let srv = cache.values.first { $0.record.name == instance && $0.record.type == .srv }
            let txt = cache.values.first { $0.record.name == instance && $0.record.type == .txt }
            if srv == nil { wanted.insert(QuestionKey(name: instance, type: .srv)) }
            if txt == nil { wanted.insert(QuestionKey(name: instance, type: .txt)) }
            if let txt, parseTXT(txt.record.data)["cluster"] != configuration.clusterIdentifier { continue }
            if case .srv(_, _, _, let target)? = srv?.record.data,
               !cache.values.contains(where: { $0.record.name == target && $0.record.type == .a }) {
                wanted.insert(QuestionKey(name: target, type: .a))
            }
        }
        for key in resolving.keys where !wanted.contains(key) { resolving[key] = nil }
        for key in wanted where resolving[key] == nil {
            resolving[key] = Retry(due: now, interval: configuration.initialQueryInterval)
        }
    }

    private func parseTXT(_ data: DNSRecordData) -> [String: String] {
        guard case .txt(let strings) = data else { return [:] }
        var pairs: [String: String] = [:]
        for string in strings {
            let text = String(decoding: string, as: UTF8.self)
            guard let equals = text.firstIndex(of: "="), equals != text.startIndex else { continue }
            let key = text[..<equals].lowercased()
            // RFC 6763 §6.4: only the first occurrence of a key counts.
            if pairs[key] == nil { pairs[key] = String(text[text.index(after: equals)...]) }
        }
        return pairs
    }

    /// The peer an instance describes, if its records are complete and it belongs here.
    private func hint(for instance: DNSName) -> MDNSPeerHint? {
        guard cache[CacheKey(name: configuration.serviceType, data: .ptr(instance))] != nil,
              let srv = newest(instance, .srv), case .srv(_, _, let port, let target) = srv.record.data,
              let txt = newest(instance, .txt)
        else { return nil }
        let pairs = parseTXT(txt.record.data)
        guard pairs["cluster"] == configuration.clusterIdentifier,
              let peerID = pairs["id"], !peerID.isEmpty, peerID != configuration.peerID, port != 0 else { return nil }
        let addresses = cache.values.compactMap { entry -> [UInt8]? in
            guard entry.record.name == target, case .a(let address) = entry.record.data else { return nil }
            return address
        }.sorted { $0.lexicographicallyPrecedes($1) }
        guard !addresses.isEmpty else { return nil }
        return MDNSPeerHint(peerID: peerID, instance: instance, host: target, addresses: addresses, port: port,
                            protocolVersion: pairs["v"] ?? "")
    }

    /// The most recently received record of a name and type (while a cache-flush replacement
    /// and the record it replaces coexist, the replacement wins).
    private func newest(_ name: DNSName, _ type: DNSRecordType) -> CacheEntry? {
        var best: CacheEntry?
        for entry in cache.values where entry.record.name == name && entry.record.type == type {
            if let current = best {
                let newer = (entry.receivedAt, entry.record.data.tieBreak) > (current.receivedAt, current.record.data.tieBreak)
                if !newer { continue }
            }
            best = entry
        }
        return best
    }

    /// Compares what the cache says now with what was reported, and reports the difference.
    private mutating func reconcile(into actions: inout [MDNSAction]) {
        var instances = Set(discovered.keys)
        for entry in cache.values where entry.record.name == configuration.serviceType {
            if case .ptr(let instance) = entry.record.data { instances.insert(instance) }
        }
        for instance in instances.sorted(by: { $0.description < $1.description }) {
            let current = hint(for: instance)
            let previous = discovered[instance]
            if current == previous { continue }
            if let previous, current == nil || current!.peerID != previous.peerID {
                actions.append(.expired(peerID: previous.peerID, instance: instance))
            }
            discovered[instance] = current
            if let current { actions.append(.discovered(current)) }
        }
    }

    // MARK: Timer

    private var nextDeadline: UInt64? {
        var deadline = [nextAnnouncement, nextBrowse, delayedAnswers?.due].compactMap { $0 }.min()
        func consider(_ time: UInt64) { deadline = min(deadline ?? time, time) }
        for entry in cache.values {
            consider(entry.expiresAt)
            if let refresh = entry.refreshAt { consider(refresh) }
        }
        for retry in resolving.values { consider(retry.due) }
        return deadline
    }

    private mutating func rearm(_ actions: inout [MDNSAction]) {
        guard let deadline = nextDeadline, deadline != armedDeadline else { return }
        armedDeadline = deadline
        actions.append(.armTimer(at: deadline))
    }
}

extension DNSRecordData {
    /// A deterministic order among records received at the same moment.
    var tieBreak: String {
        switch self {
        case .srv(let priority, let weight, let port, let target): "\(priority) \(weight) \(port) \(target)"
        case .txt(let strings): strings.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\u{0}")
        default: ""
        }
    }

    /// The target of a PTR, else the root name.
    var ptrTarget: DNSName {
        if case .ptr(let target) = self { return target }
        return DNSName(labels: [])
    }
}

extension DNSRecordType {
    var isAddress: Bool { self == .a || self == .aaaa }
}
