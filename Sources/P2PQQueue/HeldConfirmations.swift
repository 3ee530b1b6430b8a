import DequeModule
import P2PQWire

/// Pop confirmations an owner refused for now: the sender is not the recorded holder of
/// those items. A custody update from the previous holder may still be on its way (it races
/// the new holder's confirmation), so each is held until custody names the sender, then
/// applied, or until ``timeout`` passes or the table is full, then dropped (a forgery, or a
/// confirmation of a duplicate delivery). Bounded by ``capacity`` sequences.
struct HeldConfirmations: Sendable {
    static let capacity = 65_536
    static let timeout: UInt64 = 30_000_000_000
    private struct Entry: Sendable {
        var sequence: UInt64
        var peer: PeerID
        var since: UInt64
    }
    /// Oldest first.
    private var entries = Deque<Entry>()
    /// Entries per peer, so custody news from an unrelated holder costs nothing.
    private var perPeer: [PeerID: Int] = [:]

    var isEmpty: Bool { entries.isEmpty }
    var count: Int { entries.count }

    /// Holds `sequences` from `peer`; returns how many older ones were dropped for room.
    mutating func hold(_ sequences: [UInt64], from peer: PeerID, now: UInt64) -> Int {
        var dropped = 0
        for sequence in sequences {
            if entries.count >= Self.capacity, let oldest = entries.popFirst() {
                release(oldest.peer)
                dropped += 1
            }
            entries.append(Entry(sequence: sequence, peer: peer, since: now))
            perPeer[peer, default: 0] += 1
        }
        return dropped
    }

    /// Offers `peer`'s held sequences to `apply`; those it settles (returns true for) go.
    mutating func retry(from peer: PeerID, _ apply: (UInt64) -> Bool) {
        guard perPeer[peer] != nil else { return }
        var kept = Deque<Entry>()
        for entry in entries {
            if entry.peer == peer && apply(entry.sequence) {
                release(peer)
            } else {
                kept.append(entry)
            }
        }
        entries = kept
    }

    /// Drops what has waited past the timeout; how many.
    mutating func expire(now: UInt64) -> Int {
        var dropped = 0
        while let oldest = entries.first, now >= oldest.since &+ Self.timeout {
            entries.removeFirst()
            release(oldest.peer)
            dropped += 1
        }
        return dropped
    }

    private mutating func release(_ peer: PeerID) {
        if let n = perPeer[peer], n > 1 { perPeer[peer] = n - 1 } else { perPeer[peer] = nil }
    }
}
