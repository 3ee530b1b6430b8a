import Glibc
import P2PQQueue
import P2PQWire

/// The queue's state machines alone, without sockets or threads: a pure source machine gets
/// `items` pushes in batches, a consumer machine pops them all in batches, and every message
/// between them goes through the wire encoding (encode on the sender, decode on the receiver).
/// It measures the per-item CPU cost of W1's two queue machines, the part of `p2pq bench
/// stream` that the reactor, the link and the cipher do not explain, with far less noise.
///
/// Time is thread CPU time around each side's calls (the sender's encoding counts on its side,
/// the receiver's decoding on its own), so the two sides read as they would on their own cores.
public struct QueueMachineCycleResult: Sendable {
    public var items: Int
    public var payloadSize: Int
    public var sourceSeconds: Double
    public var consumerSeconds: Double
    public var messages: Int
    public var wireBytes: Int

    public var sourceNanosecondsPerItem: Double { sourceSeconds * 1e9 / Double(items) }
    public var consumerNanosecondsPerItem: Double { consumerSeconds * 1e9 / Double(items) }

    public var json: String {
        func f(_ x: Double) -> String { "\((x * 10).rounded() / 10)" }
        return #"{"workload":"queue-machine","payload":\#(payloadSize),"items":\#(items),"#
            + #""source_ns_per_item":\#(f(sourceNanosecondsPerItem)),"consumer_ns_per_item":\#(f(consumerNanosecondsPerItem)),"#
            + #""messages":\#(messages),"wire_bytes":\#(wireBytes)}"#
    }
}

public enum QueueMachineCycleError: Error, CustomStringConvertible {
    case stalled(popped: Int, of: Int)
    case notExactlyOnce(item: UInt64)
    case pushRefused(PushOutcome)
    case wire(WireError)

    public var description: String {
        switch self {
        case .stalled(let popped, let total): "the cycle stalled after \(popped) of \(total) items"
        case .notExactlyOnce(let item): "item \(item) was popped twice or never"
        case .pushRefused(let outcome): "push refused: \(outcome)"
        case .wire(let error): "wire error: \(error)"
        }
    }
}

public enum QueueMachineCycle {
    /// Pushes `items` payloads of `payloadSize` bytes at the source in batches of `batch`, pops
    /// them at the consumer in batches of `batch`.
    public static func run(
        items: Int, payloadSize: Int, batch: Int = 4096, configuration: QueueConfiguration = QueueConfiguration()
    ) throws(QueueMachineCycleError) -> QueueMachineCycleResult {
        let sourceID = PeerID(bytes: [UInt8](repeating: 1, count: WireProtocol.peerIDSize))!
        let consumerID = PeerID(bytes: [UInt8](repeating: 2, count: WireProtocol.peerIDSize))!
        var source = QueueMachine(name: "w1", localPeer: sourceID, configuration: configuration)
        var consumer = QueueMachine(name: "w1", localPeer: consumerID, configuration: configuration)
        var sourceTime: UInt64 = 0
        var consumerTime: UInt64 = 0
        var messages = 0
        var wireBytes = 0
        // Messages on their way, as frames: (bytes, to the consumer?).
        var wire: [([UInt8], Bool)] = []
        var sourceTimer: UInt64?
        var consumerTimer: UInt64?
        let waiter = WaiterID(1)
        // Every item carries its number in its first bytes; each must be popped exactly once
        // (checked outside the measured time).
        var seen = [Bool](repeating: false, count: items)
        var delivered: [ItemPayloads] = []
        func check() throws(QueueMachineCycleError) {
            for batch in delivered {
                for payload in batch {
                    var number: UInt64 = 0
                    for k in 0..<min(8, payload.count) { number = number << 8 | UInt64(payload[k]) }
                    guard number < UInt64(items), !seen[Int(number)] else { throw .notExactlyOnce(item: number) }
                    seen[Int(number)] = true
                }
            }
            // Releasing the popped items is the consumer's work, as it was when they were
            // dropped right after the pop: timed.
            timed(&consumerTime) { delivered.removeAll(keepingCapacity: true) }
        }
        var waiting = false
        var popped = 0
        var pushed = 0

        // Sorts one side's actions: sends are encoded (on the sender's clock), deliveries
        // counted, timers remembered.
        func perform(_ actions: [QueueAction], fromSource: Bool) throws(QueueMachineCycleError) {
            for action in actions {
                switch action {
                case .send(let message, _):
                    var frame: [UInt8] = []
                    do { try message.encode(into: &frame) } catch { throw .wire(error) }
                    messages += 1
                    wireBytes += frame.count
                    wire.append((frame, fromSource))
                case .deliver(_, let payloads):
                    popped += payloads.count
                    delivered.append(payloads)
                    waiting = false
                case .armTimer(let at):
                    if fromSource { sourceTimer = at } else { consumerTimer = at }
                case .fail, .spaceAvailable, .deliverLeased, .deadLetter:
                    break
                }
            }
        }
        func decode(_ frame: [UInt8]) throws(QueueMachineCycleError) -> QueueMessage {
            switch decodeFrame(frame, QueueMessage.decode) {
            case .success(let message): return message
            case .failure(let error): throw .wire(error)
            }
        }

        var now = monotonicNanoseconds()
        try timed(&sourceTime) { () throws(QueueMachineCycleError) in
            try perform(source.peerConnected(consumerID, now: now), fromSource: true)
        }
        try timed(&consumerTime) { () throws(QueueMachineCycleError) in
            try perform(consumer.peerConnected(sourceID, now: now), fromSource: false)
        }

        var idleRounds = 0
        while popped < items {
            now = monotonicNanoseconds()
            var progressed = false
            // The consumer asks whenever it has no request outstanding.
            if !waiting {
                let got = try timed(&consumerTime) { () throws(QueueMachineCycleError) in
                    let (got, actions) = consumer.pop(max: batch, waiter: waiter, now: now)
                    popped += got.count
                    waiting = got.isEmpty
                    try perform(actions, fromSource: false)
                    return got
                }
                delivered.append(got)
                progressed = progressed || !got.isEmpty
            }
            // The producer pushes a batch when the source has room (its items are built outside
            // the measured time, as the application's work).
            if pushed < items {
                let n = min(batch, items - pushed)
                // One buffer for the batch, as `ItemBatch` gives a pushing application.
                var batchItems = ItemBatch(capacity: n, bytes: n * payloadSize)
                for i in 0..<n {
                    batchItems.append(count: payloadSize) { payload in
                        withUnsafeBytes(of: UInt64(pushed + i).bigEndian) { bytes in
                            for k in 0..<min(8, payloadSize) { payload[k] = bytes[k] }
                        }
                        for k in min(8, payloadSize)..<payloadSize { payload[k] = 0x5A }
                    }
                }
                let outcome = try timed(&sourceTime) { () throws(QueueMachineCycleError) in
                    let (outcome, actions) = source.push(batchItems, now: now)
                    try perform(actions, fromSource: true)
                    return outcome
                }
                switch outcome {
                case .accepted:
                    pushed += n
                    progressed = true
                case .full:
                    break
                default:
                    throw .pushRefused(outcome)
                }
            }
            // Everything on the wire, in order, until it is quiet.
            while !wire.isEmpty {
                let frames = wire
                wire.removeAll(keepingCapacity: true)
                progressed = true
                // Decoding counts on the receiver's side.
                for (frame, toConsumer) in frames {
                    if toConsumer {
                        try timed(&consumerTime) { () throws(QueueMachineCycleError) in
                            try perform(consumer.received(decode(frame), from: sourceID, now: now), fromSource: false)
                        }
                    } else {
                        try timed(&sourceTime) { () throws(QueueMachineCycleError) in
                            try perform(source.received(decode(frame), from: consumerID, now: now), fromSource: true)
                        }
                    }
                }
            }
            try check()
            // Timers that are due (stats rounds, confirmation flushes).
            now = monotonicNanoseconds()
            if let at = sourceTimer, at <= now {
                sourceTimer = nil
                try timed(&sourceTime) { () throws(QueueMachineCycleError) in try perform(source.tick(now: now), fromSource: true) }
                progressed = true
            }
            if let at = consumerTimer, at <= now {
                consumerTimer = nil
                try timed(&consumerTime) { () throws(QueueMachineCycleError) in try perform(consumer.tick(now: now), fromSource: false) }
                progressed = true
            }
            if progressed {
                idleRounds = 0
            } else {
                // Waiting on a timer only; bounded so a machine bug cannot hang the bench.
                idleRounds += 1
                if idleRounds > 200_000 { throw .stalled(popped: popped, of: items) }
                var pause = timespec(tv_sec: 0, tv_nsec: 50_000)
                nanosleep(&pause, nil)
            }
        }
        try check()
        if let missing = seen.firstIndex(of: false) { throw .notExactlyOnce(item: UInt64(missing)) }
        return QueueMachineCycleResult(
            items: items, payloadSize: payloadSize,
            sourceSeconds: Double(sourceTime) / 1e9, consumerSeconds: Double(consumerTime) / 1e9,
            messages: messages, wireBytes: wireBytes
        )
    }
}

private func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Decodes one encoded frame (`[u32 length][type][body]`) with a message layer's decoder.
func decodeFrame<Message>(
    _ frame: [UInt8], _ decode: (MessageType, UnsafeRawBufferPointer) throws(WireError) -> Message
) -> Result<Message, WireError> {
    guard frame.count >= 5, let type = MessageType(rawValue: frame[4]) else {
        return .failure(.truncated(field: "frame", needed: 5, available: frame.count))
    }
    return frame.withUnsafeBytes { raw in
        Result { () throws(WireError) in try decode(type, UnsafeRawBufferPointer(rebasing: raw[5...])) }
    }
}
