import P2PQWire

/// An item's identity: the node it was pushed at (its owner) and that node's sequence number
/// for the queue. Unique per queue as long as the owner's identity lives.
public struct ItemID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The node where the item was pushed; it keeps a copy until it learns the item was popped.
    public var origin: PeerID
    /// The origin's counter for this queue, from 1.
    public var sequence: UInt64

    public init(origin: PeerID, sequence: UInt64) {
        self.origin = origin
        self.sequence = sequence
    }

    public static func < (lhs: ItemID, rhs: ItemID) -> Bool {
        (lhs.origin, lhs.sequence) < (rhs.origin, rhs.sequence)
    }

    public var description: String { "\(origin.description.prefix(8))#\(sequence)" }
}

/// One item with its delivery bookkeeping.
public struct QueueItem: Sendable, Equatable {
    public var id: ItemID
    /// How often the owner re-queued the item after a holder died (0 for the original).
    /// Part of the duplicate-detection key, so a re-queued copy is never mistaken for a
    /// retransmission of the lost one.
    public var attempt: UInt32
    /// Transfers this copy went through since it was (re-)queued by its owner.
    public var hops: UInt32
    /// The item's bytes, opaque to the queue.
    public var payload: ItemPayload

    public init(id: ItemID, attempt: UInt32 = 0, hops: UInt32 = 0, payload: ItemPayload) {
        self.id = id
        self.attempt = attempt
        self.hops = hops
        self.payload = payload
    }

    public init(id: ItemID, attempt: UInt32 = 0, hops: UInt32 = 0, payload: [UInt8]) {
        self.init(id: id, attempt: attempt, hops: hops, payload: ItemPayload(payload))
    }
}

/// A node's load report for one queue, gossiped every stats interval.
public struct LoadStats: Sendable, Equatable {
    /// Increases with every report of the sender; an older or repeated one is stale.
    public var sequence: UInt64
    /// Items in the sender's local queue.
    public var length: UInt64
    /// Consumers waiting in a pop at the sender.
    public var waiting: UInt32
    /// EWMA of the sender's pops per second while it had work (0 when unknown).
    public var serviceRate: Double
    /// Seconds the sender expects to need for its queue at its service rate.
    public var finishTime: Double
    /// The sender has consumers (it pops); a node without is a pure source.
    public var hasConsumers: Bool
    /// The sender accepts transferred items (false once its queue is closed).
    public var accepting: Bool

    public init(
        sequence: UInt64, length: UInt64, waiting: UInt32, serviceRate: Double, finishTime: Double,
        hasConsumers: Bool, accepting: Bool = true
    ) {
        self.sequence = sequence
        self.length = length
        self.waiting = waiting
        self.serviceRate = serviceRate
        self.finishTime = finishTime
        self.hasConsumers = hasConsumers
        self.accepting = accepting
    }

    /// Largest believable queue length (2^40 items).
    public static let maxLength: UInt64 = 1 << 40
    /// Largest believable number of waiting consumers.
    public static let maxWaiting: UInt32 = 1 << 24
    /// Largest believable service rate, pops per second.
    public static let maxServiceRate: Double = 1e9
    /// Largest believable finish time, seconds (about 115 days).
    public static let maxFinishTime: Double = 1e7

    /// Checks every field is a plausible, finite, non-negative value.
    public func validate() throws(WireError) {
        guard length <= Self.maxLength else {
            throw .malformed(field: "stats.length", reason: "\(length) exceeds \(Self.maxLength)")
        }
        guard waiting <= Self.maxWaiting else {
            throw .malformed(field: "stats.waiting", reason: "\(waiting) exceeds \(Self.maxWaiting)")
        }
        try Self.check(serviceRate, field: "stats.serviceRate", limit: Self.maxServiceRate)
        try Self.check(finishTime, field: "stats.finishTime", limit: Self.maxFinishTime)
    }

    private static func check(_ value: Double, field: String, limit: Double) throws(WireError) {
        if value.isNaN { throw .malformed(field: field, reason: "NaN") }
        if value.isInfinite { throw .malformed(field: field, reason: "infinite") }
        if value < 0 { throw .malformed(field: field, reason: "negative (\(value))") }
        if value > limit { throw .malformed(field: field, reason: "\(value) exceeds \(limit)") }
    }

    static let flagHasConsumers: UInt8 = 1
    static let flagAccepting: UInt8 = 2
}

/// Why items are transferred. The receiver treats them alike, except ``drain`` (it takes over
/// their ownership); the other kinds are for stats and logs.
public enum TransferKind: UInt8, Sendable, CaseIterable {
    /// Push to balance: the sender's finish time was well above the average.
    case balance = 0
    /// The answer to a steal request.
    case steal = 1
    /// New items sent straight to a peer with idle consumers.
    case dispatch = 2
    /// A closing queue hands its items away.
    case handoff = 3
    /// p2pqueue's periodic push (the legacy strategy).
    case legacy = 4
    /// A stopping node hands its items away together with their ownership: the receiver
    /// becomes the owner of the items the sender owned (it numbers them as its own). Sent only
    /// to peers whose hello announced ``QueueWire/featureOwnershipHandover``.
    case drain = 5
    /// An owner's copies of items it keeps queued itself (replication): the receiver keeps them
    /// aside, not in its queue, until the owner releases them (``QueueMessage/replicaRelease``)
    /// or dies (then it queues them as its own). Sent only to peers whose hello announced
    /// ``QueueWire/featureReplicas``.
    case replica = 6
}

/// The receiver's answer to a transfer.
public enum TransferStatus: UInt8, Sendable, CaseIterable {
    /// The items are in the receiver's queue (duplicates among them were dropped); the sender
    /// forgets them.
    case accepted = 0
    /// The receiver's queue is full; the sender keeps the items.
    case full = 1
    /// The receiver's queue is closed; the sender keeps the items.
    case closed = 2
}

/// A run of consecutive sequence numbers of one owner: `first ..< first + count`.
public struct SequenceRun: Hashable, Sendable {
    public var first: UInt64
    public var count: UInt32

    public init(first: UInt64, count: UInt32) {
        self.first = first
        self.count = count
    }
}

/// Custody news for an owner: items of `attempt` that now sit at `holder` after `hops` transfers.
public struct CustodyChange: Hashable, Sendable {
    public var holder: PeerID
    public var attempt: UInt32
    public var hops: UInt32
    public var runs: [SequenceRun]

    public init(holder: PeerID, attempt: UInt32, hops: UInt32, runs: [SequenceRun]) {
        self.holder = holder
        self.attempt = attempt
        self.hops = hops
        self.runs = runs
    }
}

/// A run of a holder's copies named in a custody check: consecutive sequences of the owner's
/// items, all at one attempt.
public struct CheckedRun: Sendable, Hashable {
    public var first: UInt64
    public var count: UInt32
    public var attempt: UInt32

    public init(first: UInt64, count: UInt32, attempt: UInt32) {
        self.first = first
        self.count = count
        self.attempt = attempt
    }
}

/// Limits of the queue messages.
public enum QueueWire {
    /// The hello feature bit (§5) of a node that understands ``TransferKind/drain``: a peer
    /// without it gets a stopping node's items as ``TransferKind/handoff`` (ownership stays).
    public static let featureOwnershipHandover: UInt64 = 1 << 0
    /// The hello feature bit (§5) of a node that keeps replicas (``TransferKind/replica``) and
    /// understands ``QueueMessage/replicaRelease``: only such peers are sent replicas.
    public static let featureReplicas: UInt64 = 1 << 1
    /// Longest queue name, UTF-8 bytes.
    public static let maxQueueNameLength = 255
    /// Most items in one transfer.
    public static let maxTransferItems = 65_535
    /// Most distinct origins in one transfer.
    public static let maxOrigins = 65_535
    /// Most runs (all groups together) in one owner update.
    public static let maxRunsPerUpdate = 65_535
    /// Bytes a transfer body takes besides its items: name (4 + name), transfer ID, kind,
    /// request ID, origin count, item count.
    public static func transferOverhead(queueNameLength: Int) -> Int { 4 + queueNameLength + 8 + 1 + 8 + 2 + 4 }
    /// Bytes a run of items takes in a transfer besides its items: origin index, first
    /// sequence, item count, attempt, hops. A run is items of one origin with consecutive
    /// sequences and the same attempt and hop count, as a pushed batch's items travel.
    public static let runOverhead = 2 + 8 + 4 + 4 + 4
    /// Bytes one item takes in a transfer besides its payload and its run's header: its length.
    public static let itemOverhead = 4
    /// A received transfer whose payloads average less than this many bytes keeps them in one
    /// shared array (a consumer popping arrays copies each out); larger ones get an array each.
    /// At 1 KiB an array per item cost the W1 consumer a `malloc` and a `free` per item, about
    /// 8 % of its CPU; sharing keeps at most one frame alive per kept item, as for small items.
    public static let sharedPayloadLimit = 16_384
    /// Bytes one origin takes in a transfer.
    public static let originSize = WireProtocol.peerIDSize
}

/// A message of the queue layer (types `0x20–0x3F`). Every message names its queue.
///
/// Layouts (big-endian, `str` = u32 length + UTF-8, 1...255 bytes):
/// - stats `0x20`: queue str, sequence u64, length u64, waiting u32, flags u8 (bit 0 has
///   consumers, bit 1 accepting; others 0), service rate f64, finish time f64;
/// - steal request `0x21`: queue str, request ID u64, max items u32 (≥ 1), thief rate f64;
/// - steal empty `0x22`: queue str, request ID u64;
/// - transfer `0x23`: queue str, transfer ID u64, kind u8, request ID u64, origin count u16
///   (≥ 1), origins (32 bytes each), item count u32 (≥ 1), then runs until that many items:
///   origin index u16, first sequence u64, count u32 (≥ 1), attempt u32, hops u32, and the
///   run's payloads (u32 length + bytes each), sequences `first ..< first + count`;
/// - transfer ack `0x24`: queue str, transfer ID u64, status u8;
/// - owner update `0x25`: queue str, update ID u64, popped run count u32, runs (first u64,
///   count u32 ≥ 1), custody group count u16, groups: holder (32 bytes), attempt u32, hops u32,
///   run count u32, runs;
/// - owner update ack `0x26`: queue str, update ID u64;
/// - owner change `0x27`: queue str, change ID u64, group count u16, groups as in an owner
///   update (new owner 32 bytes, attempt u32, hops u32 = 0, run count u32, runs);
/// - custody check `0x28`: queue str, check ID u64, run count u32, runs (first u64, count u32
///   ≥ 1, attempt u32);
/// - custody verdict `0x29`: queue str, check ID u64, stale run count u32, runs (first u64,
///   count u32 ≥ 1);
/// - replica release `0x2A`: queue str, run count u32, runs (first u64, count u32 ≥ 1);
/// - replica check `0x2B`: queue str, check ID u64, run count u32, runs (first u64, count u32 ≥ 1);
/// - replica verdict `0x2C`: queue str, check ID u64, re-queued run count u32, runs (first u64,
///   count u32 ≥ 1).
public enum QueueMessage: Sendable, Equatable, WireMessage, WireDecodable {
    case stats(queue: String, LoadStats)
    case stealRequest(queue: String, requestID: UInt64, maxItems: UInt32, thiefRate: Double)
    case stealEmpty(queue: String, requestID: UInt64)
    /// `requestID` is the steal request answered, 0 for none.
    case transfer(queue: String, transferID: UInt64, kind: TransferKind, requestID: UInt64, items: TransferItems)
    case transferAck(queue: String, transferID: UInt64, status: TransferStatus)
    /// Pop confirmations (`popped`) and custody changes for the receiver's own items. The
    /// sender keeps it until the ack and re-sends it after a link failure; the owner applies
    /// an update ID once.
    case ownerUpdate(queue: String, updateID: UInt64, popped: [SequenceRun], custody: [CustodyChange])
    /// The owner got the update (also the answer to ``ownerChange(queue:changeID:groups:)``).
    case ownerUpdateAck(queue: String, updateID: UInt64)
    /// A stopping owner gives the ownership of its items in `groups` (their runs, with the
    /// attempt the copies carry) to each group's node, the receiver: it takes over those it
    /// holds queued. Answered with ``ownerUpdateAck(queue:updateID:)`` carrying the change ID.
    case ownerChange(queue: String, changeID: UInt64, groups: [CustodyChange])
    /// A holder that may have been declared dead asks the owner about its copies of the
    /// receiver's items (held back from consumers until the verdict).
    case custodyCheck(queue: String, checkID: UInt64, runs: [CheckedRun])
    /// The owner's answer: the checked copies that are stale (the item was re-queued at another
    /// attempt, or confirmed popped); the holder drops them and releases the rest.
    case custodyVerdict(queue: String, checkID: UInt64, stale: [SequenceRun])
    /// The owner no longer needs the replicas of these items (popped, or held by a peer that
    /// acknowledged a transfer): the replica holder drops them.
    case replicaRelease(queue: String, runs: [SequenceRun])
    /// An owner that may have been declared dead (it stalled, or heard the verdict) asks the
    /// holder of its replicas about its own queued items in `runs` (held back from consumers
    /// until the verdict).
    case replicaCheck(queue: String, checkID: UInt64, runs: [SequenceRun])
    /// The holder's answer: the checked items whose replicas it re-queued as its own when it
    /// believed the owner dead. The owner drops its originals of those and releases the rest.
    case replicaVerdict(queue: String, checkID: UInt64, requeued: [SequenceRun])

    /// The queue the message is about.
    public var queue: String {
        switch self {
        case .stats(let queue, _), .stealRequest(let queue, _, _, _), .stealEmpty(let queue, _),
             .transfer(let queue, _, _, _, _), .transferAck(let queue, _, _), .ownerUpdate(let queue, _, _, _),
             .ownerUpdateAck(let queue, _), .ownerChange(let queue, _, _), .custodyCheck(let queue, _, _),
             .custodyVerdict(let queue, _, _), .replicaRelease(let queue, _), .replicaCheck(let queue, _, _),
             .replicaVerdict(let queue, _, _):
            return queue
        }
    }

    public var messageType: MessageType {
        switch self {
        case .stats: return .queueStats
        case .stealRequest: return .queueStealRequest
        case .stealEmpty: return .queueStealEmpty
        case .transfer: return .queueTransfer
        case .transferAck: return .queueTransferAck
        case .ownerUpdate: return .queueOwnerUpdate
        case .ownerUpdateAck: return .queueOwnerUpdateAck
        case .ownerChange: return .queueOwnerChange
        case .custodyCheck: return .queueCustodyCheck
        case .custodyVerdict: return .queueCustodyVerdict
        case .replicaRelease: return .queueReplicaRelease
        case .replicaCheck: return .queueReplicaCheck
        case .replicaVerdict: return .queueReplicaVerdict
        }
    }

    /// Whether a raw type byte is one of this layer's messages.
    public static func handles(_ type: MessageType) -> Bool {
        MessageType.queueRange.contains(type.rawValue)
    }

    // MARK: Encoding

    public func validate() throws(WireError) {
        let name = queue.utf8.count
        guard name >= 1 else { throw .malformed(field: "queue", reason: "empty name") }
        guard name <= QueueWire.maxQueueNameLength else {
            throw .malformed(field: "queue", reason: "length \(name) exceeds the limit of \(QueueWire.maxQueueNameLength) bytes")
        }
        switch self {
        case .stats(_, let stats):
            try stats.validate()
        case .stealRequest(_, _, let maxItems, let rate):
            guard maxItems >= 1 else { throw .malformed(field: "stealRequest.maxItems", reason: "0") }
            guard rate.isFinite, rate >= 0, rate <= LoadStats.maxServiceRate else {
                throw .malformed(field: "stealRequest.thiefRate", reason: "\(rate) is not a valid rate")
            }
        case .stealEmpty, .transferAck, .ownerUpdateAck:
            break
        case .transfer(_, _, _, _, let items):
            guard !items.isEmpty else { throw .malformed(field: "transfer.count", reason: "no items") }
            guard items.count <= QueueWire.maxTransferItems else {
                throw .malformed(field: "transfer.count", reason: "\(items.count) exceeds \(QueueWire.maxTransferItems)")
            }
            // No pass over the items for their origins: there are at most as many as items, and
            // the item limit is the origin limit (the encoder sizes and writes the transfer with
            // a pass each already).
            assert(QueueWire.maxTransferItems <= QueueWire.maxOrigins)
        case .ownerUpdate(_, _, let popped, let custody):
            guard custody.count <= Int(UInt16.max) else {
                throw .malformed(field: "ownerUpdate.custody", reason: "\(custody.count) groups exceed \(UInt16.max)")
            }
            let runs = custody.reduce(popped.count) { $0 + $1.runs.count }
            guard runs <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "ownerUpdate", reason: "\(runs) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            for run in popped where run.count == 0 {
                throw .malformed(field: "ownerUpdate.popped", reason: "empty run at \(run.first)")
            }
            for group in custody {
                for run in group.runs where run.count == 0 {
                    throw .malformed(field: "ownerUpdate.custody", reason: "empty run at \(run.first)")
                }
            }
        case .ownerChange(_, _, let groups):
            guard groups.count <= Int(UInt16.max) else {
                throw .malformed(field: "ownerChange.groups", reason: "\(groups.count) groups exceed \(UInt16.max)")
            }
            let runs = groups.reduce(0) { $0 + $1.runs.count }
            guard runs >= 1, runs <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "ownerChange", reason: "\(runs) runs (1...\(QueueWire.maxRunsPerUpdate))")
            }
            for group in groups {
                guard group.hops == 0 else { throw .malformed(field: "ownerChange.hops", reason: "\(group.hops), not 0") }
                for run in group.runs where run.count == 0 {
                    throw .malformed(field: "ownerChange.runs", reason: "empty run at \(run.first)")
                }
            }
        case .custodyCheck(_, _, let runs):
            guard runs.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "custodyCheck.runs", reason: "\(runs.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            for run in runs where run.count == 0 {
                throw .malformed(field: "custodyCheck.runs", reason: "empty run at \(run.first)")
            }
        case .custodyVerdict(_, _, let stale):
            guard stale.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "custodyVerdict.stale", reason: "\(stale.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            for run in stale where run.count == 0 {
                throw .malformed(field: "custodyVerdict.stale", reason: "empty run at \(run.first)")
            }
        case .replicaRelease(_, let runs):
            guard runs.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "replicaRelease.runs", reason: "\(runs.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            for run in runs where run.count == 0 {
                throw .malformed(field: "replicaRelease.runs", reason: "empty run at \(run.first)")
            }
        case .replicaCheck(_, _, let runs), .replicaVerdict(_, _, let runs):
            let field = if case .replicaCheck = self { "replicaCheck.runs" } else { "replicaVerdict.requeued" }
            guard runs.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: field, reason: "\(runs.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            for run in runs where run.count == 0 {
                throw .malformed(field: field, reason: "empty run at \(run.first)")
            }
        }
    }

    /// The distinct origins of `items` in first-seen order, and the bytes the items take on
    /// the wire, a run at a time (sizing and encoding each need both). A transfer rarely holds
    /// more than a handful of origins, so a linear scan beats hashing.
    static func summary(of items: TransferItems) -> (origins: [PeerID], encodedSize: Int) {
        var origins: [PeerID] = []
        var size = 0
        var previous: QueueRun?
        for run in items.runs {
            size += Int(run.count) * QueueWire.itemOverhead + Int(run.bytes)
            if previous?.origin != run.origin && !origins.contains(run.origin) { origins.append(run.origin) }
            if previous == nil || !previous!.isContinued(by: run) { size += QueueWire.runOverhead }
            previous = run
        }
        return (origins, size)
    }

    /// Writes the items' wire form into `raw` (exactly `summary(of:).encodedSize` bytes, in the
    /// output itself: no intermediate copy of the payloads). A run that continues the one before
    /// (from another array) shares its header. Non-generic and through unsafe buffers: the
    /// generic writer would cost a call per field on the sender's hot path.
    static func encodeItems(_ transfer: TransferItems, origins: [PeerID], into raw: UnsafeMutableRawBufferPointer) {
        var offset = 0
        var originIndex: UInt16 = 0
        var lastOrigin = origins[0]
        // The open wire run: where its header is (its count is written once it ends).
        var headerAt = 0
        var headerCount: UInt32 = 0
        var previous: QueueRun?
        for run in transfer.runs {
            if previous == nil || !previous!.isContinued(by: run) {
                if previous != nil { raw.storeBytes(of: headerCount.bigEndian, toByteOffset: headerAt + 10, as: UInt32.self) }
                if run.origin != lastOrigin {
                    lastOrigin = run.origin
                    originIndex = UInt16(origins.firstIndex(of: lastOrigin)!)
                }
                raw.storeBytes(of: originIndex.bigEndian, toByteOffset: offset, as: UInt16.self)
                raw.storeBytes(of: run.first.bigEndian, toByteOffset: offset + 2, as: UInt64.self)
                raw.storeBytes(of: run.attempt.bigEndian, toByteOffset: offset + 14, as: UInt32.self)
                raw.storeBytes(of: run.hops.bigEndian, toByteOffset: offset + 18, as: UInt32.self)
                headerAt = offset
                headerCount = 0
                offset += QueueWire.runOverhead
            }
            headerCount += run.count
            previous = run
            transfer.buffers[Int(run.slot)].withUnsafeBytes { bytes in
                transfer.ends[Int(run.slot)].withUnsafeBufferPointer { ends in
                    let out = raw.baseAddress!
                    let source = bytes.baseAddress
                    var begin = run.start
                    for i in 0..<Int(run.count) {
                        let end = run.itemEnd(i, ends)
                        let length = end &- begin
                        (out + offset).storeBytes(of: length.bigEndian, as: UInt32.self)
                        offset += QueueWire.itemOverhead
                        if length > 0 {
                            (out + offset).copyMemory(from: source! + Int(begin), byteCount: Int(length))
                            offset += Int(length)
                        }
                        begin = end
                    }
                }
            }
        }
        if previous != nil { raw.storeBytes(of: headerCount.bigEndian, toByteOffset: headerAt + 10, as: UInt32.self) }
        precondition(offset == raw.count, "encodeItems: buffer size does not match the items")
    }

    public var bodySize: Int {
        let name = 4 + queue.utf8.count
        switch self {
        case .stats:
            return name + 8 + 8 + 4 + 1 + 8 + 8
        case .stealRequest:
            return name + 8 + 4 + 8
        case .stealEmpty:
            return name + 8
        case .transfer(_, _, _, _, let items):
            let summary = Self.summary(of: items)
            return QueueWire.transferOverhead(queueNameLength: queue.utf8.count)
                + summary.origins.count * QueueWire.originSize + summary.encodedSize
        case .transferAck:
            return name + 8 + 1
        case .ownerUpdateAck:
            return name + 8
        case .custodyCheck(_, _, let runs):
            return name + 8 + 4 + runs.count * 16
        case .custodyVerdict(_, _, let stale):
            return name + 8 + 4 + stale.count * 12
        case .replicaRelease(_, let runs):
            return name + 4 + runs.count * 12
        case .replicaCheck(_, _, let runs), .replicaVerdict(_, _, let runs):
            return name + 8 + 4 + runs.count * 12
        case .ownerUpdate(_, _, let popped, let custody):
            return name + 8 + 4 + popped.count * 12 + 2
                + custody.reduce(0) { $0 + WireProtocol.peerIDSize + 4 + 4 + 4 + $1.runs.count * 12 }
        case .ownerChange(_, _, let groups):
            return name + 8 + 2 + groups.reduce(0) { $0 + WireProtocol.peerIDSize + 4 + 4 + 4 + $1.runs.count * 12 }
        }
    }

    // Links encode into an array; the pre-specialized body writes each field with no generic call.
    @specialized(where Output == [UInt8])
    public func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        writer.writeString(queue)
        switch self {
        case .stats(_, let stats):
            writer.writeU64(stats.sequence)
            writer.writeU64(stats.length)
            writer.writeU32(stats.waiting)
            writer.writeU8((stats.hasConsumers ? LoadStats.flagHasConsumers : 0) | (stats.accepting ? LoadStats.flagAccepting : 0))
            writer.writeFloat64(stats.serviceRate)
            writer.writeFloat64(stats.finishTime)
        case .stealRequest(_, let requestID, let maxItems, let rate):
            writer.writeU64(requestID)
            writer.writeU32(maxItems)
            writer.writeFloat64(rate)
        case .stealEmpty(_, let requestID), .ownerUpdateAck(_, let requestID):
            writer.writeU64(requestID)
        case .transfer(_, let transferID, let kind, let requestID, let items):
            writer.writeU64(transferID)
            writer.writeU8(kind.rawValue)
            writer.writeU64(requestID)
            let (origins, encodedSize) = Self.summary(of: items)
            writer.writeU16(UInt16(origins.count))
            for origin in origins { origin.write(into: &writer) }
            writer.writeU32(UInt32(items.count))
            writer.writeInPlace(count: encodedSize) { raw in
                Self.encodeItems(items, origins: origins, into: raw)
            }
        case .transferAck(_, let transferID, let status):
            writer.writeU64(transferID)
            writer.writeU8(status.rawValue)
        case .ownerUpdate(_, let updateID, let popped, let custody):
            writer.writeU64(updateID)
            writer.writeU32(UInt32(popped.count))
            for run in popped { Self.write(run, into: &writer) }
            Self.write(custody, into: &writer)
        case .ownerChange(_, let changeID, let groups):
            writer.writeU64(changeID)
            Self.write(groups, into: &writer)
        case .custodyCheck(_, let checkID, let runs):
            writer.writeU64(checkID)
            writer.writeU32(UInt32(runs.count))
            for run in runs {
                writer.writeU64(run.first)
                writer.writeU32(run.count)
                writer.writeU32(run.attempt)
            }
        case .custodyVerdict(_, let checkID, let stale):
            writer.writeU64(checkID)
            writer.writeU32(UInt32(stale.count))
            for run in stale { Self.write(run, into: &writer) }
        case .replicaRelease(_, let runs):
            writer.writeU32(UInt32(runs.count))
            for run in runs { Self.write(run, into: &writer) }
        case .replicaCheck(_, let checkID, let runs), .replicaVerdict(_, let checkID, let runs):
            writer.writeU64(checkID)
            writer.writeU32(UInt32(runs.count))
            for run in runs { Self.write(run, into: &writer) }
        }
    }

    private static func write<Output: WireOutput>(_ groups: [CustodyChange], into writer: inout WireWriter<Output>) {
        writer.writeU16(UInt16(groups.count))
        for group in groups {
            group.holder.write(into: &writer)
            writer.writeU32(group.attempt)
            writer.writeU32(group.hops)
            writer.writeU32(UInt32(group.runs.count))
            for run in group.runs { Self.write(run, into: &writer) }
        }
    }

    private static func write<Output: WireOutput>(_ run: SequenceRun, into writer: inout WireWriter<Output>) {
        writer.writeU64(run.first)
        writer.writeU32(run.count)
    }

    /// Validates the message and appends it framed (`[u32 L][type][body]`) to `bytes`.
    public func encode(into bytes: inout [UInt8], maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) {
        try MessageEncoder.encode(self, into: &bytes, maxFrameSize: maxFrameSize)
    }

    // MARK: Decoding

    /// Decodes the body of a queue message of `type`, checking every limit and that no byte is
    /// left.
    ///
    /// - Throws: `WireError.unknownMessageType` for a type outside this layer;
    ///   `WireError.truncated` naming the short field;
    ///   `WireError.malformed` for an empty or over-long queue name, bad UTF-8,
    ///   NaN, infinite, negative or absurd stats, unknown flag bits, kinds or statuses, zero
    ///   counts, an origin index out of range, or a count the remaining bytes cannot hold;
    ///   `WireError.trailingBytes`.
    public static func decode(type: MessageType, body: UnsafeRawBufferPointer) throws(WireError) -> QueueMessage {
        var reader = WireReader(body)
        let queue = try reader.readString(field: "queue", maxLength: QueueWire.maxQueueNameLength)
        guard !queue.isEmpty else { throw .malformed(field: "queue", reason: "empty name") }
        let message: QueueMessage
        switch type {
        case .queueStats:
            let sequence = try reader.readU64(field: "stats.sequence")
            let length = try reader.readU64(field: "stats.length")
            let waiting = try reader.readU32(field: "stats.waiting")
            let flags = try reader.readU8(field: "stats.flags")
            guard flags & ~(LoadStats.flagHasConsumers | LoadStats.flagAccepting) == 0 else {
                throw .malformed(field: "stats.flags", reason: "unknown bits 0x\(String(flags, radix: 16))")
            }
            let rate = try reader.readFloat64(field: "stats.serviceRate")
            let finish = try reader.readFloat64(field: "stats.finishTime")
            let stats = LoadStats(
                sequence: sequence, length: length, waiting: waiting, serviceRate: rate, finishTime: finish,
                hasConsumers: flags & LoadStats.flagHasConsumers != 0, accepting: flags & LoadStats.flagAccepting != 0
            )
            try stats.validate()
            message = .stats(queue: queue, stats)
        case .queueStealRequest:
            let requestID = try reader.readU64(field: "stealRequest.requestID")
            let maxItems = try reader.readU32(field: "stealRequest.maxItems")
            let rate = try reader.readFloat64(field: "stealRequest.thiefRate")
            message = .stealRequest(queue: queue, requestID: requestID, maxItems: maxItems, thiefRate: rate)
            try message.validate()
        case .queueStealEmpty:
            message = .stealEmpty(queue: queue, requestID: try reader.readU64(field: "stealEmpty.requestID"))
        case .queueTransfer:
            message = try decodeTransfer(queue: queue, &reader)
        case .queueTransferAck:
            let transferID = try reader.readU64(field: "transferAck.transferID")
            let raw = try reader.readU8(field: "transferAck.status")
            guard let status = TransferStatus(rawValue: raw) else {
                throw .malformed(field: "transferAck.status", reason: "unknown status \(raw)")
            }
            message = .transferAck(queue: queue, transferID: transferID, status: status)
        case .queueOwnerUpdateAck:
            message = .ownerUpdateAck(queue: queue, updateID: try reader.readU64(field: "ownerUpdateAck.updateID"))
        case .queueOwnerChange:
            let changeID = try reader.readU64(field: "ownerChange.changeID")
            let groups = try readGroups(&reader, field: "ownerChange.groups")
            message = .ownerChange(queue: queue, changeID: changeID, groups: groups)
            try message.validate()
        case .queueOwnerUpdate:
            let updateID = try reader.readU64(field: "ownerUpdate.updateID")
            let popped = try readRuns(&reader, field: "ownerUpdate.popped", countField: "ownerUpdate.popped.count")
            let custody = try readGroups(&reader, field: "ownerUpdate.custody")
            let totalRuns = custody.reduce(popped.count) { $0 + $1.runs.count }
            guard totalRuns <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "ownerUpdate", reason: "\(totalRuns) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            message = .ownerUpdate(queue: queue, updateID: updateID, popped: popped, custody: custody)
        case .queueCustodyCheck:
            let checkID = try reader.readU64(field: "custodyCheck.checkID")
            let count = Int(try reader.readU32(field: "custodyCheck.runs.count"))
            guard count <= reader.remaining / 16, count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "custodyCheck.runs.count", reason: "\(count) runs cannot fit in \(reader.remaining) bytes")
            }
            var runs: [CheckedRun] = []
            runs.reserveCapacity(count)
            for index in 0..<count {
                let field = "custodyCheck.runs[\(index)]"
                let first = try reader.readU64(field: field + ".first")
                let length = try reader.readU32(field: field + ".count")
                guard length >= 1 else { throw .malformed(field: field + ".count", reason: "0") }
                runs.append(CheckedRun(first: first, count: length, attempt: try reader.readU32(field: field + ".attempt")))
            }
            message = .custodyCheck(queue: queue, checkID: checkID, runs: runs)
        case .queueCustodyVerdict:
            let checkID = try reader.readU64(field: "custodyVerdict.checkID")
            let stale = try readRuns(&reader, field: "custodyVerdict.stale", countField: "custodyVerdict.stale.count")
            guard stale.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "custodyVerdict.stale.count", reason: "\(stale.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            message = .custodyVerdict(queue: queue, checkID: checkID, stale: stale)
        case .queueReplicaRelease:
            let runs = try readRuns(&reader, field: "replicaRelease.runs", countField: "replicaRelease.runs.count")
            guard runs.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: "replicaRelease.runs.count", reason: "\(runs.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            message = .replicaRelease(queue: queue, runs: runs)
        case .queueReplicaCheck, .queueReplicaVerdict:
            let check = type == .queueReplicaCheck
            let name = check ? "replicaCheck" : "replicaVerdict"
            let checkID = try reader.readU64(field: name + ".checkID")
            let field = check ? "replicaCheck.runs" : "replicaVerdict.requeued"
            let runs = try readRuns(&reader, field: field, countField: field + ".count")
            guard runs.count <= QueueWire.maxRunsPerUpdate else {
                throw .malformed(field: field + ".count", reason: "\(runs.count) runs exceed \(QueueWire.maxRunsPerUpdate)")
            }
            message = check ? .replicaCheck(queue: queue, checkID: checkID, runs: runs)
                : .replicaVerdict(queue: queue, checkID: checkID, requeued: runs)
        default:
            throw .unknownMessageType(type.rawValue)
        }
        try reader.finish(type: type)
        return message
    }

    /// Groups as owner updates and owner changes carry them: count u16, then (peer, attempt,
    /// hops, runs) each.
    private static func readGroups(_ reader: inout WireReader, field: String) throws(WireError) -> [CustodyChange] {
        let count = Int(try reader.readU16(field: field + ".count"))
        // A group takes at least 44 bytes: never reserve more than the bytes could hold.
        guard count <= reader.remaining / 44 else {
            throw .malformed(field: field + ".count", reason: "\(count) groups cannot fit in \(reader.remaining) bytes")
        }
        var groups: [CustodyChange] = []
        groups.reserveCapacity(count)
        for index in 0..<count {
            let field = "\(field)[\(index)]"
            let holder = try reader.readPeerID(field: field + ".holder")
            let attempt = try reader.readU32(field: field + ".attempt")
            let hops = try reader.readU32(field: field + ".hops")
            let runs = try readRuns(&reader, field: field + ".runs", countField: field + ".runs.count")
            groups.append(CustodyChange(holder: holder, attempt: attempt, hops: hops, runs: runs))
        }
        return groups
    }

    private static func readRuns(_ reader: inout WireReader, field: String, countField: String) throws(WireError) -> [SequenceRun] {
        let count = Int(try reader.readU32(field: countField))
        guard count <= reader.remaining / 12 else {
            throw .malformed(field: countField, reason: "\(count) runs cannot fit in \(reader.remaining) bytes")
        }
        var runs: [SequenceRun] = []
        runs.reserveCapacity(count)
        for index in 0..<count {
            do throws(WireError) {
                let first = try reader.readU64(field: "first")
                let length = try reader.readU32(field: "count")
                guard length >= 1 else { throw .malformed(field: "count", reason: "0") }
                runs.append(SequenceRun(first: first, count: length))
            } catch {
                throw error.nested(under: "\(field)[\(index)]")
            }
        }
        return runs
    }

    private static func decodeTransfer(queue: String, _ reader: inout WireReader) throws(WireError) -> QueueMessage {
        let transferID = try reader.readU64(field: "transfer.transferID")
        let rawKind = try reader.readU8(field: "transfer.kind")
        guard let kind = TransferKind(rawValue: rawKind) else {
            throw .malformed(field: "transfer.kind", reason: "unknown kind \(rawKind)")
        }
        let requestID = try reader.readU64(field: "transfer.requestID")
        let originCount = Int(try reader.readU16(field: "transfer.origins.count"))
        guard originCount >= 1 else { throw .malformed(field: "transfer.origins.count", reason: "0") }
        var origins: [PeerID] = []
        origins.reserveCapacity(min(originCount, reader.remaining / WireProtocol.peerIDSize))
        for index in 0..<originCount {
            origins.append(try reader.readPeerID(field: "transfer.origins[\(index)]"))
        }
        let count = Int(try reader.readU32(field: "transfer.count"))
        guard count >= 1 else { throw .malformed(field: "transfer.count", reason: "no items") }
        guard count <= QueueWire.maxTransferItems else {
            throw .malformed(field: "transfer.count", reason: "\(count) exceeds \(QueueWire.maxTransferItems)")
        }
        // At least one run header, and a length per item: bounds the count before anything is
        // allocated for it, and the payloads' bytes.
        let payloadBound = reader.remaining - QueueWire.runOverhead - count * QueueWire.itemOverhead
        guard payloadBound >= 0 else {
            throw .malformed(field: "transfer.count", reason: "\(count) items cannot fit in \(reader.remaining) bytes")
        }
        var runs: [QueueRun] = []
        guard payloadBound < count * QueueWire.sharedPayloadLimit else {
            // Large items get an array each: an allocation is cheap next to their bytes, and
            // `pop` hands the arrays out without copying them again. Each item is then a run of
            // its own array.
            var buffers: [[UInt8]] = []
            buffers.reserveCapacity(count)
            runs.reserveCapacity(count)
            var index = 0
            while index < count {
                let run = try decodeRunHeader(&reader, origins: origins, itemsLeft: count - index, at: index)
                for offset in 0..<Int(run.count) {
                    do throws(WireError) {
                        let payload = try reader.readByteString(field: "payload", maxLength: reader.remaining)
                        runs.append(QueueRun(origin: run.origin, first: run.first &+ UInt64(offset), count: 1, attempt: run.attempt,
                                             hops: run.hops, slot: UInt32(buffers.count), index: 0, start: 0, bytes: UInt32(payload.count)))
                        buffers.append([UInt8](payload))
                    } catch {
                        throw error.nested(under: "transfer.items[\(index + offset)]")
                    }
                }
                index += Int(run.count)
            }
            return .transfer(queue: queue, transferID: transferID, kind: kind, requestID: requestID,
                             items: TransferItems(buffers: buffers, ends: [[UInt32]](repeating: [], count: buffers.count), runs: runs))
        }
        // Small items: all payloads are copied into one array (one allocation per transfer, not
        // per item), with a table of where each item ends; the runs point into both.
        var ends: [UInt32] = []
        ends.reserveCapacity(count)
        var failure: WireError?
        let buffer = [UInt8](unsafeUninitializedCapacity: payloadBound) { raw, filled in
            let raw = UnsafeMutableRawBufferPointer(raw)
            var index = 0
            while index < count {
                // Field names are built only on the error path: this loop runs once per item.
                do throws(WireError) {
                    let header = try decodeRunHeader(&reader, origins: origins, itemsLeft: count - index, at: index)
                    let start = filled
                    for offset in 0..<Int(header.count) {
                        do throws(WireError) {
                            let payload = try reader.readByteString(field: "payload", maxLength: payloadBound - filled)
                            if !payload.isEmpty {
                                UnsafeMutableRawBufferPointer(rebasing: raw[filled..<filled + payload.count]).copyMemory(from: payload)
                                filled += payload.count
                            }
                            ends.append(UInt32(truncatingIfNeeded: filled))
                        } catch {
                            throw error.nested(under: "transfer.items[\(index + offset)]")
                        }
                    }
                    runs.append(QueueRun(origin: header.origin, first: header.first, count: header.count, attempt: header.attempt,
                                         hops: header.hops, slot: 0, index: UInt32(index), start: UInt32(truncatingIfNeeded: start),
                                         bytes: UInt32(truncatingIfNeeded: filled - start)))
                    index += Int(header.count)
                } catch {
                    failure = error
                    return
                }
            }
        }
        if let failure { throw failure }
        return .transfer(queue: queue, transferID: transferID, kind: kind, requestID: requestID,
                         items: TransferItems(buffers: [buffer], ends: [ends], runs: runs))
    }

    /// A run's fields before its payloads.
    private struct RunHeader {
        var origin: PeerID
        var first: UInt64
        var count: UInt32
        var attempt: UInt32
        var hops: UInt32
    }

    /// Reads the header of the run starting at item `index`, with `itemsLeft` items still to
    /// come; errors name that item.
    @inline(__always)
    private static func decodeRunHeader(
        _ reader: inout WireReader, origins: [PeerID], itemsLeft: Int, at index: Int
    ) throws(WireError) -> RunHeader {
        do throws(WireError) {
            let originIndex = Int(try reader.readU16(field: "origin"))
            guard originIndex < origins.count else {
                throw .malformed(field: "origin", reason: "index \(originIndex) of \(origins.count) origins")
            }
            let first = try reader.readU64(field: "sequence")
            let count = try reader.readU32(field: "runCount")
            guard count >= 1, Int(count) <= itemsLeft else {
                throw .malformed(field: "runCount", reason: "\(count) with \(itemsLeft) items left")
            }
            guard first <= UInt64.max - UInt64(count - 1) else {
                throw .malformed(field: "sequence", reason: "a run of \(count) from \(first) overflows")
            }
            let attempt = try reader.readU32(field: "attempt")
            let hops = try reader.readU32(field: "hops")
            return RunHeader(origin: origins[originIndex], first: first, count: count, attempt: attempt, hops: hops)
        } catch {
            throw error.nested(under: "transfer.items[\(index)]")
        }
    }

}

