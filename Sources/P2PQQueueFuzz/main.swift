// Fuzz target for the queue message decoders (P2PQQueue, types 0x20–0x2A).
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files named on the command line (P2PQFuzzSupport.fuzzMain), or, given
// `--write-corpus <dir>`, writes the seed corpus (Fuzz/corpus/queue).
//
// The first input byte picks the message type (an index into `types`, modulo its count); the rest is the body. Besides
// "no crash", a body that decodes must give a message that validates, whose `bodySize` is
// exact, and that survives encode → decode unchanged.

import P2PQFuzzSupport
import P2PQQueue
import P2PQWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

let types: [MessageType] = [
    .queueStats, .queueStealRequest, .queueStealEmpty, .queueTransfer, .queueTransferAck, .queueOwnerUpdate,
    .queueOwnerUpdateAck, .queueOwnerChange, .queueCustodyCheck, .queueCustodyVerdict,
    .queueReplicaRelease, .queueReplicaCheck, .queueReplicaVerdict,
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let type = types[Int(data[0]) % types.count]
    let body = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    checkMessageRoundTrip(QueueMessage.self, type: type, body: body)
    return 0
}

/// The seeds: one valid body per message type.
func seeds() throws -> [(name: String, bytes: [UInt8])] {
    let origin = PeerID(bytes: [UInt8](repeating: 7, count: 32))!
    let holder = PeerID(bytes: [UInt8](repeating: 9, count: 32))!
    let items: TransferItems = [
        QueueItem(id: ItemID(origin: origin, sequence: 1), payload: [1, 2, 3]),
        QueueItem(id: ItemID(origin: holder, sequence: 2), attempt: 1, hops: 2, payload: []),
    ]
    let messages: [(String, QueueMessage)] = [
        ("stats", .stats(queue: "q", LoadStats(sequence: 3, length: 10, waiting: 1, serviceRate: 250, finishTime: 0.04, hasConsumers: true, accepting: true))),
        ("steal-request", .stealRequest(queue: "jobs", requestID: 5, maxItems: 64, thiefRate: 100)),
        ("steal-empty", .stealEmpty(queue: "jobs", requestID: 5)),
        ("transfer", .transfer(queue: "jobs", transferID: 8, kind: .steal, requestID: 5, items: items)),
        ("transfer-drain", .transfer(queue: "jobs", transferID: 9, kind: .drain, requestID: 0, items: items)),
        ("transfer-ack", .transferAck(queue: "jobs", transferID: 8, status: .accepted)),
        ("owner-update", .ownerUpdate(queue: "jobs", updateID: 4, popped: [SequenceRun(first: 1, count: 3)],
                                      custody: [CustodyChange(holder: holder, attempt: 0, hops: 1, runs: [SequenceRun(first: 9, count: 1)])])),
        ("owner-update-ack", .ownerUpdateAck(queue: "jobs", updateID: 4)),
        ("owner-change", .ownerChange(queue: "jobs", changeID: 5, groups: [CustodyChange(holder: holder, attempt: 0, hops: 0,
                                                                                        runs: [SequenceRun(first: 1, count: 3)])])),
        ("custody-check", .custodyCheck(queue: "jobs", checkID: 6, runs: [CheckedRun(first: 1, count: 3, attempt: 0)])),
        ("custody-verdict", .custodyVerdict(queue: "jobs", checkID: 6, stale: [SequenceRun(first: 2, count: 1)])),
        ("transfer-replica", .transfer(queue: "jobs", transferID: 10, kind: .replica, requestID: 0, items: items)),
        ("replica-release", .replicaRelease(queue: "jobs", runs: [SequenceRun(first: 1, count: 3)])),
        ("replica-check", .replicaCheck(queue: "jobs", checkID: 7, runs: [SequenceRun(first: 1, count: 3)])),
        ("replica-verdict", .replicaVerdict(queue: "jobs", checkID: 7, requeued: [SequenceRun(first: 2, count: 1)])),
    ]
    return try messages.map { name, message in
        var frame: [UInt8] = []
        try message.encode(into: &frame)
        return (name, [UInt8(types.firstIndex(of: message.messageType)!)] + frame.dropFirst(5))
    }
}

try writeCorpusIfAsked(seeds)

fuzzMain(name: "P2PQQueueFuzz", fuzz)
