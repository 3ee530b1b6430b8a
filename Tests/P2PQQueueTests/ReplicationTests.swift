import P2PQQueue
import P2PQWire
import Testing

private let A = peer(1)
private let B = peer(2)
private let C = peer(3)

/// Delivers every message `from` sends to `to` (through the real codec), returning the
/// receiver's actions.
private func deliver(_ actions: [QueueAction], from: PeerID, to: PeerID, into machine: inout QueueMachine, now: UInt64) throws -> [QueueAction] {
    var out: [QueueAction] = []
    for case .send(let message, let target) in actions where target == to {
        out += machine.received(try wireRoundTrip(message), from: from, now: now)
    }
    return out
}

/// The replica transfers among `actions`, as (receiver, item count).
private func replicas(_ actions: [QueueAction]) -> [(PeerID, Int)] {
    actions.compactMap {
        if case .send(.transfer(_, _, .replica, _, let items), let target) = $0 { (target, items.count) } else { nil }
    }
}

/// The items named by the replica releases among `actions` sent to `holder`.
private func released(_ actions: [QueueAction], to holder: PeerID) -> Int {
    actions.reduce(0) { total, action in
        guard case .send(.replicaRelease(_, let runs), let target) = action, target == holder else { return total }
        return total + runs.reduce(0) { $0 + Int($1.count) }
    }
}

/// Machines for `peers`, each linked to the others as peers that keep replicas.
private func mesh(_ ids: [PeerID], configuration: QueueConfiguration = QueueConfiguration()) -> [QueueMachine] {
    ids.map { id in
        var machine = QueueMachine(name: "q", localPeer: id, configuration: configuration)
        for other in ids where other != id { _ = machine.peerConnected(other, keepsReplicas: true, now: 0) }
        return machine
    }
}

/// A, linked to B and C, pushes 10 items whose replicas the holder it picks keeps
/// (acknowledged): A and the holder.
private func ownerWithTenReplicated() throws -> (QueueMachine, PeerID) {
    var m = mesh([A, B, C])
    let (_, actions) = m[0].push((0..<10).map { payload($0) }, now: 1)
    let holder = replicas(actions)[0].0
    var (owner, kept) = (m[0], m[holder == B ? 1 : 2])
    _ = try deliver(try deliver(actions, from: A, to: holder, into: &kept, now: 2), from: holder, to: A, into: &owner, now: 3)
    return (owner, holder)
}

/// A pushes `n` items and B keeps their replica (acknowledged): returns A's push actions.
@discardableResult
private func replicated(_ a: inout QueueMachine, _ b: inout QueueMachine, _ n: Int, now: UInt64 = 1) throws -> [QueueAction] {
    let (outcome, actions) = a.push((0..<n).map { payload($0) }, now: now)
    #expect(outcome == .accepted)
    let acks = try deliver(actions, from: A, to: B, into: &b, now: now + 1)
    _ = try deliver(acks, from: B, to: A, into: &a, now: now + 2)
    return actions
}

@Suite struct ReplicationTests {
    @Test("A push's items go as one replica transfer to one peer; the push waits until that peer's ack")
    func pushWaitsForReplicaAck() throws {
        var m = mesh([A, B, C])
        let (outcome, actions) = m[0].push((0..<10).map { payload($0) }, now: 1)
        #expect(outcome == .accepted)
        let sent = replicas(actions)
        #expect(sent.count == 1 && sent[0].1 == 10)
        let holder = sent[0].0
        let mark = m[0].nextItemSequence
        #expect(m[0].awaitsReplica(before: mark))
        #expect(m[0].drainProgress.inFlight == 10)
        let index = holder == B ? 1 : 2
        let acks = try deliver(actions, from: A, to: holder, into: &m[index], now: 2)
        // Kept aside, not queued: nobody pops a replica.
        #expect(m[index].shelvedItems == 10 && m[index].count == 0)
        #expect(m[index].pop(max: 100, waiter: nil, now: 3).0.isEmpty)
        _ = try deliver(acks, from: holder, to: A, into: &m[0], now: 4)
        #expect(!m[0].awaitsReplica(before: mark))
        #expect(m[0].counters.replicated == 10)
    }

    @Test("Popped here, the items' replicas are released in one batched message; the holder drops them")
    func releaseAfterPop() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        let popped = a.pop(max: 4, waiter: nil, now: 10)
        #expect(popped.0.map(number) == [0, 1, 2, 3])
        #expect(released(popped.1, to: B) == 0)  // batched
        #expect(a.drainProgress.pendingNotices == 4)  // counted until sent
        let flushed = a.tick(now: 10 + 20 * ms)
        #expect(released(flushed, to: B) == 4)
        _ = try deliver(flushed, from: A, to: B, into: &b, now: 11 + 20 * ms)
        #expect(b.shelvedItems == 6)
        #expect(a.drainProgress.pendingNotices == 0)
    }

    @Test("The owner dies: the holder queues the replicas not released, as its own, in order")
    func ownerDeathRequeuesUnreleased() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        let popped = a.pop(max: 4, waiter: nil, now: 10)
        #expect(popped.0.count == 4)
        _ = try deliver(a.tick(now: 10 + 20 * ms), from: A, to: B, into: &b, now: 11 + 20 * ms)
        _ = b.peerDisconnected(A, now: 12 * second)  // killed: its link goes with it
        _ = b.peerDied(A, now: 12 * second)
        #expect(b.counters.replicasRequeued == 6 && b.shelvedItems == 0)
        #expect(b.ownedItems == 6)
        #expect(b.pop(max: 100, waiter: nil, now: 13 * second).0.map(number) == [4, 5, 6, 7, 8, 9])
    }

    @Test("A disconnect is not a death: the replicas stay kept")
    func disconnectKeepsShelf() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        _ = b.peerDisconnected(A, now: 5)
        #expect(b.shelvedItems == 10 && b.count == 0)
    }

    @Test("Items acknowledged by a transfer's receiver release their replica (the receiver and the record are the two copies)")
    func releaseAfterTransferAck() throws {
        var m = mesh([A, B, C])
        var (a, b, c) = (m[0], m[1], m[2])
        m = []
        try replicated(&a, &b, 10)
        #expect(b.shelvedItems == 10)
        let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 10, thiefRate: 100), from: C, now: 5)
        let acks = try deliver(stolen, from: A, to: C, into: &c, now: 6)
        #expect(c.count == 10)
        let ackActions = try deliver(acks, from: C, to: A, into: &a, now: 7)
        let flushed = ackActions + a.tick(now: 7 + 20 * ms)
        #expect(released(flushed, to: B) == 10)
        _ = try deliver(flushed, from: A, to: B, into: &b, now: 8 + 20 * ms)
        #expect(b.shelvedItems == 0)
        // C dies: the owner re-queues them (its records), and replicates them again.
        let died = a.peerDied(C, now: 9 * second)
        #expect(a.count == 10)
        #expect(replicas(died).map(\.1) == [10])
    }

    @Test("Items moved to their own replica holder replace the replicas there: an owner that dies before releasing them is not re-queued twice")
    func transferToHolderDropsItsReplicas() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        #expect(b.shelvedItems == 10)
        // B steals 6 of them; A is paused before its release (batched) goes out.
        let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 6, thiefRate: 100), from: B, now: 5)
        _ = try deliver(stolen, from: A, to: B, into: &b, now: 6)
        #expect(b.count == 6 && b.shelvedItems == 4)
        _ = b.peerDisconnected(A, now: 12 * second)
        _ = b.peerDied(A, now: 12 * second)
        #expect(b.counters.replicasRequeued == 4)
        let popped = b.pop(max: 100, waiter: nil, now: 13 * second).0.map(number)
        #expect(popped.sorted() == Array(0..<10), "popped \(popped)")
    }

    @Test("A replica transfer that lists items twice (a faulty or hostile owner) keeps each once, and its arrays stay held for what is kept")
    func repeatedItemsInOneReplicaTransfer() throws {
        var m = mesh([A, B])
        var b = m[1]
        m = []
        // Items 0..<4 twice in one array, then 2..<6 (the second copy drops the first and all
        // its holds on the array; the array must stay for the second).
        let items = ([0, 1, 2, 3] + [0, 1, 2, 3] + [2, 3, 4, 5]).map {
            QueueItem(id: ItemID(origin: A, sequence: UInt64($0)), payload: ItemPayload(payload($0)))
        }
        let acks = b.received(try wireRoundTrip(.transfer(queue: "q", transferID: 1, kind: .replica, requestID: 0,
                                                          items: TransferItems(items))), from: A, now: 1)
        #expect(acks.contains { if case .send(.transferAck(_, 1, .accepted), A) = $0 { true } else { false } })
        #expect(b.shelvedItems == 6)
        // The owner dies: each item is queued once, with its own bytes.
        _ = b.peerDisconnected(A, now: 2 * second)
        _ = b.peerDied(A, now: 2 * second)
        #expect(b.pop(max: 100, waiter: nil, now: 3 * second).0.map(number).sorted() == [0, 1, 2, 3, 4, 5])
    }

    @Test("A leased item keeps its replica until its ack, then releases it")
    func leaseAckReleases() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 5)
        let (leased, _) = a.popLeased(max: 5, lease: 10 * second, waiter: nil, now: 10)
        #expect(leased.count == 5)
        #expect(released(a.tick(now: 10 + 50 * ms), to: B) == 0)
        let acked = a.ack(leased.map(\.token), now: 20)
        #expect(acked.acknowledged == 5)
        #expect(released(acked.actions + a.tick(now: 20 + 20 * ms), to: B) == 5)
    }

    @Test("A full shelf refuses; the owner tries another peer that keeps replicas")
    func shelfBoundRefuses() throws {
        var small = QueueConfiguration()
        small.maxItems = 5
        var a = QueueMachine(name: "q", localPeer: A)
        var b = QueueMachine(name: "q", localPeer: B, configuration: small)
        var c = QueueMachine(name: "q", localPeer: C)
        _ = a.peerConnected(B, keepsReplicas: true, now: 0)
        _ = a.peerConnected(C, keepsReplicas: true, now: 0)
        let (_, actions) = a.push((0..<10).map { payload($0) }, now: 1)
        #expect(replicas(actions).map(\.0) == [B])
        let refusal = try deliver(actions, from: A, to: B, into: &b, now: 2)
        #expect(b.shelvedItems == 0)
        let retry = try deliver(refusal, from: B, to: A, into: &a, now: 3)
        #expect(a.counters.replicasRefused == 10)
        #expect(a.awaitsReplica(before: a.nextItemSequence))
        #expect(replicas(retry).map(\.0) == [C])
        let acks = try deliver(retry, from: A, to: C, into: &c, now: 4)
        _ = try deliver(acks, from: C, to: A, into: &a, now: 5)
        #expect(c.shelvedItems == 10 && !a.awaitsReplica(before: a.nextItemSequence))
    }

    @Test("Every peer refuses: the push keeps waiting (as under backpressure) and the replica is tried again later")
    func allRefuseWaits() throws {
        var small = QueueConfiguration()
        small.maxItems = 5
        var a = QueueMachine(name: "q", localPeer: A)
        var b = QueueMachine(name: "q", localPeer: B, configuration: small)
        _ = a.peerConnected(B, keepsReplicas: true, now: 0)
        let (_, actions) = a.push((0..<10).map { payload($0) }, now: 1)
        let retry = try deliver(try deliver(actions, from: A, to: B, into: &b, now: 2), from: B, to: A, into: &a, now: 3)
        #expect(replicas(retry).isEmpty)
        #expect(a.awaitsReplica(before: a.nextItemSequence))
        // After the refusal's pause (a stats interval) it is sent again.
        #expect(replicas(a.tick(now: 3 + a.configuration.statsInterval)).map(\.1) == [10])
    }

    @Test("The replica holder dies: the owner sends the replicas to another peer")
    func holderDeathReplicatesAgain() throws {
        var m = mesh([A, B, C])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        let died = a.peerDied(B, now: 5)
        #expect(replicas(died).map(\.0) == [C])
        #expect(replicas(died).map(\.1) == [10])
    }

    @Test("The last peer that keeps replicas dies: a waiting push completes unreplicated")
    func lastPeerDiesCompletesLocally() throws {
        var m = mesh([A, B])
        var a = m[0]
        m = []
        _ = a.push((0..<10).map { payload($0) }, now: 1)
        #expect(a.awaitsReplica(before: a.nextItemSequence))
        _ = a.peerDied(B, now: 2)
        #expect(!a.awaitsReplica(before: a.nextItemSequence))
        #expect(a.count == 10)
    }

    @Test("A drain sends the releases at once and counts replicas in flight; the holder then re-queues nothing when the owner leaves")
    func drainSendsReleases() throws {
        var slow = QueueConfiguration()
        slow.confirmDelay = 3600 * second
        slow.confirmBatch = 1 << 30
        var m = mesh([A, B], configuration: slow)
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        let drained = a.drain(now: 10)
        #expect(!a.drainProgress.isComplete)
        let acks = try deliver(drained, from: A, to: B, into: &b, now: 11)
        #expect(b.count == 10 && b.ownedItems == 10)
        let ackActions = try deliver(acks, from: B, to: A, into: &a, now: 12)
        #expect(released(ackActions, to: B) == 10)  // not held for the batch delay
        #expect(a.drainProgress.isComplete)
        _ = try deliver(ackActions, from: A, to: B, into: &b, now: 13)
        #expect(b.shelvedItems == 0)
        _ = b.peerDied(A, now: 14)  // A left
        #expect(b.count == 10 && b.counters.replicasRequeued == 0)
    }

    @Test("A replica transfer not acknowledged yet keeps the drain incomplete")
    func drainWaitsForReplicaInFlight() {
        var m = mesh([A, B])
        var a = m[0]
        m = []
        _ = a.push((0..<10).map { payload($0) }, now: 1)
        _ = a.drain(now: 2)
        #expect(a.drainProgress.inFlight >= 10 && !a.drainProgress.isComplete)
    }

    @Test("Local replication sends no replica; a push completes at once")
    func localSendsNone() {
        var local = QueueConfiguration()
        local.replication = .local
        var m = mesh([A, B], configuration: local)
        let (outcome, actions) = m[0].push((0..<10).map { payload($0) }, now: 1)
        #expect(outcome == .accepted && replicas(actions).isEmpty)
        #expect(!m[0].awaitsReplica(before: m[0].nextItemSequence))
    }

    @Test("At-most-once sends no replica")
    func atMostOnceSendsNone() {
        var config = QueueConfiguration()
        config.delivery = .atMostOnce
        var m = mesh([A, B], configuration: config)
        let (_, actions) = m[0].push((0..<10).map { payload($0) }, now: 1)
        #expect(replicas(actions).isEmpty)
        #expect(!m[0].awaitsReplica(before: m[0].nextItemSequence))
    }

    @Test("A peer whose hello lacks the feature bit gets no replica; the push completes unreplicated")
    func oldPeerGetsNone() {
        var a = QueueMachine(name: "q", localPeer: A)
        _ = a.peerConnected(B, now: 0)
        let (_, actions) = a.push((0..<10).map { payload($0) }, now: 1)
        #expect(replicas(actions).isEmpty)
        #expect(!a.awaitsReplica(before: a.nextItemSequence))
    }

    @Test("A replica sent again (its ack was lost) is kept once")
    func retransmittedReplicaKeptOnce() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        let (_, actions) = a.push((0..<10).map { payload($0) }, now: 1)
        _ = try deliver(actions, from: A, to: B, into: &b, now: 2)
        _ = try deliver(actions, from: A, to: B, into: &b, now: 3)
        #expect(b.shelvedItems == 10)
        _ = b.peerDisconnected(A, now: 4)
        _ = b.peerDied(A, now: 4)
        #expect(b.count == 10)
    }

    @Test("A replica holder declared dead and back: the owner releases all it kept (they were replicated elsewhere), ahead of new replicas")
    func rejoinedHolderReleasesAll() throws {
        var m = mesh([A, B, C])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        #expect(replicas(a.peerDied(B, now: 5)).map(\.0) == [C])
        let back = a.peerRejoined(B, linked: true, keepsReplicas: true, now: 6)
        #expect(released(back, to: B) >= 10)
        _ = try deliver(back, from: A, to: B, into: &b, now: 7)
        #expect(b.shelvedItems == 0)
        _ = b.peerDied(A, now: 8)
        #expect(b.count == 0)  // nothing stale re-queued
    }

    @Test("Items pushed while no peer kept replicas are replicated when the first such peer connects")
    func lateReplication() throws {
        var a = QueueMachine(name: "q", localPeer: A)
        var b = QueueMachine(name: "q", localPeer: B)
        let (_, alone) = a.push((0..<10).map { payload($0) }, now: 1)
        #expect(replicas(alone).isEmpty && !a.awaitsReplica(before: a.nextItemSequence))
        _ = a.pop(max: 3, waiter: nil, now: 2)
        let linked = a.peerConnected(B, keepsReplicas: true, now: 3)
        #expect(replicas(linked).map(\.1) == [7])
        _ = b.peerConnected(A, keepsReplicas: true, now: 3)
        _ = try deliver(try deliver(linked, from: A, to: B, into: &b, now: 4), from: B, to: A, into: &a, now: 5)
        _ = b.peerDisconnected(A, now: 6)
        _ = b.peerDied(A, now: 6)
        #expect(b.pop(max: 100, waiter: nil, now: 7).0.map(number) == Array(3..<10))
    }

    @Test("The owner's departure is heard (by gossip) before its last releases on its still open link: they count, then the rest is re-queued when the link goes")
    func verdictBeforeLastReleases() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        _ = a.pop(max: 4, waiter: nil, now: 10)
        let releases = a.tick(now: 10 + 20 * ms)
        #expect(released(releases, to: B) == 4)
        _ = b.peerDied(A, now: 11 + 20 * ms)  // left, heard from another member first
        #expect(b.count == 0 && b.shelvedItems == 10)
        _ = try deliver(releases, from: A, to: B, into: &b, now: 12 + 20 * ms)
        #expect(b.shelvedItems == 6)
        _ = b.peerDisconnected(A, now: 13 + 20 * ms)
        #expect(b.counters.replicasRequeued == 6 && b.pop(max: 100, waiter: nil, now: 14 * second).0.map(number) == Array(4..<10))
    }

    @Test("A dead owner whose link stays up (paused): its replicas are re-queued after the grace")
    func graceEnds() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        _ = b.peerDied(A, now: 5)
        #expect(b.count == 0)
        _ = b.tick(now: 5 + b.configuration.stallThreshold)
        #expect(b.count == 10 && b.counters.replicasRequeued == 10)
    }

    @Test("An owner restarted with no verdict: its replicas come back at once (no grace), the new process linked")
    func restartedOwnerWithoutVerdict() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        // B's own items, their replicas kept by A.
        let (outcome, pushed) = b.push((100..<105).map { payload($0) }, now: 1)
        #expect(outcome == .accepted)
        _ = try deliver(try deliver(pushed, from: B, to: A, into: &a, now: 2), from: A, to: B, into: &b, now: 3)
        try replicated(&a, &b, 10, now: 4)
        #expect(b.shelvedItems == 10)
        // A's process dies and another starts under its identity before B's membership gave a
        // verdict: the link B sees is up (the new process's). The old process can release
        // nothing any more, so there is no grace: the 10 are B's to deliver now.
        _ = b.peerRestarted(A, linked: true, keepsReplicas: true, now: 10)
        #expect(b.shelvedItems == 0 && b.counters.replicasRequeued == 10)
        // The new process is a connected peer again: B sends it stats like anyone linked.
        let later = b.tick(now: 10 + b.configuration.statsInterval)
        #expect(later.contains { if case .send(.stats, let to) = $0 { to == A } else { false } })
        #expect(b.pop(max: 100, waiter: nil, now: 11).0.map(number).sorted() == Array(0..<10) + Array(100..<105))
    }

    @Test("A paused owner whose holder re-queued its replicas drops those originals before any consumer gets them")
    func pausedOwnerDropsRequeuedOriginals() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        #expect(a.pop(max: 2, waiter: nil, now: 10).0.map(number) == [0, 1])
        _ = try deliver(a.tick(now: 10 + 20 * ms), from: A, to: B, into: &b, now: 11 + 20 * ms)
        // A is paused: B's membership declares it dead, its link goes, B re-queues the 8.
        _ = b.peerDisconnected(A, now: 3 * second)
        _ = b.peerDied(A, now: 3 * second)
        #expect(b.counters.replicasRequeued == 8)
        // A resumes and hears the verdict: its 8 originals are held back and B is asked.
        let check = a.declaredDead(now: 10 * second)
        #expect(a.count == 0 && a.heldBackCount == 8)
        #expect(a.pop(max: 100, waiter: nil, now: 10 * second).0.isEmpty)
        let verdict = try deliver(check, from: A, to: B, into: &b, now: 10 * second + 1)
        _ = try deliver(verdict, from: B, to: A, into: &a, now: 10 * second + 2)
        #expect(a.heldBackCount == 0 && a.count == 0 && a.ownedItems == 0)
        #expect(a.counters.staleCopiesDropped == 8)
        // The only copies are B's own now: every item delivered once.
        #expect(b.pop(max: 100, waiter: nil, now: 11 * second).0.map(number) == Array(2..<10))
    }

    @Test("Items that come back from a transfer while a stalled owner checks are held and checked too, not sent again")
    func transferBackDuringCheck() throws {
        func stalledWithStealInFlight() throws -> (QueueMachine, QueueMachine, Int) {
            var m = mesh([A, B])
            var (a, b) = (m[0], m[1])
            m = []
            try replicated(&a, &b, 10)
            // C keeps no replicas (they all stay with B) and steals some of A's items.
            _ = a.peerConnected(C, now: 0)
            let stolen = a.received(.stealRequest(queue: "q", requestID: 1, maxItems: 4, thiefRate: 1000), from: C, now: 10)
                .reduce(0) { if case .send(.transfer(_, _, _, _, let items), C) = $1 { $0 + items.count } else { $0 } }
            #expect(stolen > 0 && stolen < 10)
            // A's next input comes after a pause: it holds back what it still has and asks B.
            _ = a.tick(now: 3 * second)
            #expect(a.heldBackCount == 10 - stolen && a.count == 0)
            return (a, b, stolen)
        }
        // The link to C fails: the stolen items come back, to be held with the others.
        var (a, _, _) = try stalledWithStealInFlight()
        _ = a.peerDisconnected(C, now: 3 * second + 1)
        #expect(a.heldBackCount == 10 && a.count == 0)
        #expect(a.pop(max: 100, waiter: nil, now: 3 * second + 2).0.isEmpty)
        // The transfer times out during the check (C still linked): held, not sent again.
        var (a2, b2, _) = try stalledWithStealInFlight()
        let timedOut = a2.tick(now: 3 * second + a2.configuration.transferTimeout)
        #expect(!timedOut.contains { if case .send(.transfer, C) = $0 { true } else { false } })
        #expect(a2.heldBackCount == 10 && a2.count == 0)
        // The check asked again covers them; B re-queued nothing, so its verdict names nothing
        // and all ten come back, each once.
        let verdict = try deliver(timedOut, from: A, to: B, into: &b2, now: 20 * second)
        #expect(verdict.contains { if case .send(.replicaVerdict, A) = $0 { true } else { false } })
        _ = try deliver(verdict, from: B, to: A, into: &a2, now: 20 * second + 1)
        #expect(a2.heldBackCount == 0 && a2.pop(max: 100, waiter: nil, now: 20 * second + 2).0.map(number).sorted() == Array(0..<10))
    }

    @Test("A stalled owner asks a holder still in its grace: the holder re-queues at once and names them all")
    func stalledOwnerAsksDuringGrace() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        _ = b.peerDied(A, now: 3 * second)  // the link is still up: grace
        #expect(b.count == 0)
        // A's first input after the pause meets its timer far too late: a stall.
        let check = a.tick(now: 10 * second)
        #expect(a.heldBackCount == 10)
        let verdict = try deliver(check, from: A, to: B, into: &b, now: 10 * second + 1)
        #expect(b.count == 10 && b.shelvedItems == 0)
        _ = try deliver(verdict, from: B, to: A, into: &a, now: 10 * second + 2)
        #expect(a.count == 0 && a.heldBackCount == 0 && a.ownedItems == 0)
    }

    @Test("A holder that never believed the owner dead names nothing: the owner's items come back in order, replicas kept")
    func holderThatKeptTheShelfNamesNothing() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        let check = a.tick(now: 10 * second)
        #expect(a.heldBackCount == 10)
        let verdict = try deliver(check, from: A, to: B, into: &b, now: 10 * second + 1)
        _ = try deliver(verdict, from: B, to: A, into: &a, now: 10 * second + 2)
        #expect(a.heldBackCount == 0 && b.shelvedItems == 10 && b.count == 0)
        let popped = a.pop(max: 100, waiter: nil, now: 10 * second + 3)
        #expect(popped.0.map(number) == Array(0..<10))
        // Popped: their replicas are released as usual.
        #expect(released(a.tick(now: 11 * second), to: B) == 10)
    }

    @Test("The holder asked is declared dead before answering: the owner keeps its items held (the verdict may be its own stall's) until the check's deadline, replicated again meanwhile")
    func holderDiesBeforeVerdict() throws {
        var m = mesh([A, B, C])
        var (a, b) = (m[0], m[1])
        let (outcome, actions) = a.push((0..<10).map { payload($0) }, now: 1)
        #expect(outcome == .accepted)
        let holder = replicas(actions)[0].0
        if holder == B {
            _ = try deliver(try deliver(actions, from: A, to: B, into: &b, now: 2), from: B, to: A, into: &a, now: 3)
        } else {
            _ = try deliver(try deliver(actions, from: A, to: C, into: &m[2], now: 2), from: C, to: A, into: &a, now: 3)
        }
        _ = a.tick(now: 10 * second)
        #expect(a.heldBackCount == 10)
        _ = a.peerDisconnected(holder, now: 11 * second)
        let died = a.peerDied(holder, now: 11 * second)
        #expect(a.heldBackCount == 10 && a.count == 0)
        #expect(replicas(died).map(\.1).reduce(0, +) == 10)
        _ = a.tick(now: 10 * second + a.configuration.custodyCheckTimeout)
        #expect(a.heldBackCount == 0 && a.count == 10)
    }

    @Test("Own items without a replica yet are not held back after a stall")
    func unreplicatedItemsStay() throws {
        var m = mesh([A, B])
        var a = m[0]
        m = []
        _ = a.push((0..<5).map { payload($0) }, now: 1)  // the replica transfer is never acknowledged
        _ = a.tick(now: 10 * second)
        #expect(a.heldBackCount == 0 && a.count == 5)
    }

    @Test("A replica transfer whose ack is late is released at that peer, ahead of the copy sent again: the holder keeps exactly one")
    func lateReplicaAckLeavesNoStrayCopy() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        let (_, pushed) = a.push((0..<10).map { payload($0) }, now: 1)
        let timeout = a.configuration.transferTimeout
        let timedOut = a.tick(now: 2 + timeout)
        #expect(released(timedOut, to: B) == 10)
        // The first copy arrives late, then the release: nothing kept.
        _ = try deliver(pushed, from: A, to: B, into: &b, now: 3 + timeout)
        _ = try deliver(timedOut, from: A, to: B, into: &b, now: 4 + timeout)
        #expect(b.shelvedItems == 0)
        // Sent again once B may be asked again; acknowledged, it is the one copy kept.
        let again = a.tick(now: 5 + timeout + a.configuration.statsInterval)
        #expect(replicas(again).map(\.1).reduce(0, +) == 10)
        _ = try deliver(try deliver(again, from: A, to: B, into: &b, now: 6 + timeout + a.configuration.statsInterval),
                        from: B, to: A, into: &a, now: 7 + timeout + a.configuration.statsInterval)
        #expect(b.shelvedItems == 10 && a.counters.replicated == 10)
    }

    @Test("A resumed owner whose first input is a lost link still sees its stall: its replicated items are held back before a peer can take them")
    func stallSeenOnALostLinkFirst() throws {
        let (owner, holder) = try ownerWithTenReplicated()
        var a = owner
        // Resumed 10 s later: its keepalive drops the silent links before anything else.
        let other = holder == B ? C : B
        _ = a.peerDisconnected(other, now: 10 * second)
        #expect(a.heldBackCount == 10 && a.count == 0)
    }

    @Test("A resumed owner whose first input is a steal request that waited during its pause gives none of its replicated items: they are held back first")
    func stallSeenOnAStealFirst() throws {
        let (owner, holder) = try ownerWithTenReplicated()
        var a = owner
        #expect(a.count == 10)
        // Resumed 10 s later: the steal a peer sent while it was paused is the first input.
        let thief = holder == B ? C : B
        let answer = a.received(.stealRequest(queue: "q", requestID: 7, maxItems: 10, thiefRate: 100), from: thief, now: 10 * second)
        #expect(answer.transfers.isEmpty, "gave \(answer.transfers.map { $0.items.count }) items right after its stall")
        #expect(a.heldBackCount == 10 && a.count == 0)
    }

    @Test("A pause just past the threshold is a stall though the timer was armed late in it; ticks on time never are")
    func stallMeasuredFromTheLastInput() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        // Ticks on time for 10 s: no stall, nothing held.
        var now = 10 * ms
        while now < 10 * second {
            now += a.configuration.statsInterval
            _ = a.tick(now: now)
            #expect(a.heldBackCount == 0)
        }
        // Stopped right after an input, which armed the timer a stats interval ahead; resumed
        // 1.1 s later, only 0.85 s after that deadline, but long enough for a death verdict.
        _ = a.tick(now: now)
        _ = a.tick(now: now + a.configuration.stallThreshold + 100 * ms)
        #expect(a.heldBackCount == 10 && a.count == 0)
    }

    @Test("Originals of an owner whose replicas a node re-queued are dropped when they reach that node, and confirmed to the owner as consumed")
    func requeuedOriginalsArrivingAreDropped() throws {
        var m = mesh([A, B])
        var (a, b) = (m[0], m[1])
        m = []
        try replicated(&a, &b, 10)
        // B declares A dead (A was paused) and re-queues the 10 replicas as its own.
        _ = b.peerDisconnected(A, now: 3 * second)
        _ = b.peerDied(A, now: 3 * second)
        #expect(b.count == 10 && b.counters.replicasRequeued == 10)
        // A never saw a gap long enough to call a stall (it was suspected before a short
        // pause): it comes back on a new link without having noticed, and hands its originals
        // to B.
        var now = 10 * ms
        while now < 3 * second {
            now += 200 * ms
            _ = a.tick(now: now)
        }
        _ = b.peerConnected(A, keepsReplicas: true, now: 3 * second + 1)
        let handOff = a.close(now: 3 * second + 2)
        #expect(a.heldBackCount == 0)
        let acks = try deliver(handOff, from: A, to: B, into: &b, now: 3 * second + 3)
        #expect(b.count == 10, "B queues \(b.count): the originals came in beside their re-queued copies")
        #expect(b.counters.staleCopiesDropped == 10)
        // Acknowledged to A, then confirmed as consumed: A forgets them.
        _ = try deliver(acks, from: B, to: A, into: &a, now: 3 * second + 4)
        _ = try deliver(b.tick(now: 4 * second), from: B, to: A, into: &a, now: 4 * second + 1)
        #expect(a.ownedItems == 0)
        // Every item reaches a consumer once.
        #expect(b.pop(max: 100, waiter: nil, now: 5 * second).0.map(number) == Array(0..<10))
    }
}
