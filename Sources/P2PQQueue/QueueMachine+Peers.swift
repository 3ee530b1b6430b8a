import DequeModule
import P2PQWire

// Peer inputs behind the front's entry points: a link coming up, a peer's messages, a failed send.

extension QueueMachine {
    /// What ``peerConnected(_:adoptsOwnership:keepsReplicas:now:)`` does for another node;
    /// false if the peer cannot be tracked (the input then ends without its epilogue).
    mutating func linkReady(_ peer: PeerID, adoptsOwnership: Bool, keepsReplicas: Bool, _ actions: inout [Action],
                            now: UInt64) -> Bool {
        if deadPeers.contains(peer) {  // a restart under the same identity
            forgetDeath(of: peer)
            if keepsReplicas { releaseAll(to: peer, &actions) }
        }
        guard view(peer) != nil else { return false }
        // Items pushed while no peer kept replicas completed unreplicated: the first such peer
        // gets them now (the owner's death no longer loses them).
        if keepsReplicas && replicates && !peers.values.contains(where: { $0.connected && $0.keepsReplicas && !$0.closed }) {
            replicateUnreplicated()
        }
        peers.update(peer) { view in
            view.connected = true
            view.adoptsOwnership = adoptsOwnership
            view.keepsReplicas = keepsReplicas
            view.replicaRefusedUntil = 0
            view.closed = false  // a restarted process is open again; its report will say
        }
        sendCheck(to: peer, &actions, now: now)
        sendReplicaCheck(to: peer, &actions, now: now)
        // A new link may lead to a restarted process whose reports count from the start again.
        peers.update(peer) { $0.hasReport = false }
        sendStats(to: [peer], &actions, now: now)
        if isClosed { handOff(&actions, now: now) }
        flushNotices(&actions, now: now, force: true, only: peer)
        flushReleases(&actions, now: now, force: true)
        sendReplicas(&actions, now: now)
        return true
    }

    /// The work of ``received(_:from:now:)`` after the stall check; false when the input ends
    /// without the common epilogue (``finish(_:now:)``).
    mutating func receive(_ message: consuming QueueMessage, from peer: PeerID, _ actions: inout [Action],
                          now: UInt64) -> Bool {
        if case .custodyCheck(_, let checkID, let checked) = message {
            // Answered even if this node believes the asker dead: that belief is the reason.
            actions.append(.send(.custodyVerdict(queue: name, checkID: checkID, stale: staleCopies(checked)), to: peer))
            return false
        }
        if case .replicaCheck(_, let checkID, let checked) = message {
            // Answered even if this node believes the owner dead: that belief is the reason.
            answerReplicaCheck(checkID, checked, from: peer, &actions, now: now)
            return true
        }
        if case .replicaRelease(_, let runs) = message, shelf.grace[peer] != nil {
            for run in runs { shelf.drop(run, of: peer, store: &store) }  // a leaving owner's last releases
            return false
        }
        guard !deadPeers.contains(peer) else { return false }
        if case .transfer(_, let transferID, let kind, let requestID, let items) = message {
            // Drop the message's reference first, so the items array is ours alone and its
            // items can move into the queue.
            message = .ownerUpdateAck(queue: name, updateID: 0)
            receiveTransfer(items, id: transferID, kind: kind, requestID: requestID, from: peer, &actions, now: now)
            return true
        }
        switch message {
        case .stats(_, let stats):
            if case .accepted = acceptStats(stats, from: peer, now: now) {
                dispatchToIdlePeers(&actions, now: now)
                feedFromSource(&actions, now: now)
                maybeSteal(&actions, now: now)
            }
        case .stealRequest(_, let requestID, let maxItems, let thiefRate):
            answerSteal(from: peer, requestID: requestID, maxItems: Int(maxItems), thiefRate: thiefRate, &actions, now: now)
        case .stealEmpty(_, let requestID):
            if let steal, steal.peer == peer, steal.requestID == requestID {
                self.steal = nil
                counters.stealsEmpty += 1
                peers[peer]?.reportedLength = 0
                maybeSteal(&actions, now: now)
            }
        case .transfer:
            break  // above
        case .transferAck(_, let transferID, let status):
            acknowledge(transferID, status: status, from: peer, &actions, now: now)
        case .ownerUpdate(_, let updateID, let popped, let custody):
            actions.append(.send(.ownerUpdateAck(queue: name, updateID: updateID), to: peer))
            if appliedUpdates[peer, default: RecentIDs()].insert(updateID) {
                ownerUpdate(popped: popped, custody: custody, from: peer, &actions, now: now)
                // Custody news may have moved offered records on: offer them to the new holder.
                if isDraining && !custody.isEmpty { grantOwnership(&actions, now: now) }
            }
        case .ownerChange(_, let changeID, let groups):
            receiveOwnerChange(changeID, groups: groups.filter { $0.holder == localPeer }, from: peer, &actions, now: now)
        case .ownerUpdateAck(_, let updateID):
            if let change = sentChanges[updateID], change.holder == peer {
                sentChanges[updateID] = nil
                ownershipGranted(change, now: now)
            } else if let update = sentUpdates[updateID], update.owner == peer {
                sentUpdates[updateID] = nil
                counters.noticesAcknowledged += update.popped.reduce(0) { $0 + Int($1.count) }
                    + update.custody.reduce(0) { total, group in total + group.runs.reduce(0) { $0 + Int($1.count) } }
                flushNotices(&actions, now: now, force: isDraining, only: peer)
            }
        case .custodyCheck:
            break  // above
        case .custodyVerdict(_, let checkID, let stale):
            if let held = heldBack[peer], held.checkID == checkID {
                heldBack[peer] = nil
                release(held, stale: stale, &actions, now: now)
            }
        case .replicaRelease(_, let runs):
            for run in runs { shelf.drop(run, of: peer, store: &store) }
        case .replicaCheck:
            break  // above
        case .replicaVerdict(_, let checkID, let requeued):
            if let held = heldOwn[peer], held.checkID == checkID {
                heldOwn[peer] = nil
                release(held, stale: requeued, &actions, now: now)
            }
        }
        return true
    }

    /// Takes back what a message that could not be sent stood for (``sendFailed(_:to:now:)``).
    mutating func recoverFailedSend(_ message: QueueMessage, to peer: PeerID, _ actions: inout [Action], now: UInt64) {
        switch message {
        case .transfer(_, let transferID, _, _, _):
            if transfers[transferID]?.peer == peer { returnTransfers([transferID], &actions, now: now) }
            if replicaSends[transferID]?.peer == peer { replicaAcknowledged(transferID, status: nil, now: now, &actions) }
        case .stealRequest(_, let requestID, _, _):
            if let steal, steal.requestID == requestID {
                self.steal = nil
                peers[peer]?.reportedLength = 0
                peers[peer]?.connected = false
                maybeSteal(&actions, now: now)
            }
        case .ownerUpdate(_, let updateID, _, _):
            // Kept for when the owner is reachable again (or dropped when it dies).
            if let update = sentUpdates.removeValue(forKey: updateID) { requeueNotices(update, now: now) }
        case .ownerChange(_, let changeID, _):
            if let change = sentChanges.removeValue(forKey: changeID) { revertGrant(change) }
        case .custodyCheck(_, let checkID, _):
            if heldBack[peer]?.checkID == checkID { heldBack[peer]!.checkID = nil }  // asked again on the next link
        case .replicaCheck(_, let checkID, _):
            if heldOwn[peer]?.checkID == checkID { heldOwn[peer]!.checkID = nil }
        case .replicaRelease(_, let runs):
            // Kept for the next link (or dropped when the holder dies).
            for run in runs { release(run, to: peer, now: now) }
        case .stats, .stealEmpty, .transferAck, .ownerUpdateAck, .custodyVerdict, .replicaVerdict:
            break  // the peer times out or asks again
        }
    }

    /// The link to `peer` is gone (``peerDisconnected(_:now:)``, ``peerLinkReplaced(_:adoptsOwnership:keepsReplicas:now:)``).
    mutating func disconnected(_ peer: PeerID, keepingTransfers: Bool, _ actions: inout [Action], now: UInt64) {
        peers[peer]?.connected = false
        if shelf.grace.removeValue(forKey: peer) != nil { requeueShelf(of: peer, &actions, now: now) }
        linkLost(peer, keepingTransfers: keepingTransfers, &actions, now: now)
    }
}
