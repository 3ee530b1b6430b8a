import P2PQQueue
import P2PQWire

/// The named queues, as parts of the node: created on first use (by this node or a peer's
/// message) and introduced to the linked peers, fed their messages and timers, told of peer
/// events in name order, and their dead letters pushed into the dead-letter queue here. The
/// call queue's actions go through the calls first (``applyCallQueue(_:into:now:)``).
extension NodeMachine {
    /// The hello feature bits of `peer`'s kept link (0 without one).
    public func features(of peer: PeerID) -> UInt64 {
        link(to: peer).flatMap { linkFeatures[$0] } ?? 0
    }

    /// Whether a queue named `name` exists or can be made (within ``NodeMachineConfiguration/maxQueues``,
    /// a name of 1 to 255 UTF-8 bytes); makes it, introduced to every linked peer.
    public mutating func ensureQueue(_ name: String, now: UInt64) -> (exists: Bool, actions: [Action]) {
        var actions: [Action] = []
        let exists = ensureQueue(name, into: &actions, now: now)
        return (exists, actions)
    }

    mutating func ensureQueue(_ name: String, into actions: inout [Action], now: UInt64) -> Bool {
        if queues[name] != nil { return true }
        guard queues.count < configuration.maxQueues, (1...QueueWire.maxQueueNameLength).contains(name.utf8.count) else {
            return false
        }
        var queueConfiguration = configuration.queue
        // Sequences start past every earlier process of this identity.
        queueConfiguration.firstSequence = Swift.max(queueConfiguration.firstSequence, configuration.incarnation)
        // The node's internal queues (remote calls) have their own retries: no replicas.
        if name.hasPrefix("p2pq.") { queueConfiguration.replication = .local }
        queues[name] = QueueMachine(name: name, localPeer: localPeer, configuration: queueConfiguration)
        withQueue(name, into: &actions, now: now) { $0.start(now: now) }
        for peer in connections.linkedPeers {
            let adopts = adoptsOwnership(peer), keeps = keepsReplicas(peer)
            withQueue(name, into: &actions, now: now) {
                $0.peerConnected(peer, adoptsOwnership: adopts, keepsReplicas: keeps, now: now)
            }
        }
        return true
    }

    // MARK: Inputs from the API

    /// Pushes `items` into `name` (made if need be); nil when it cannot be made.
    public mutating func push(_ items: [[UInt8]], into name: String, now: UInt64) -> (PushOutcome, [Action])? {
        queueInput(name, now: now) { $0.push(items, now: now) }
    }

    /// Pushes a packed batch into `name` (made if need be); nil when it cannot be made.
    public mutating func push(_ batch: ItemBatch, into name: String, now: UInt64) -> (PushOutcome, [Action])? {
        queueInput(name, now: now) { $0.push(batch, now: now) }
    }

    /// Pops from `name` (made if need be; ``QueueMachine/pop(max:waiter:now:)``); nil when it cannot be made.
    public mutating func pop(_ name: String, max: Int, waiter: WaiterID?, now: UInt64) -> (ItemPayloads, [Action])? {
        queueInput(name, now: now) { $0.pop(max: max, waiter: waiter, now: now) }
    }

    /// A leased pop from `name` (``QueueMachine/popLeased(max:lease:waiter:now:)``).
    public mutating func popLeased(_ name: String, max: Int, lease: UInt64, waiter: WaiterID?,
                                   now: UInt64) -> ([LeasedPayload], [Action])? {
        queueInput(name, now: now) { $0.popLeased(max: max, lease: lease, waiter: waiter, now: now) }
    }

    /// The mark that a push just accepted into `name` waits for until its items' replicas are
    /// acknowledged (``QueueMachine/awaitsReplica(before:)``); nil when none is awaited.
    public mutating func replicaMark(in name: String) -> UInt64? {
        // In place (no copy of the queue's state): this runs after every accepted push.
        queues[name]?.update { queue -> UInt64? in
            let mark = queue.nextItemSequence
            return queue.awaitsReplica(before: mark) ? mark : nil
        } ?? nil
    }

    /// Withdraws a waiting pop of `name`.
    public mutating func cancelWait(_ waiter: WaiterID, in name: String, now: UInt64) -> [Action] {
        var actions: [Action] = []
        withQueue(name, into: &actions, now: now) { $0.cancelWait(waiter, now: now) }
        return actions
    }

    /// Acknowledges leased items of `name`: how many, the tokens not leased here; nil without the queue.
    public mutating func ack(_ tokens: [LeaseToken], in name: String, now: UInt64) -> (Int, [LeaseToken], [Action])? {
        settle(tokens, in: name, now: now) { $0.ack(tokens, now: now) }
    }

    /// Gives leased items of `name` back; as ``ack(_:in:now:)``.
    public mutating func nack(_ tokens: [LeaseToken], in name: String, now: UInt64) -> (Int, [LeaseToken], [Action])? {
        settle(tokens, in: name, now: now) { $0.nack(tokens, now: now) }
    }

    private mutating func settle(_ tokens: [LeaseToken], in name: String, now: UInt64,
                                 _ input: (inout QueueMachine) -> (Int, [LeaseToken], [QueueAction])) -> (Int, [LeaseToken], [Action])? {
        guard queues[name] != nil else { return nil }
        var actions: [Action] = []
        let (count, unknown) = withQueue(name, into: &actions, now: now) { queue -> ((Int, [LeaseToken]), [QueueAction]) in
            let (count, unknown, queueActions) = input(&queue)
            return ((count, unknown), queueActions)
        } ?? (0, tokens)
        return (count, unknown, actions)
    }

    /// Removes the items of `name` whose payload `matches`; how many went.
    public mutating func remove(from name: String, where matches: (ItemPayload) -> Bool, now: UInt64) -> (Int, [Action]) {
        var actions: [Action] = []
        let removed = withQueue(name, into: &actions, now: now) { $0.remove(where: matches, now: now) } ?? 0
        return (removed, actions)
    }

    /// Closes `name` (made if need be) to pushes.
    public mutating func close(_ name: String, now: UInt64) -> [Action] {
        var actions: [Action] = []
        guard ensureQueue(name, into: &actions, now: now) else { return actions }
        withQueue(name, into: &actions, now: now) { $0.close(now: now) }
        return actions
    }

    /// The node begins a graceful stop: the calls stop using the call queue, then every queue,
    /// in name order, hands its items on.
    public mutating func drainQueues(now: UInt64) -> [Action] {
        var actions: [Action] = []
        callsDraining(into: &actions, now: now)
        for name in queues.keys.sorted() { withQueue(name, into: &actions, now: now) { $0.drain(now: now) } }
        return actions
    }

    // MARK: Inputs from the links

    /// A queue message from `peer` (its queue made if need be; over the limit it is ignored,
    /// and the sender times out).
    public mutating func received(_ message: consuming QueueMessage, from peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        let name = message.queue
        guard ensureQueue(name, into: &actions, now: now) else { return actions }
        guard let queueActions = queues[name]?.received(message, from: peer, now: now) else { return actions }
        apply(queueActions, of: name, into: &actions, now: now)
        return actions
    }

    /// A queue message could not be sent to `peer` (no ready link): its queue takes it back.
    public mutating func sendFailed(_ message: QueueMessage, to peer: PeerID, now: UInt64) -> [Action] {
        var actions: [Action] = []
        withQueue(message.queue, into: &actions, now: now) { $0.sendFailed(message, to: peer, now: now) }
        return actions
    }

    // MARK: Peer events

    func adoptsOwnership(_ peer: PeerID) -> Bool { features(of: peer) & QueueWire.featureOwnershipHandover != 0 }
    func keepsReplicas(_ peer: PeerID) -> Bool { features(of: peer) & QueueWire.featureReplicas != 0 }

    /// A peer event as ``PeerEventRouting`` routes it to the queues, in name order.
    mutating func queuesHeard(_ input: QueuesPeerInput, into actions: inout [Action], now: UInt64) {
        for name in queues.keys.sorted() {
            switch input {
            case .connected(let peer):
                let adopts = adoptsOwnership(peer), keeps = keepsReplicas(peer)
                withQueue(name, into: &actions, now: now) {
                    $0.peerConnected(peer, adoptsOwnership: adopts, keepsReplicas: keeps, now: now)
                }
            case .linkReplaced(let peer):
                // What was sent on the old link may or may not have arrived: transfers in flight
                // go again on the new one (the peer drops copies it already has), not to others.
                let adopts = adoptsOwnership(peer), keeps = keepsReplicas(peer)
                withQueue(name, into: &actions, now: now) {
                    $0.peerLinkReplaced(peer, adoptsOwnership: adopts, keepsReplicas: keeps, now: now)
                }
            case .disconnected(let peer, let keeping):
                withQueue(name, into: &actions, now: now) { $0.peerDisconnected(peer, keepingTransfers: keeping, now: now) }
            case .died(let peer):
                withQueue(name, into: &actions, now: now) { $0.peerDied(peer, now: now) }
            case .rejoined(let peer, let linked):
                let keeps = keepsReplicas(peer)
                withQueue(name, into: &actions, now: now) { $0.peerRejoined(peer, linked: linked, keepsReplicas: keeps, now: now) }
            case .restarted(let peer, let linked):
                let keeps = keepsReplicas(peer)
                withQueue(name, into: &actions, now: now) { $0.peerRestarted(peer, linked: linked, keepsReplicas: keeps, now: now) }
            case .declaredDead:
                withQueue(name, into: &actions, now: now) { $0.declaredDead(now: now) }
            }
        }
    }

    // MARK: Driving the queue machines

    /// Runs `input` on queue `name`, made if need be; nil when it cannot be made.
    private mutating func queueInput<Result>(_ name: String, now: UInt64,
                                             _ input: (inout QueueMachine) -> (Result, [QueueAction])) -> (Result, [Action])? {
        var actions: [Action] = []
        // One lookup when the queue exists (every call but the first).
        if let (result, queueActions) = queues[name]?.update(input) {
            apply(queueActions, of: name, into: &actions, now: now)
            return (result, actions)
        }
        guard ensureQueue(name, into: &actions, now: now) else { return nil }
        guard let result = withQueue(name, into: &actions, now: now, input) else { return nil }
        return (result, actions)
    }

    /// Runs `input` on queue `name` in place, if it exists, and takes its actions as the node's.
    @discardableResult
    mutating func withQueue<Result>(_ name: String, into actions: inout [Action], now: UInt64,
                                    _ input: (inout QueueMachine) -> (Result, [QueueAction])) -> Result? {
        guard let (result, queueActions) = queues[name]?.update(input) else { return nil }
        apply(queueActions, of: name, into: &actions, now: now)
        return result
    }

    mutating func withQueue(_ name: String, into actions: inout [Action], now: UInt64,
                            _ input: (inout QueueMachine) -> [QueueAction]) {
        withQueue(name, into: &actions, now: now) { ((), input(&$0)) }
    }

    /// A queue's actions as the node's; dead letters are pushed into their queue here.
    private mutating func apply(_ queueActions: consuming [QueueAction], of name: String, into actions: inout [Action], now: UInt64) {
        guard !queueActions.isEmpty else { return }
        if calls.isAttached, name == calls.queueName {
            applyCallQueue(queueActions, into: &actions, now: now)
            return
        }
        if actions.isEmpty {
            // The common case: no dead letter, nothing before; one array, no per-action copy.
            guard queueActions.contains(where: { if case .deadLetter = $0 { true } else { false } }) else {
                actions.reserveCapacity(queueActions.count)
                for action in queueActions { actions.append(.queue(name, action)) }
                return
            }
        }
        for action in queueActions {
            guard case .deadLetter(let token, let payload, let target) = action else {
                actions.append(.queue(name, action))
                continue
            }
            deadLetter(token, payload, from: name, into: target, actions: &actions, now: now)
        }
    }

    /// Pushes a dead-lettered item of `name` into `target` on this node, then lets `name`
    /// confirm it; a refused push is left for the machine to retry.
    mutating func deadLetter(_ token: LeaseToken, _ payload: ItemPayload, from name: String, into target: String,
                                     actions: inout [Action], now: UInt64) {
        guard !isStopped, target != name, ensureQueue(target, into: &actions, now: now) else { return }
        let outcome = withQueue(target, into: &actions, now: now) { $0.push([payload], now: now) }
        guard outcome == .accepted else {
            deadLetterRefusals += 1
            actions.append(.deadLettered(from: name, into: target, refusals: deadLetterRefusals))
            return
        }
        actions.append(.deadLettered(from: name, into: target, refusals: 0))
        withQueue(name, into: &actions, now: now) { $0.deadLettered(token, now: now) }
    }
}

extension QueueMachine {
    /// Runs `body` on this machine in place (`queues[name]!.update`: no copy of its state).
    mutating func update<Result>(_ body: (inout QueueMachine) -> Result) -> Result { body(&self) }
}
