import P2PQWire

/// One result in a results message: the caller's sequence number and the outcome.
public struct CallResultEntry: Sendable, Equatable {
    public var sequence: UInt64
    public var outcome: CallOutcome

    public init(sequence: UInt64, outcome: CallOutcome) {
        self.sequence = sequence
        self.outcome = outcome
    }

    /// Exact encoded size.
    public var encodedSize: Int { 8 + outcome.encodedSize }
}

extension CallOutcome {
    /// Exact encoded size: kind, then the kind's fields.
    public var encodedSize: Int {
        switch self {
        case .success(let bytes): return 1 + 4 + bytes.count
        case .thrown(let typeName, let description): return 1 + 4 + typeName.utf8.count + 4 + description.utf8.count
        case .unknownFunction: return 1
        case .badArguments(let reason), .malformedCall(let reason): return 1 + 4 + reason.utf8.count
        }
    }

    private enum Kind: UInt8 {
        case success = 0, thrown = 1, unknownFunction = 2, badArguments = 3, malformedCall = 4
    }

    /// Reads an outcome: its kind byte and the kind's fields.
    static func read(_ reader: inout WireReader) throws(WireError) -> CallOutcome {
        let raw = try reader.readU8(field: "kind")
        guard let kind = Kind(rawValue: raw) else {
            throw .malformed(field: "kind", reason: "unknown outcome kind \(raw)")
        }
        switch kind {
        case .success:
            return .success(Array(try reader.readByteString(field: "value", maxLength: Int(UInt32.max))))
        case .thrown:
            let typeName = try reader.readString(field: "typeName", maxLength: RemoteCallLimits.maxTypeNameLength)
            let description = try reader.readString(field: "description", maxLength: RemoteCallLimits.maxDescriptionLength)
            return .thrown(typeName: typeName, description: description)
        case .unknownFunction:
            return .unknownFunction
        case .badArguments:
            return .badArguments(try reader.readString(field: "description", maxLength: RemoteCallLimits.maxDescriptionLength))
        case .malformedCall:
            return .malformedCall(try reader.readString(field: "description", maxLength: RemoteCallLimits.maxDescriptionLength))
        }
    }

    /// Checks the string limits the decoder enforces; `field` names the entry in errors (made
    /// only for an error: every result sent passes here).
    func validate(field: @autoclosure () -> String) throws(WireError) {
        switch self {
        case .success, .unknownFunction:
            break
        case .thrown(let typeName, let description):
            try checkLength(typeName, field: field() + ".typeName", limit: RemoteCallLimits.maxTypeNameLength)
            try checkLength(description, field: field() + ".description", limit: RemoteCallLimits.maxDescriptionLength)
        case .badArguments(let reason), .malformedCall(let reason):
            try checkLength(reason, field: field() + ".description", limit: RemoteCallLimits.maxDescriptionLength)
        }
    }

    private func checkLength(_ string: String, field: @autoclosure () -> String, limit: Int) throws(WireError) {
        let length = string.utf8.count
        guard length <= limit else {
            throw .malformed(field: field(), reason: "length \(length) exceeds the limit of \(limit) bytes")
        }
    }

    func write<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        switch self {
        case .success(let bytes):
            writer.writeU8(Kind.success.rawValue)
            writer.writeByteString(bytes)
        case .thrown(let typeName, let description):
            writer.writeU8(Kind.thrown.rawValue)
            writer.writeString(typeName)
            writer.writeString(description)
        case .unknownFunction:
            writer.writeU8(Kind.unknownFunction.rawValue)
        case .badArguments(let reason):
            writer.writeU8(Kind.badArguments.rawValue)
            writer.writeString(reason)
        case .malformedCall(let reason):
            writer.writeU8(Kind.malformedCall.rawValue)
            writer.writeString(reason)
        }
    }
}

/// One started notice: the executor runs attempt `attempt` of the caller's call `sequence`.
public struct CallStartedEntry: Sendable, Equatable, Hashable {
    public var sequence: UInt64
    public var attempt: UInt8

    public init(sequence: UInt64, attempt: UInt8) {
        self.sequence = sequence
        self.attempt = attempt
    }
}

/// A remote-call message (types `0x40–0x5F`), always a batch addressed to one peer.
///
/// Results, started notices and credit go from an executor to a caller; cancels and direct
/// calls from a caller to an executor. Entries name calls by the caller's sequence number
/// only: the caller is the recipient (results, started) or the sender (cancel, direct).
public enum RemoteCallMessage: Sendable, Equatable, WireMessage, WireDecodable {
    /// `0x40`: results of calls, 1...65535 entries.
    case results([CallResultEntry])
    /// `0x41`: the sender began executing these calls, 1...65535 entries.
    case started([CallStartedEntry])
    /// `0x42`: the caller no longer wants these calls, 1...65535 sequence numbers.
    case cancel([UInt64])
    /// `0x43`: call items (``CallItem`` bytes, 1...65535) sent straight to an executor that
    /// granted this caller credit for them; each names the sender as its caller.
    case direct([[UInt8]])
    /// `0x44`: the executor grants the caller credit for this many more direct calls (>= 1).
    case credit(UInt32)
    /// `0x45`: consecutive direct calls of the sender to one function (1...65535 calls), on
    /// credit as ``direct(_:)``; only to a peer whose hello has ``WireProtocol/featureCallRuns``.
    case directRun(CallRun)
    /// `0x46`: results of consecutive calls (1...65535), executor to caller; only to a peer
    /// whose hello has ``WireProtocol/featureResultRuns``.
    case resultRun(ResultRun)

    /// The message types this module decodes.
    public static let messageTypes: [MessageType] = [
        .remoteCallResults, .remoteCallStarted, .remoteCallCancel, .remoteCallDirect, .remoteCallCredit,
        .remoteCallDirectRun, .remoteCallResultRun,
    ]

    public var messageType: MessageType {
        switch self {
        case .results: return .remoteCallResults
        case .started: return .remoteCallStarted
        case .cancel: return .remoteCallCancel
        case .direct: return .remoteCallDirect
        case .credit: return .remoteCallCredit
        case .directRun: return .remoteCallDirectRun
        case .resultRun: return .remoteCallResultRun
        }
    }

    // MARK: Decoding

    /// Decodes the body of a message of `type`, checking every limit and that no byte is left.
    ///
    /// - Throws: `WireError.unknownMessageType` for a type outside this layer,
    ///   `WireError.truncated` naming the short field (with the
    ///   entry index, e.g. `results[3].description`), `WireError.malformed`
    ///   (count 0, unknown outcome kind, attempt 0, a string over its limit or not UTF-8),
    ///   `WireError.trailingBytes`.
    public static func decode(type: MessageType, body: UnsafeRawBufferPointer) throws(WireError) -> RemoteCallMessage {
        var reader = WireReader(body)
        let message: RemoteCallMessage
        switch type {
        case .remoteCallResults:
            let count = try readCount(&reader, name: "results", minimumEntrySize: 9)
            var entries: [CallResultEntry] = []
            entries.reserveCapacity(Swift.min(count, reader.remaining / 9))
            for index in 0..<count {
                do throws(WireError) {
                    entries.append(try readResult(&reader))
                } catch {
                    throw error.nested(under: "results[\(index)]")
                }
            }
            message = .results(entries)
        case .remoteCallStarted:
            let count = try readCount(&reader, name: "started", minimumEntrySize: 9)
            var entries: [CallStartedEntry] = []
            entries.reserveCapacity(Swift.min(count, reader.remaining / 9))
            for index in 0..<count {
                do throws(WireError) {
                    let sequence = try reader.readU64(field: "started.sequence")
                    let attempt = try reader.readU8(field: "started.attempt")
                    guard attempt >= 1 else { throw .malformed(field: "started.attempt", reason: "attempt 0") }
                    entries.append(CallStartedEntry(sequence: sequence, attempt: attempt))
                } catch {
                    throw error.indexed(index, of: "started")
                }
            }
            message = .started(entries)
        case .remoteCallCancel:
            let count = try readCount(&reader, name: "cancel", minimumEntrySize: 8)
            var sequences: [UInt64] = []
            sequences.reserveCapacity(Swift.min(count, reader.remaining / 8))
            for index in 0..<count {
                do throws(WireError) {
                    sequences.append(try reader.readU64(field: "cancel.sequence"))
                } catch {
                    throw error.indexed(index, of: "cancel")
                }
            }
            message = .cancel(sequences)
        case .remoteCallDirect:
            let count = try readCount(&reader, name: "direct", minimumEntrySize: 4)
            var items: [[UInt8]] = []
            items.reserveCapacity(Swift.min(count, reader.remaining / (4 + RemoteCallLimits.itemHeaderSize)))
            for index in 0..<count {
                // The item itself is decoded by the executor, like a popped one (a malformed
                // item is answered, not a reason to drop the link).
                do throws(WireError) {
                    let bytes = try reader.readByteString(field: "direct", maxLength: Int(UInt32.max))
                    guard bytes.count >= RemoteCallLimits.itemHeaderSize else {
                        throw .malformed(field: "direct", reason: "\(bytes.count) bytes, shorter than a call item header")
                    }
                    items.append(Array(bytes))
                } catch {
                    throw error.indexed(index, of: "direct")
                }
            }
            message = .direct(items)
        case .remoteCallCredit:
            let slots = try reader.readU32(field: "credit.slots")
            guard slots >= 1 else { throw .malformed(field: "credit.slots", reason: "no credit") }
            message = .credit(slots)
        case .remoteCallDirectRun:
            message = .directRun(try CallRun.decode(&reader))
        case .remoteCallResultRun:
            message = .resultRun(try ResultRun.decode(&reader))
        default:
            throw .unknownMessageType(type.rawValue)
        }
        try reader.finish(type: type)
        return message
    }



    private static func readCount(_ reader: inout WireReader, name: String, minimumEntrySize: Int) throws(WireError) -> Int {
        let count = Int(try reader.readU16(field: name + ".count"))
        guard count >= 1 else { throw .malformed(field: name + ".count", reason: "no entries") }
        return count
    }

    private static func readResult(_ reader: inout WireReader) throws(WireError) -> CallResultEntry {
        let sequence = try reader.readU64(field: "sequence")
        return CallResultEntry(sequence: sequence, outcome: try CallOutcome.read(&reader))
    }

    // MARK: Encoding

    public func validate() throws(WireError) {
        switch self {
        case .results(let entries):
            try Self.checkCount(entries.count, name: "results")
            for (index, entry) in entries.enumerated() { try entry.outcome.validate(field: "results[\(index)]") }
        case .started(let entries):
            try Self.checkCount(entries.count, name: "started")
            if let index = entries.firstIndex(where: { $0.attempt == 0 }) {
                throw .malformed(field: "started[\(index)].attempt", reason: "attempt 0")
            }
        case .cancel(let sequences):
            try Self.checkCount(sequences.count, name: "cancel")
        case .direct(let items):
            try Self.checkCount(items.count, name: "direct")
            if let index = items.firstIndex(where: { $0.count < RemoteCallLimits.itemHeaderSize || $0.count > Int(UInt32.max) }) {
                throw .malformed(field: "direct[\(index)]", reason: "\(items[index].count) bytes is not a call item")
            }
        case .credit(let slots):
            guard slots >= 1 else { throw .malformed(field: "credit.slots", reason: "no credit") }
        case .directRun(let run):
            try run.validate()
        case .resultRun(let run):
            try run.validate()
        }
    }

    private static func checkCount(_ count: Int, name: String) throws(WireError) {
        guard count >= 1 else { throw .malformed(field: name + ".count", reason: "no entries") }
        guard count <= RemoteCallLimits.maxEntriesPerMessage else {
            throw .malformed(field: name + ".count", reason: "\(count) exceeds the limit of \(RemoteCallLimits.maxEntriesPerMessage)")
        }
    }

    public var bodySize: Int {
        switch self {
        case .results(let entries): return entries.reduce(2) { $0 + $1.encodedSize }
        case .started(let entries): return 2 + entries.count * 9
        case .cancel(let sequences): return 2 + sequences.count * 8
        case .direct(let items): return items.reduce(2) { $0 + 4 + $1.count }
        case .credit: return 4
        case .directRun(let run): return run.bodySize
        case .resultRun(let run): return run.bodySize
        }
    }

    // Links encode into an array; the pre-specialized body writes each field with no generic call.
    @specialized(where Output == [UInt8])
    public func writeBody<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        switch self {
        case .results(let entries):
            writer.writeU16(UInt16(entries.count))
            for entry in entries {
                writer.writeU64(entry.sequence)
                entry.outcome.write(into: &writer)
            }
        case .started(let entries):
            writer.writeU16(UInt16(entries.count))
            for entry in entries {
                writer.writeU64(entry.sequence)
                writer.writeU8(entry.attempt)
            }
        case .cancel(let sequences):
            writer.writeU16(UInt16(sequences.count))
            for sequence in sequences { writer.writeU64(sequence) }
        case .direct(let items):
            writer.writeU16(UInt16(items.count))
            for item in items { writer.writeByteString(item) }
        case .credit(let slots):
            writer.writeU32(slots)
        case .directRun(let run):
            run.write(into: &writer)
        case .resultRun(let run):
            run.write(into: &writer)
        }
    }

    /// Validates the message and appends it framed (`[u32 L][type][body]`) to `bytes`.
    public func encode(into bytes: inout [UInt8], maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) {
        try MessageEncoder.encode(self, into: &bytes, maxFrameSize: maxFrameSize)
    }

    /// The framed message (`[u32 L][type][body]`).
    public func encoded(maxFrameSize: Int = WireProtocol.defaultMaxFrameSize) throws(WireError) -> [UInt8] {
        var bytes: [UInt8] = []
        try encode(into: &bytes, maxFrameSize: maxFrameSize)
        return bytes
    }
}


extension RemoteCallMessage {
    /// Where a direct message taking `items` from `start` on ends (exclusive): within the
    /// entry limit and well within a frame (items are at most ~1 MiB); at least one item.
    /// Direct calls to one executor in one turn go out as the fewest such messages.
    public static func directMessageEnd(_ items: [[UInt8]], from start: Int) -> Int {
        var end = start
        var bytes = 2
        while end < items.count && end - start < RemoteCallLimits.maxEntriesPerMessage
            && (end == start || bytes + 4 + items[end].count <= WireProtocol.defaultMaxFrameSize - 64) {
            bytes += 4 + items[end].count
            end += 1
        }
        return end
    }
}
