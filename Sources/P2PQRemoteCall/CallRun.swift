import P2PQWire

/// Consecutive direct calls of one caller to one function, as one value: the header once and
/// every call's arguments in one buffer (the body of ``RemoteCallMessage/directRun(_:)``).
///
/// Call `i` (from 0) has sequence `firstSequence + i`; all share attempt, flags and deadline.
/// A run costs one allocation however many calls it holds, where single call items cost one
/// each (and repeat the 60-byte header on the wire).
public struct CallRun: Sendable, Equatable {
    /// The node waiting for the results (the sender of the run).
    public var caller: PeerID
    /// The sequence of the first call.
    public var firstSequence: UInt64
    /// 1...255, as in a ``CallItem``.
    public var attempt: UInt8
    public var memoize: Bool
    /// Wall-clock Unix time in ns after which the results are useless; 0 means none.
    public var deadline: UInt64
    /// UTF-8, 1...255 bytes.
    public var function: String
    /// Calls in the run.
    public private(set) var count: Int
    /// Each call's arguments as `u32 length` + bytes, in sequence order: the wire form.
    public private(set) var packedArguments: [UInt8]

    /// An empty run (no calls yet): append to it.
    public init(caller: PeerID, firstSequence: UInt64, attempt: UInt8 = 1, function: String, memoize: Bool = false,
                deadline: UInt64 = 0) {
        self.caller = caller
        self.firstSequence = firstSequence
        self.attempt = attempt
        self.function = function
        self.memoize = memoize
        self.deadline = deadline
        self.count = 0
        self.packedArguments = []
    }

    /// A run of the calls `arguments`, sequences from `firstSequence` on.
    public init(caller: PeerID, firstSequence: UInt64, attempt: UInt8 = 1, function: String, memoize: Bool = false,
                deadline: UInt64 = 0, arguments: [[UInt8]]) {
        self.init(caller: caller, firstSequence: firstSequence, attempt: attempt, function: function,
                  memoize: memoize, deadline: deadline)
        for each in arguments { append(arguments: each) }
    }

    /// A decoded run: `packed` was checked to hold exactly `count` length-prefixed entries.
    init(caller: PeerID, firstSequence: UInt64, attempt: UInt8, function: String, memoize: Bool, deadline: UInt64,
         count: Int, packed: [UInt8]) {
        self.init(caller: caller, firstSequence: firstSequence, attempt: attempt, function: function,
                  memoize: memoize, deadline: deadline)
        self.count = count
        self.packedArguments = packed
    }

    /// Most bytes of a run's body: it always fits a frame of the default size, as direct
    /// messages do.
    public static let maxBodySize = WireProtocol.defaultMaxFrameSize - 64

    /// Bytes before the arguments: caller, first sequence, attempt, flags, deadline, function,
    /// count.
    public var headerSize: Int { WireProtocol.peerIDSize + 8 + 1 + 1 + 8 + 4 + function.utf8.count + 2 }
    /// Exact size of the encoded run (a message body).
    public var bodySize: Int { headerSize + packedArguments.count }
    /// The sequence the next call must have to continue the run.
    public var nextSequence: UInt64 { firstSequence &+ UInt64(count) }

    /// Whether a call with these fields continues the run (it may still lack room).
    @inlinable
    public func continues(sequence: UInt64, attempt: UInt8, function: String, memoize: Bool, deadline: UInt64) -> Bool {
        sequence == nextSequence && attempt == self.attempt && memoize == self.memoize
            && deadline == self.deadline && function == self.function
    }

    /// Whether one more call with `argumentCount` bytes of arguments fits (entry limit, body
    /// size). An empty run takes any first call.
    public func hasRoom(forArguments argumentCount: Int) -> Bool {
        count == 0 || (count < RemoteCallLimits.maxEntriesPerMessage && bodySize + 4 + argumentCount <= Self.maxBodySize)
    }

    /// Whether `other` continues this run and fits in it whole.
    public func canAbsorb(_ other: CallRun) -> Bool {
        other.count > 0 && caller == other.caller
            && continues(sequence: other.firstSequence, attempt: other.attempt, function: other.function,
                         memoize: other.memoize, deadline: other.deadline)
            && count + other.count <= RemoteCallLimits.maxEntriesPerMessage
            && bodySize + other.packedArguments.count <= Self.maxBodySize
    }

    /// Appends the next call (sequence ``nextSequence``).
    public mutating func append(arguments: [UInt8]) {
        // A run's first call sizes the buffer exactly: a run of one call (a caller making one
        // call per input) then costs one allocation, as its call item did.
        if packedArguments.isEmpty { packedArguments.reserveCapacity(4 + arguments.count) }
        let length = UInt32(arguments.count).bigEndian
        withUnsafeBytes(of: length) { packedArguments.append(contentsOf: $0) }
        packedArguments.append(contentsOf: arguments)
        count += 1
    }

    /// Makes room for `bytes` of packed arguments (4 bytes of length per call included), so a
    /// run built a call at a time grows its buffer once.
    public mutating func reserveCapacity(forArguments bytes: Int) {
        packedArguments.reserveCapacity(Swift.min(bytes, Self.maxBodySize))
    }

    /// Appends the calls of `other` (check ``canAbsorb(_:)`` first).
    public mutating func absorb(_ other: CallRun) {
        packedArguments.append(contentsOf: other.packedArguments)
        count += other.count
    }

    /// Calls `body` with each call's index and arguments, in order, in place (no copy).
    public func forEachCall(_ body: (Int, UnsafeRawBufferPointer) -> Void) {
        packedArguments.withUnsafeBytes { raw in
            var offset = 0
            for index in 0..<count {
                let length = Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
                offset += 4
                body(index, UnsafeRawBufferPointer(rebasing: raw[offset..<offset + length]))
                offset += length
            }
        }
    }

    /// The ID of call `index`.
    public func id(at index: Int) -> CallID {
        CallID(caller: caller, sequence: firstSequence &+ UInt64(index))
    }

    /// The calls as call items, in order (for a peer that does not know runs, and for tests).
    public func items() -> [CallItem] {
        var items: [CallItem] = []
        items.reserveCapacity(count)
        forEachCall { (index, arguments) in
            items.append(CallItem(id: id(at: index), attempt: attempt, function: function, memoize: memoize,
                                  deadline: deadline, arguments: Array(arguments)))
        }
        return items
    }

    /// The calls as encoded call items (``RemoteCallMessage/direct(_:)`` entries).
    public func encodedItems() -> [[UInt8]] {
        let callerBytes = caller.bytes
        return items().map { $0.unvalidatedBytes(callerBytes: callerBytes) }
    }

    // MARK: Wire form

    /// Decodes a run body (after the message type), checking every field and that the
    /// arguments hold exactly `count` entries and no byte more.
    static func decode(_ reader: inout WireReader) throws(WireError) -> CallRun {
        let caller = try reader.readPeerID(field: "directRun.caller")
        let first = try reader.readU64(field: "directRun.firstSequence")
        let attempt = try reader.readU8(field: "directRun.attempt")
        guard attempt >= 1 else { throw .malformed(field: "directRun.attempt", reason: "attempt 0") }
        let flags = try reader.readU8(field: "directRun.flags")
        guard flags & ~CallItem.memoizeFlag == 0 else {
            throw .malformed(field: "directRun.flags", reason: "unknown flag bits 0x\(String(flags & ~CallItem.memoizeFlag, radix: 16))")
        }
        let deadline = try reader.readU64(field: "directRun.deadline")
        let function = try reader.readString(field: "directRun.function", maxLength: RemoteCallLimits.maxFunctionNameLength)
        guard !function.isEmpty else { throw .malformed(field: "directRun.function", reason: "empty") }
        let count = Int(try reader.readU16(field: "directRun.count"))
        guard count >= 1 else { throw .malformed(field: "directRun.count", reason: "no entries") }
        guard UInt64(count - 1) <= UInt64.max - first else {
            throw .malformed(field: "directRun.count", reason: "\(count) calls from sequence \(first) pass the last sequence")
        }
        // Walk the lengths first: the one copy below is then exactly the checked entries.
        var walker = reader
        for index in 0..<count {
            do throws(WireError) {
                _ = try walker.readByteString(field: "directRun.arguments", maxLength: Int(UInt32.max))
            } catch {
                throw error.indexed(index, of: "directRun")
            }
        }
        let packed = Array(try reader.readRaw(count: walker.offset - reader.offset, field: "directRun.arguments"))
        return CallRun(caller: caller, firstSequence: first, attempt: attempt, function: function, memoize: flags != 0,
                       deadline: deadline, count: count, packed: packed)
    }

    /// Checks the limits the decoder enforces.
    func validate() throws(WireError) {
        guard count >= 1 else { throw .malformed(field: "directRun.count", reason: "no entries") }
        guard count <= RemoteCallLimits.maxEntriesPerMessage else {
            throw .malformed(field: "directRun.count", reason: "\(count) exceeds the limit of \(RemoteCallLimits.maxEntriesPerMessage)")
        }
        guard attempt >= 1 else { throw .malformed(field: "directRun.attempt", reason: "attempt 0") }
        let nameLength = function.utf8.count
        guard (1...RemoteCallLimits.maxFunctionNameLength).contains(nameLength) else {
            throw .malformed(field: "directRun.function", reason: "length \(nameLength) is not 1...\(RemoteCallLimits.maxFunctionNameLength)")
        }
        guard UInt64(count - 1) <= UInt64.max - firstSequence else {
            throw .malformed(field: "directRun.count", reason: "\(count) calls from sequence \(firstSequence) pass the last sequence")
        }
    }

    func write<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        caller.write(into: &writer)
        writer.writeU64(firstSequence)
        writer.writeU8(attempt)
        writer.writeU8(memoize ? CallItem.memoizeFlag : 0)
        writer.writeU64(deadline)
        writer.writeString(function)
        writer.writeU16(UInt16(count))
        writer.writeRaw(packedArguments)
    }
}

extension Array where Element == CallRun {
    /// Appends `run`, into the last run when it continues that one and fits.
    public mutating func appendMerging(_ run: CallRun) {
        if let last = indices.last, self[last].canAbsorb(run) {
            self[last].absorb(run)
        } else {
            append(run)
        }
    }
}
