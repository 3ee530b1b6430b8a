import P2PQWire

/// Results of consecutive calls of one caller, as one value: the first sequence once, then
/// each call's outcome in sequence order (the body of ``RemoteCallMessage/resultRun(_:)``).
///
/// Outcome `i` (from 0) answers sequence `firstSequence + i`. Calls a caller sends as a run
/// mostly finish in order, so their results go back the same way: 5 bytes of framing per
/// result instead of a results entry's 13.
public struct ResultRun: Sendable, Equatable {
    /// The sequence of the first result.
    public var firstSequence: UInt64
    /// The outcomes, 1...65535 of them.
    public var outcomes: [CallOutcome]

    public init(firstSequence: UInt64, outcomes: [CallOutcome]) {
        self.firstSequence = firstSequence
        self.outcomes = outcomes
    }

    /// The results as entries, in order.
    public var entries: [CallResultEntry] {
        outcomes.enumerated().map { CallResultEntry(sequence: firstSequence &+ UInt64($0.offset), outcome: $0.element) }
    }

    /// Exact size of the encoded run (a message body): first sequence, count, outcomes.
    public var bodySize: Int {
        outcomes.reduce(8 + 2) { $0 + $1.encodedSize }
    }

    /// `entries` regrouped for a peer that knows result runs: each stretch of two or more
    /// consecutive sequences as a run, the rest as entries of one results message (in their
    /// order). Every entry lands in exactly one of the two, so nothing is lost or repeated.
    public static func split(_ entries: [CallResultEntry]) -> (runs: [ResultRun], singles: [CallResultEntry]) {
        var runs: [ResultRun] = []
        var singles: [CallResultEntry] = []
        var start = 0
        while start < entries.count {
            var end = start + 1
            // No run wraps past the last sequence.
            while end < entries.count, end - start < RemoteCallLimits.maxEntriesPerMessage,
                  entries[end - 1].sequence != .max, entries[end].sequence == entries[end - 1].sequence + 1 {
                end += 1
            }
            if end - start >= 2 {
                runs.append(ResultRun(firstSequence: entries[start].sequence, outcomes: entries[start..<end].map(\.outcome)))
            } else {
                singles.append(entries[start])
            }
            start = end
        }
        return (runs, singles)
    }

    // MARK: Wire form

    /// Decodes a run body (after the message type), checking every outcome.
    static func decode(_ reader: inout WireReader) throws(WireError) -> ResultRun {
        let first = try reader.readU64(field: "resultRun.firstSequence")
        let count = Int(try reader.readU16(field: "resultRun.count"))
        guard count >= 1 else { throw .malformed(field: "resultRun.count", reason: "no entries") }
        guard UInt64(count - 1) <= UInt64.max - first else {
            throw .malformed(field: "resultRun.count", reason: "\(count) results from sequence \(first) pass the last sequence")
        }
        var outcomes: [CallOutcome] = []
        // Each outcome takes at least its kind byte: a count the body cannot hold reserves no more.
        outcomes.reserveCapacity(Swift.min(count, reader.remaining))
        for index in 0..<count {
            do throws(WireError) {
                outcomes.append(try CallOutcome.read(&reader))
            } catch {
                throw error.nested(under: "resultRun[\(index)]")
            }
        }
        return ResultRun(firstSequence: first, outcomes: outcomes)
    }

    /// Checks the limits the decoder enforces.
    func validate() throws(WireError) {
        guard !outcomes.isEmpty else { throw .malformed(field: "resultRun.count", reason: "no entries") }
        guard outcomes.count <= RemoteCallLimits.maxEntriesPerMessage else {
            throw .malformed(field: "resultRun.count", reason: "\(outcomes.count) exceeds the limit of \(RemoteCallLimits.maxEntriesPerMessage)")
        }
        guard UInt64(outcomes.count - 1) <= UInt64.max - firstSequence else {
            throw .malformed(field: "resultRun.count", reason: "\(outcomes.count) results from sequence \(firstSequence) pass the last sequence")
        }
        for (index, outcome) in outcomes.enumerated() { try outcome.validate(field: "resultRun[\(index)]") }
    }

    func write<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        writer.writeU64(firstSequence)
        writer.writeU16(UInt16(outcomes.count))
        for outcome in outcomes { outcome.write(into: &writer) }
    }
}
