import P2PQMembership
import P2PQWire
import Testing

/// Drives one membership by hand; timers are run when asked.
struct Driver {
    var membership: MembershipMachine
    var now: UInt64 = 0
    var timer: UInt64?
    var events: [MembershipEvent] = []
    var sends: [(MembershipMessage, PeerID)] = []
    /// Members that answer every ping at once.
    var autoAck: Set<PeerID> = []

    init(_ id: PeerID = peer(0), members: [Int], configuration: MembershipConfiguration = MembershipConfiguration(),
         incarnation: UInt64 = 100) {
        membership = MembershipMachine(localPeer: id, incarnation: incarnation, configuration: configuration, seed: 42)
        take(membership.start(now: 0))
        for n in members { take(membership.linkUp(peer(n), incarnation: 100, now: 0)) }
        sends = []
        events = []
    }

    mutating func take(_ directives: [MembershipAction]) {
        for directive in directives {
            switch directive {
            case .armTimer(let at): timer = at
            case .event(let event): events.append(event)
            case .send(let message, let to):
                sends.append((message, to))
                if case .ping(let sequence, _) = message, autoAck.contains(to) {
                    take(membership.received(.ack(sequence: sequence, updates: []), from: to, now: now))
                }
            }
        }
    }

    /// Fires the timer if it is due by `time`, repeatedly; advances the clock to `time`.
    mutating func advance(to time: UInt64) {
        var guardCount = 0
        while let at = timer, at <= time, guardCount < 10_000 {
            guardCount += 1
            now = max(now, at)
            timer = nil
            take(membership.tick(now: now))
        }
        now = max(now, time)
    }

    mutating func receive(_ message: MembershipMessage, from: Int) {
        take(membership.received(message, from: peer(from), now: now))
    }

    /// Pops the sends so far.
    mutating func drainSends() -> [(MembershipMessage, PeerID)] {
        defer { sends = [] }
        return sends
    }
}

func update(_ kind: MemberUpdateKind, _ member: Int, _ incarnation: UInt64, by origin: Int? = nil) -> MemberUpdate {
    MemberUpdate(kind: kind, member: peer(member), incarnation: incarnation, origin: peer(origin ?? member))
}

@Suite("SWIM membership")
struct MembershipTests {
    @Test("Probe, then indirect probe, then suspect, then dead")
    func probeIndirectSuspectDead() throws {
        var node = Driver(members: [1, 2, 3])
        let config = node.membership.configuration
        // First protocol period: a ping goes to some member.
        node.advance(to: config.probeInterval)
        let pings = node.drainSends().filter { if case .ping = $0.0 { return true } else { return false } }
        try #require(pings.count == 1)
        guard case .ping(let sequence, _) = pings[0].0 else { return }
        let target = pings[0].1
        node.autoAck = Set([1, 2, 3].map(peer)).subtracting([target])
        // No ack within the probe timeout: the other two members are asked to probe it.
        node.advance(to: config.probeInterval + config.probeTimeout)
        let requests = node.drainSends().compactMap { send -> PeerID? in
            if case .pingRequest(let s, let t, _) = send.0, s == sequence, t == target { return send.1 }
            return nil
        }
        #expect(Set(requests).count == 2)
        #expect(!requests.contains(target))
        #expect(node.events.isEmpty)
        // Both helpers say nack; the probe still waits for the end of its period (the target
        // may answer late), then the target is suspect.
        for helper in requests {
            node.take(node.membership.received(.nack(sequence: sequence, updates: []), from: helper, now: node.now))
        }
        #expect(node.events.isEmpty)
        node.advance(to: 2 * config.probeInterval - 1)
        #expect(node.events.isEmpty)
        node.advance(to: 2 * config.probeInterval)
        #expect(node.events == [.suspect(target)])
        #expect(node.membership.state(of: target) == .suspect)
        // Two confirmers possible (3 members + self, minus the suspect and us) and none came:
        // dead after the maximum suspicion timeout.
        let deadline = try #require(node.membership.suspicionDeadline(of: target))
        #expect(deadline == 2 * config.probeInterval + config.suspicionMaxTimeout)
        // Probing a suspect carries the suspicion to it (buddy system).
        node.drainSends().forEach { send in
            if case .ping(_, let updates) = send.0, send.1 == target {
                #expect(updates.first?.kind == .suspect && updates.first?.member == target)
            }
        }
        node.advance(to: deadline - 1)
        #expect(node.membership.state(of: target) == .suspect)
        node.advance(to: deadline)
        #expect(node.events == [.suspect(target), .dead(target)])
        #expect(node.membership.state(of: target) == .dead)
        // The dead member is never probed again.
        _ = node.drainSends()
        node.advance(to: deadline + 20 * config.probeInterval)
        #expect(!node.drainSends().contains { $0.1 == target && { if case .ping = $0 { true } else { false } }($0.0) })
    }

    @Test("An ack relayed by a helper saves the target")
    func indirectAck() throws {
        var node = Driver(members: [1, 2, 3])
        let config = node.membership.configuration
        node.advance(to: config.probeInterval)
        guard case .ping(let sequence, _) = try #require(node.drainSends().first { if case .ping = $0.0 { true } else { false } }).0 else { return }
        node.advance(to: config.probeInterval + config.probeTimeout)
        let helper = try #require(node.drainSends().first { if case .pingRequest = $0.0 { true } else { false } }).1
        node.autoAck = Set([1, 2, 3].map(peer))
        node.take(node.membership.received(.ack(sequence: sequence, updates: []), from: helper, now: node.now))
        node.advance(to: 3 * config.probeInterval)
        #expect(node.events.isEmpty)
        #expect(node.membership.localHealth == 0)
    }

    @Test("A stalled node does not suspect: late timers give helpers and unread acks a chance")
    func stallGrace() throws {
        var node = Driver(members: [1, 2, 3])
        let config = node.membership.configuration
        node.advance(to: config.probeInterval)
        let ping = try #require(node.drainSends().first { if case .ping = $0.0 { true } else { false } })
        guard case .ping(let sequence, _) = ping.0 else { return }
        node.autoAck = Set([1, 2, 3].map(peer)).subtracting([ping.1])
        // The node was stalled for 3 periods; its timer fires long after both deadlines.
        node.now = 4 * config.probeInterval
        node.timer = nil
        node.take(node.membership.tick(now: node.now))
        #expect(node.drainSends().contains { if case .pingRequest = $0.0 { true } else { false } })
        #expect(node.events.isEmpty)
        // The ack that was waiting unread is processed next: no suspicion.
        node.take(node.membership.received(.ack(sequence: sequence, updates: []), from: ping.1, now: node.now))
        node.autoAck = Set([1, 2, 3].map(peer))
        node.advance(to: node.now + config.probeInterval)
        #expect(node.events.isEmpty)

        // A stall past the final deadline: one short grace, then the verdict.
        var other = Driver(members: [1, 2, 3])
        other.advance(to: config.probeInterval)
        let target = try #require(other.drainSends().first { if case .ping = $0.0 { true } else { false } }).1
        other.autoAck = Set([1, 2, 3].map(peer)).subtracting([target])
        other.advance(to: config.probeInterval + config.probeTimeout)
        #expect(other.drainSends().contains { if case .pingRequest = $0.0 { true } else { false } })
        other.now = 5 * config.probeInterval
        other.timer = nil
        other.take(other.membership.tick(now: other.now))
        #expect(other.events.isEmpty)
        other.advance(to: other.now + config.probeTimeout)
        #expect(other.events == [.suspect(target)])
    }

    @Test("A stalled node reads a waiting refutation before declaring a suspect dead")
    func suspicionStallGrace() throws {
        var node = Driver(members: [1, 2, 3])
        node.autoAck = Set([1, 2, 3].map(peer))  // acks alone never lift a suspicion
        node.receive(.gossip(updates: [update(.suspect, 3, 100, by: 1)]), from: 1)
        let deadline = try #require(node.membership.suspicionDeadline(of: peer(3)))
        node.now = deadline + 2 * second
        node.timer = nil
        node.take(node.membership.tick(now: node.now))
        #expect(node.membership.state(of: peer(3)) == .suspect)
        node.receive(.gossip(updates: [update(.alive, 3, 101)]), from: 3)
        node.advance(to: node.now + second)
        #expect(node.events == [.suspect(peer(3)), .alive(peer(3))])
    }

    @Test("A helper relays the ack, or says nack in time")
    func helperRole() throws {
        var node = Driver(members: [1, 2])
        node.receive(.pingRequest(sequence: 77, target: peer(2), updates: []), from: 1)
        let ping = try #require(node.drainSends().first)
        #expect(ping.1 == peer(2))
        guard case .ping(let own, _) = ping.0 else { Issue.record("expected a ping"); return }
        node.receive(.ack(sequence: own, updates: []), from: 2)
        let relayed = node.drainSends()
        #expect(relayed.count == 1 && relayed[0].1 == peer(1))
        if case .ack(let sequence, _) = relayed[0].0 { #expect(sequence == 77) } else { Issue.record("expected an ack") }
        // A second request that gets no answer: nack before the requester's probe ends.
        node.receive(.pingRequest(sequence: 78, target: peer(2), updates: []), from: 1)
        _ = node.drainSends()
        let config = node.membership.configuration
        node.advance(to: node.now + config.probeTimeout)
        let nacks = node.drainSends().filter { if case .nack(78, _) = $0.0 { true } else { false } }
        #expect(nacks.count == 1 && nacks.first?.1 == peer(1))
        // A target it has no link to: nack at once.
        node.receive(.pingRequest(sequence: 79, target: peer(2), updates: []), from: 1)
        let sends = node.drainSends()
        node.take(node.membership.undeliverable(sends[0].0, to: peer(2), now: node.now))
        #expect(node.drainSends().contains { if case .nack(79, _) = $0.0 { $0.1 == peer(1) } else { false } })
    }

    @Test("A suspected node refutes with a higher incarnation; the suspicion is lifted")
    func refutation() throws {
        var cluster = Cluster(size: 4)
        cluster.run(until: 2 * second)
        let target = peer(3)
        // Node 0 suspects node 3 (as if a probe failed) and gossips it to node 3 directly.
        let suspicion = MembershipMessage.gossip(updates: [update(.suspect, 3, 100, by: 0)])
        cluster.perform(peer(0), cluster.nodes[peer(0)]!.membership.received(suspicion, from: peer(1), now: cluster.now))
        #expect(cluster.state(of: target, at: peer(0)) == .suspect)
        cluster.perform(target, cluster.nodes[target]!.membership.received(suspicion, from: peer(0), now: cluster.now))
        #expect(cluster.nodes[target]!.membership.incarnation == 101)
        #expect(cluster.nodes[target]!.membership.localHealth == 1)
        cluster.run(until: cluster.now + 2 * second)
        for observer in [0, 1, 2].map(peer) {
            #expect(cluster.state(of: target, at: observer) == .alive)
            #expect(cluster.nodes[observer]!.membership.members.first { $0.peer == target }?.incarnation == 101)
            #expect(!cluster.events(at: observer).contains(.dead(target)))
        }
        #expect(cluster.events(at: peer(0)).suffix(2) == [.suspect(target), .alive(target)])
    }

    @Test("Incarnation ordering: which update overrides which")
    func incarnationOrdering() {
        var node = Driver(members: [])
        func apply(_ u: MemberUpdate) -> [MembershipEvent] {
            node.events = []
            node.receive(.gossip(updates: [u]), from: 9)
            return node.events
        }
        #expect(apply(update(.alive, 1, 5)) == [.joined(peer(1))])
        #expect(apply(update(.alive, 1, 4)) == [])
        #expect(apply(update(.suspect, 1, 4, by: 2)) == [])
        #expect(node.membership.state(of: peer(1)) == .alive)
        #expect(apply(update(.alive, 1, 6)) == [])  // newer alive: no event, newer incarnation
        #expect(node.membership.members.first?.incarnation == 6)
        #expect(apply(update(.suspect, 1, 6, by: 2)) == [.suspect(peer(1))])  // suspect(i) beats alive(i)
        #expect(apply(update(.alive, 1, 6)) == [])  // alive(i) does not beat suspect(i)
        #expect(node.membership.state(of: peer(1)) == .suspect)
        #expect(apply(update(.alive, 1, 7)) == [.alive(peer(1))])  // alive(i+1) refutes
        #expect(apply(update(.dead, 1, 6, by: 2)) == [])  // dead of an older incarnation
        #expect(apply(update(.dead, 1, 7, by: 2)) == [.dead(peer(1))])
        #expect(apply(update(.alive, 1, 7)) == [])  // dead(i) is final for i
        #expect(apply(update(.suspect, 1, 8, by: 2)) == [])  // nothing revives a dead member but alive
        #expect(apply(update(.alive, 1, 8)) == [.joined(peer(1))])  // a new incarnation rejoins
        #expect(apply(update(.left, 1, 8)) == [.left(peer(1))])
        #expect(apply(update(.alive, 1, 8)) == [])
        // Strangers: a suspicion is ignored; dead and left are remembered silently.
        #expect(apply(update(.suspect, 2, 1, by: 3)) == [])
        #expect(node.membership.state(of: peer(2)) == nil)
        #expect(apply(update(.dead, 3, 1, by: 4)) == [])
        #expect(apply(update(.alive, 3, 1)) == [])
        #expect(apply(update(.alive, 3, 2)) == [.joined(peer(3))])
        // About itself: older news is ignored, news at its incarnation is refuted.
        #expect(apply(update(.suspect, 0, 99, by: 2)) == [])
        #expect(node.membership.incarnation == 100)
        _ = apply(update(.dead, 0, 100, by: 2))
        #expect(node.membership.incarnation == 101)
        _ = apply(update(.suspect, 0, 105, by: 2))
        #expect(node.membership.incarnation == 106)
    }

    @Test("Suspicion shortens, log-scaled, with independent confirmations")
    func suspicionShortens() throws {
        var config = MembershipConfiguration()
        config.suspicionMinTimeout = 1 * second
        config.suspicionMaxTimeout = 9 * second
        config.expectedConfirmations = 3
        var node = Driver(members: [1, 2, 3, 4, 5], configuration: config)
        node.receive(.gossip(updates: [update(.suspect, 5, 100, by: 1)]), from: 1)
        #expect(node.events == [.suspect(peer(5))])
        let start = node.now
        var deadlines = [try #require(node.membership.suspicionDeadline(of: peer(5)))]
        #expect(deadlines[0] == start + 9 * second)
        // A repeat from the same origin is no confirmation.
        node.receive(.gossip(updates: [update(.suspect, 5, 100, by: 1)]), from: 2)
        #expect(node.membership.suspicionDeadline(of: peer(5)) == deadlines[0])
        for origin in [2, 3, 4] {
            node.receive(.gossip(updates: [update(.suspect, 5, 100, by: origin)]), from: origin)
            deadlines.append(try #require(node.membership.suspicionDeadline(of: peer(5))))
        }
        // 9 − 8·log(c+1)/log(4): 9 s, 5 s, ≈2.66 s, 1 s.
        #expect(deadlines[1] == start + 5 * second)
        #expect(deadlines[2] > start + 2 * second && deadlines[2] < start + 3 * second)
        #expect(deadlines[3] == start + 1 * second)
        node.advance(to: start + 1 * second)
        #expect(node.events == [.suspect(peer(5)), .dead(peer(5))])
    }

    @Test("Missed nacks raise local health, which stretches probe timeouts; acks lower it")
    func localHealth() throws {
        var node = Driver(members: [1, 2, 3, 4])
        let config = node.membership.configuration
        // Nobody answers anything: helpers miss their nacks, so this node is the slow one.
        var pingedAt: [UInt64: UInt64] = [:]
        var directTimeouts: [UInt64] = []
        var incarnations: [PeerID: UInt64] = [:]
        for _ in 0..<200 where directTimeouts.count < 4 {
            node.advance(to: try #require(node.timer))
            for (message, _) in node.drainSends() {
                if case .ping(let sequence, _) = message { pingedAt[sequence] = node.now }
                if case .pingRequest(let sequence, _, _) = message, let at = pingedAt.removeValue(forKey: sequence) {
                    directTimeouts.append(node.now - at)
                }
            }
            // Suspected members refute at once, so there is always someone to probe.
            for event in node.events {
                if case .suspect(let member) = event {
                    incarnations[member, default: 100] += 1
                    node.take(node.membership.received(.gossip(updates: [MemberUpdate(
                        kind: .alive, member: member, incarnation: incarnations[member]!, origin: member)]),
                        from: member, now: node.now))
                }
            }
            node.events = []
        }
        try #require(directTimeouts.count == 4)
        #expect(directTimeouts[0] == config.probeTimeout)
        #expect(directTimeouts[1] > directTimeouts[0] && directTimeouts[2] > directTimeouts[1])
        #expect(directTimeouts.allSatisfy { $0 % config.probeTimeout == 0 })
        let high = node.membership.localHealth
        #expect(high >= 6)
        // Probes that get their acks bring it back down, one step each.
        node.autoAck = Set([1, 2, 3, 4].map(peer))
        for _ in 0..<200 where node.membership.localHealth > 0 {
            node.advance(to: try #require(node.timer))
        }
        #expect(node.membership.localHealth == 0)
    }

    @Test("A graceful leave is seen as left, not dead, and is not probed")
    func gracefulLeave() {
        var cluster = Cluster(size: 5)
        cluster.run(until: 2 * second)
        let leaver = peer(2)
        cluster.perform(leaver, cluster.nodes[leaver]!.membership.leave(now: cluster.now))
        cluster.run(until: cluster.now + 10 * ms)
        // Its links then close; that is no reason to probe a member that left.
        cluster.kill(leaver)
        cluster.run(until: cluster.now + 10 * second)
        for observer in [0, 1, 3, 4].map(peer) {
            #expect(cluster.state(of: leaver, at: observer) == .left)
            #expect(cluster.events(at: observer).contains(.left(leaver)))
            #expect(!cluster.events(at: observer).contains(.dead(leaver)))
            #expect(!cluster.events(at: observer).contains(.suspect(leaver)))
        }
    }

    @Test("A killed member (links closed) is dead everywhere within 2 s; a silent one within 6 s")
    func detectionTimes() {
        for silent in [false, true] {
            var cluster = Cluster(size: 5, seed: silent ? 3 : 4)
            cluster.run(until: 3 * second)
            let victim = peer(4)
            let failedAt = cluster.now
            if silent {
                cluster.stopped.insert(victim)
            } else {
                cluster.kill(victim)
            }
            cluster.run(until: failedAt + 8 * second)
            for observer in [0, 1, 2, 3].map(peer) {
                let dead = cluster.firstEvent(.dead(victim), at: observer)
                #expect(dead != nil, "observer \(observer) never declared it dead")
                if let dead {
                    #expect(dead - failedAt <= (silent ? 6 : 2) * second, "silent: \(silent), took \(dead - failedAt) ns")
                }
                #expect(cluster.firstEvent(.suspect(victim), at: observer).map { $0 <= dead ?? .max } ?? false)
            }
            // Nobody else was ever suspected.
            #expect(!cluster.events.contains { if case .suspect(let p) = $0.event { p != victim } else { false } })
        }
    }

    @Test("Dissemination: every update sent a bounded number of times, yet reaches all 50 members",
          arguments: [3, 0])
    func dissemination(fanout: Int) {
        var config = MembershipConfiguration()
        config.gossipFanout = fanout
        var cluster = Cluster(size: 50, configuration: config, seed: 11)
        cluster.run(until: 3 * second)
        #expect(cluster.events.allSatisfy { if case .joined = $0.event { true } else { false } })
        // Node 7 hears itself suspected and refutes: alive(7, 101) must reach everyone.
        let subject = peer(7)
        cluster.perform(subject, cluster.nodes[subject]!.membership.received(
            .gossip(updates: [update(.suspect, 7, 100, by: 8)]), from: peer(8), now: cluster.now))
        let mark = cluster.sent.count
        cluster.run(until: cluster.now + 8 * second)
        for observer in cluster.order where observer != subject {
            #expect(cluster.nodes[observer]!.membership.members.first { $0.peer == subject }?.incarnation == 101)
        }
        let limit = cluster.nodes[peer(0)]!.membership.retransmitLimit
        #expect(limit == 8)  // λ = 4, ⌈log10(51)⌉ = 2
        let refutation = update(.alive, 7, 101)
        var perSender: [PeerID: Int] = [:]
        for send in cluster.sent[mark...] where send.message.updates.contains(refutation) {
            perSender[send.from, default: 0] += 1
        }
        #expect(perSender.values.allSatisfy { $0 <= limit }, "\(perSender.values.max() ?? 0) > \(limit)")
        // Every message fits the piggyback room.
        let room = config.maxPiggybackBytes / MemberUpdate.encodedSize
        #expect(cluster.sent[mark...].allSatisfy { $0.message.updates.count <= room })
        // No false suspicion in a healthy cluster.
        #expect(!cluster.events.contains { if case .suspect = $0.event { true } else { false } })
    }

    @Test("Local health makes a slow node suspect far fewer healthy peers")
    func slowNodeFewerFalseSuspicions() {
        func suspicionsBySlowNode(maxLocalHealth: Int) -> (suspicions: Int, maxHealth: Int) {
            var config = MembershipConfiguration()
            config.maxLocalHealth = maxLocalHealth
            var cluster = Cluster(size: 5, configuration: config, seed: 5)
            cluster.run(until: 2 * second)
            // Node 0 handles everything it receives 600 ms late (a starved process): acks to
            // its probes come back after the probe period.
            cluster.slow[peer(0)] = 600 * ms
            var maxHealth = 0
            for step in 1...300 {
                cluster.run(until: 2 * second + UInt64(step) * 100 * ms)
                maxHealth = max(maxHealth, cluster.nodes[peer(0)]!.membership.localHealth)
            }
            let count = cluster.events.filter {
                if case .suspect = $0.event { $0.observer == peer(0) } else { false }
            }.count
            return (count, maxHealth)
        }
        let without = suspicionsBySlowNode(maxLocalHealth: 0)
        let with = suspicionsBySlowNode(maxLocalHealth: 8)
        #expect(with.maxHealth > 0)
        #expect(without.suspicions >= 10, "without Lifeguard: \(without.suspicions)")
        #expect(with.suspicions * 3 < without.suspicions, "with \(with.suspicions), without \(without.suspicions)")
    }

    @Test("A closed link triggers an immediate probe, not a verdict")
    func linkDownProbes() {
        var node = Driver(members: [1, 2, 3])
        node.take(node.membership.linkDown(peer(2), now: 5 * ms))
        let sends = node.drainSends()
        #expect(sends.contains { if case .ping = $0.0 { $0.1 == peer(2) } else { false } })
        #expect(node.events.isEmpty)
        #expect(node.membership.state(of: peer(2)) == .alive)
        // Undeliverable: helpers asked at once.
        guard let ping = sends.first(where: { $0.1 == peer(2) }) else { return }
        node.take(node.membership.undeliverable(ping.0, to: peer(2), now: 5 * ms))
        #expect(node.drainSends().filter { if case .pingRequest = $0.0 { true } else { false } }.count == 2)
    }

    @Test("Only linked members are probed or asked to help: the others (a partial mesh) are judged by the nodes linked to them")
    func probesLinkedMembersOnly() {
        var node = Driver(members: [1, 2])
        // Members 3 and 4 are known by gossip only: no link here.
        node.receive(.gossip(updates: [update(.alive, 3, 100), update(.alive, 4, 100)]), from: 1)
        _ = node.drainSends()
        node.advance(to: 20 * second)
        let targets = Set(node.drainSends().compactMap { if case .ping = $0.0 { $0.1 } else { nil } })
        #expect(targets == [peer(1), peer(2)])
        #expect(node.events.filter { if case .suspect = $0 { true } else { false } }.count == 2)  // 1 and 2 never answer
        #expect(node.membership.state(of: peer(3)) == .alive && node.membership.state(of: peer(4)) == .alive)
    }

    @Test("A link the peer closed itself (it refused it, alive) is no evidence: no probe, and a probe in flight ends")
    func peerClosedLinkIsNoEvidence() {
        var node = Driver(members: [1, 2, 3])
        node.advance(to: 500 * ms)  // the first probe goes out
        let probed = node.drainSends().compactMap { if case .ping = $0.0 { $0.1 } else { nil } }
        let target = try! #require(probed.first)
        node.take(node.membership.linkDown(target, probe: false, now: 510 * ms))
        #expect(node.drainSends().isEmpty)
        node.advance(to: 995 * ms)
        #expect(node.events.isEmpty, "\(node.events)")
        #expect(node.membership.state(of: target) == .alive)
    }

    @Test("A verdict about this node older than its incarnation (its sender missed the refutation) is answered with the current incarnation")
    func staleVerdictIsAnswered() {
        var node = Driver(members: [1, 2], incarnation: 100)
        node.receive(.gossip(updates: [update(.dead, 0, 60, by: 1)]), from: 1)
        let answers = node.drainSends().filter { $0.1 == peer(1) }
        #expect(answers.contains { sent in
            guard case .gossip(let updates) = sent.0 else { return false }
            return updates.contains(update(.alive, 0, 100))
        }, "\(answers)")
        #expect(node.membership.incarnation == 100)
        // A verdict at the current incarnation is refuted as before (a new incarnation).
        node.receive(.gossip(updates: [update(.suspect, 0, 100, by: 1)]), from: 1)
        #expect(node.membership.incarnation == 101)
    }

    @Test("A new link tells the newcomer the whole view; a restarted member rejoins")
    func linkUpSync() {
        var node = Driver(members: [1, 2])
        node.receive(.gossip(updates: [update(.dead, 2, 100, by: 1)]), from: 1)
        #expect(node.events == [.dead(peer(2))])
        // The same process reconnects: it is told it was declared dead (so it can refute).
        node.take(node.membership.linkUp(peer(2), incarnation: 100, now: node.now))
        let sync = node.drainSends().filter { $0.1 == peer(2) }.flatMap { $0.0.updates }
        #expect(sync.contains(update(.dead, 2, 100, by: 1)))
        #expect(sync.contains(update(.alive, 0, 100)))
        #expect(node.membership.state(of: peer(2)) == .dead)
        // A restart (higher start incarnation) rejoins.
        node.take(node.membership.linkUp(peer(2), incarnation: 500, now: node.now))
        #expect(node.events.last == .joined(peer(2)))
        #expect(node.membership.state(of: peer(2)) == .alive)
        // A reconnect of the same process is no news; a restart of a member thought alive is.
        node.events = []
        node.take(node.membership.linkUp(peer(2), incarnation: 500, now: node.now))
        node.take(node.membership.linkUp(peer(1), incarnation: 100, now: node.now))
        #expect(node.events.isEmpty)
        node.take(node.membership.linkUp(peer(1), incarnation: 900, now: node.now))
        #expect(node.events == [.restarted(peer(1))])
        #expect(node.membership.members.first { $0.peer == peer(1) }?.incarnation == 900)
    }

    @Test("A restart is seen on the new link even when gossip told the new incarnation first")
    func restartAfterGossip() {
        var node = Driver(members: [1, 2])
        node.take(node.membership.linkUp(peer(2), incarnation: 100, now: node.now))
        // Peer 2 restarts; peer 1 links to the new process first and gossips it here. The
        // view takes the incarnation silently: an alive at a higher incarnation may be a
        // refutation as well as a restart.
        node.receive(.gossip(updates: [update(.alive, 2, 700)]), from: 1)
        #expect(node.events.isEmpty)
        #expect(node.membership.members.first { $0.peer == peer(2) }?.incarnation == 700)
        // The new process's own link says it started after the one this node was linked to.
        node.take(node.membership.linkUp(peer(2), incarnation: 700, now: node.now))
        #expect(node.events == [.restarted(peer(2))])
        // Its next link is a reconnect, no news; a refutation (a higher incarnation by gossip,
        // the same start on the link) is none either.
        node.events = []
        node.take(node.membership.linkUp(peer(2), incarnation: 700, now: node.now))
        node.receive(.gossip(updates: [update(.alive, 2, 701)]), from: 2)
        node.take(node.membership.linkUp(peer(2), incarnation: 700, now: node.now))
        #expect(node.events.isEmpty)
        #expect(node.membership.state(of: peer(2)) == .alive)
    }

    @Test("Equal seeds and inputs give equal runs")
    func deterministic() {
        var a = Cluster(size: 8, seed: 9)
        var b = Cluster(size: 8, seed: 9)
        a.run(until: 5 * second)
        b.run(until: 5 * second)
        #expect(a.sent.map(\.message) == b.sent.map(\.message))
        #expect(a.sent.map(\.to) == b.sent.map(\.to))
    }
}

@Suite("Membership configuration")
struct MembershipConfigurationTests {
    @Test("The defaults are valid; contradictory settings are named")
    func validation() {
        #expect(MembershipConfiguration().problem == nil)
        var config = MembershipConfiguration()
        config.probeTimeout = config.probeInterval
        #expect(config.problem == "the probe timeout must be shorter than the probe interval")
        config = MembershipConfiguration()
        config.suspicionMinTimeout = config.suspicionMaxTimeout + 1
        #expect(config.problem == "the suspicion timeouts must satisfy 0 < min ≤ max")
        config = MembershipConfiguration()
        config.maxPiggybackBytes = 10
        #expect(config.problem == "the piggyback room must hold one update")
        config = MembershipConfiguration()
        config.tombstoneRetention = 0
        #expect(config.problem == "the tombstone retention must be positive")
        config = MembershipConfiguration()
        config.maxMembers = 0
        #expect(config.problem == "max members must be at least 1")
    }
}

/// A verdict that changes a node's view goes at once to every linked live member (protocol.md
/// §8), not only to the gossip round's fanout.
@Suite("SWIM membership: verdicts flood over the links")
struct VerdictFloodTests {
    static func gossips(_ sends: [(MembershipMessage, PeerID)], about member: Int) -> Set<PeerID> {
        Set(sends.compactMap { message, to -> PeerID? in
            guard case .gossip(let updates) = message, updates.contains(where: { $0.member == peer(member) && $0.kind == .dead })
            else { return nil }
            return to
        })
    }

    @Test("A verdict heard from one peer is sent on to every other linked live member at once, once")
    func heardVerdictFloods() {
        var configuration = MembershipConfiguration()
        configuration.gossipFanout = 1
        var node = Driver(members: [1, 2, 3, 4, 5, 6], configuration: configuration)
        node.receive(.gossip(updates: [update(.dead, 6, 100, by: 1)]), from: 1)
        // Not back to the sender, not to the condemned member: to the other four, in the same input.
        #expect(Self.gossips(node.drainSends(), about: 6) == Set([2, 3, 4, 5].map(peer)))
        #expect(node.events.contains(.dead(peer(6))))
        // The same news again changes nothing and is not flooded again.
        node.receive(.gossip(updates: [update(.dead, 6, 100, by: 2)]), from: 2)
        #expect(Self.gossips(node.drainSends(), about: 6).isEmpty)
    }

    @Test("Its own verdict goes to every linked live member when the suspicion ends")
    func ownVerdictFloods() {
        var configuration = MembershipConfiguration()
        configuration.gossipFanout = 1
        var node = Driver(members: [1, 2, 3, 4, 5], configuration: configuration)
        node.autoAck = Set([1, 2, 3, 4].map(peer))
        node.receive(.gossip(updates: [update(.suspect, 5, 100, by: 1)]), from: 1)
        _ = node.drainSends()
        node.advance(to: node.now + configuration.suspicionMaxTimeout + configuration.probeTimeout)
        #expect(node.membership.state(of: peer(5)) == .dead)
        #expect(Self.gossips(node.drainSends(), about: 5).isSuperset(of: Set([1, 2, 3, 4].map(peer))))
    }

    @Test("A burst of more verdicts than one message holds is left to the gossip rounds")
    func burstIsNotFlooded() {
        var configuration = MembershipConfiguration()
        configuration.gossipFanout = 1
        let room = configuration.maxPiggybackBytes / MemberUpdate.encodedSize
        var node = Driver(members: Array(1...(room + 3)), configuration: configuration)
        let verdicts = (3...(room + 3)).map { update(.dead, $0, 100, by: 1) }
        node.receive(.gossip(updates: verdicts), from: 1)
        #expect(node.events.filter { if case .dead = $0 { return true } else { return false } }.count == verdicts.count)
        let sends = node.drainSends()
        #expect(sends.filter { if case .gossip = $0.0 { return true } else { return false } }.count <= 1, "\(sends.count) sends")
    }
}
