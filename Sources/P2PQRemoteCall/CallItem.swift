import P2PQWire

/// A call as it travels through the queue: the bytes of one queue item.
///
/// Layout (all integers big-endian), documented in docs/protocol.md, "Remote calls":
///
/// ```
/// u8      version            1
/// 32      caller             PeerID of the node waiting for the result
/// u64     sequence           the caller's number for the call
/// u8      attempt            1 for the first push, +1 per re-push after an executor loss
/// u8      flags              bit 0: memoize; other bits must be 0
/// u64     deadline           wall-clock Unix time in ns; 0 = none
/// u32+N   function           UTF-8, 1...255 bytes
/// u32+N   arguments          the encoded arguments, opaque here
/// ```
///
/// The deadline is absolute wall-clock time, not a remaining budget: an item waits in queues
/// and moves between nodes without being rewritten, so a relative budget could not be aged,
/// while an absolute time can be checked anywhere. It is only a hint, though: the caller's
/// own monotonic clock decides the timeout (``CallerMachine/tick(now:)``); an executor skips an
/// item whose deadline passed more than a grace period ago, so clock skew between hosts at
/// worst runs a call that is no longer needed, never fails one that is.
public struct CallItem: Sendable, Equatable {
    public var id: CallID
    /// 1...255.
    public var attempt: UInt8
    public var function: String
    public var memoize: Bool
    /// Wall-clock Unix time in nanoseconds after which the result is useless; 0 means none.
    public var deadline: UInt64
    public var arguments: [UInt8]

    public init(id: CallID, attempt: UInt8 = 1, function: String, memoize: Bool, deadline: UInt64 = 0, arguments: [UInt8]) {
        self.id = id
        self.attempt = attempt
        self.function = function
        self.memoize = memoize
        self.deadline = deadline
        self.arguments = arguments
    }

    static let memoizeFlag: UInt8 = 0x01

    /// Bytes the encoded item takes.
    public var encodedSize: Int { RemoteCallLimits.itemHeaderSize + function.utf8.count + arguments.count }

    /// Checks the limits a decoder enforces.
    ///
    /// - Throws: `WireError.malformed` for an attempt of 0, an empty or
    ///   over-long function name, or arguments over `maxArgumentSize`.
    public func validate(maxArgumentSize: Int) throws(WireError) {
        guard attempt >= 1 else { throw .malformed(field: "call.attempt", reason: "attempt 0") }
        let nameLength = function.utf8.count
        guard nameLength >= 1 else { throw .malformed(field: "call.function", reason: "empty") }
        guard nameLength <= RemoteCallLimits.maxFunctionNameLength else {
            throw .malformed(field: "call.function", reason: "length \(nameLength) exceeds the limit of \(RemoteCallLimits.maxFunctionNameLength) bytes")
        }
        guard arguments.count <= maxArgumentSize else {
            throw .malformed(field: "call.arguments", reason: "length \(arguments.count) exceeds the limit of \(maxArgumentSize) bytes")
        }
    }

    /// Appends the item (validate first).
    public func write<Output: WireOutput>(into writer: inout WireWriter<Output>) {
        writer.writeU8(RemoteCallLimits.itemVersion)
        id.caller.write(into: &writer)
        writer.writeU64(id.sequence)
        writer.writeU8(attempt)
        writer.writeU8(memoize ? Self.memoizeFlag : 0)
        writer.writeU64(deadline)
        writer.writeString(function)
        writer.writeByteString(arguments)
    }

    /// The validated, encoded item.
    public func encoded(maxArgumentSize: Int = Int(UInt32.max)) throws(WireError) -> [UInt8] {
        try validate(maxArgumentSize: maxArgumentSize)
        return unvalidatedBytes(callerBytes: id.caller.bytes)
    }

    /// The encoded item, written in one pass into exactly sized storage (every call pushes
    /// one, so this skips the generic writer). Validate first.
    func unvalidatedBytes(callerBytes: [UInt8]) -> [UInt8] {
        let size = encodedSize
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            var offset = 0
            func put<T: FixedWidthInteger>(_ value: T) {
                raw.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
                offset += MemoryLayout<T>.size
            }
            func put(_ bytes: UnsafeRawBufferPointer) {
                if let base = bytes.baseAddress, bytes.count > 0 {
                    (raw.baseAddress! + offset).copyMemory(from: base, byteCount: bytes.count)
                }
                offset += bytes.count
            }
            put(RemoteCallLimits.itemVersion)
            callerBytes.withUnsafeBytes { put($0) }
            put(id.sequence)
            put(attempt)
            put(memoize ? Self.memoizeFlag : UInt8(0))
            put(deadline)
            var name = function
            name.withUTF8 { utf8 in
                put(UInt32(utf8.count))
                put(UnsafeRawBufferPointer(utf8))
            }
            put(UInt32(arguments.count))
            arguments.withUnsafeBytes { put($0) }
            initialized = offset
        }
    }

    /// Decodes an item, checking every field and that no byte is left over.
    ///
    /// - Throws: `WireError.truncated` naming the short field, or
    ///   `WireError.malformed` (unknown version, attempt 0, unknown flag bits,
    ///   empty, over-long or non-UTF-8 name, arguments over `maxArgumentSize`, trailing bytes).
    public static func decode(_ raw: UnsafeRawBufferPointer, maxArgumentSize: Int) throws(WireError) -> CallItem {
        var names = FunctionNames()
        return try decode(raw, maxArgumentSize: maxArgumentSize, names: &names)
    }

    /// Decodes an item as ``decode(_:maxArgumentSize:)`` does, taking its function name from
    /// `names` when it is the one decoded last (items mostly come in runs of one function).
    public static func decode(_ raw: UnsafeRawBufferPointer, maxArgumentSize: Int,
                              names: inout FunctionNames) throws(WireError) -> CallItem {
        if let item = fastDecode(raw, maxArgumentSize: maxArgumentSize, names: &names) { return item }
        return try preciseDecode(raw, maxArgumentSize: maxArgumentSize)
    }

    /// The function name decoded last, as bytes and as a string: a name equal to it is reused
    /// after a byte comparison, without UTF-8 validation.
    public struct FunctionNames: Sendable {
        var bytes: [UInt8] = []
        var name = ""

        public init() {}

        mutating func name(of raw: UnsafeRawBufferPointer) -> String? {
            if raw.count == bytes.count, bytes.withUnsafeBytes({ $0.elementsEqual(raw) }) { return name }
            guard let decoded = String(validating: raw, as: UTF8.self) else { return nil }
            bytes = Array(raw)
            name = decoded
            return decoded
        }
    }

    /// The common case in one pass over fixed offsets; nil for anything unusual, which the
    /// precise decoder then reports field by field. Accepts exactly what it accepts.
    static func fastDecode(_ raw: UnsafeRawBufferPointer, maxArgumentSize: Int, names: inout FunctionNames) -> CallItem? {
        let count = raw.count
        guard count >= RemoteCallLimits.itemHeaderSize, raw[0] == RemoteCallLimits.itemVersion else { return nil }
        func u64(_ offset: Int) -> UInt64 { UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        func u32(_ offset: Int) -> Int { Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))) }
        var peerReader = WireReader(UnsafeRawBufferPointer(rebasing: raw[1..<33]))
        guard let caller = try? peerReader.readPeerID(field: "call.caller") else { return nil }
        let attempt = raw[41], flags = raw[42]
        guard attempt >= 1, flags & ~memoizeFlag == 0 else { return nil }
        let nameLength = u32(51)
        guard nameLength >= 1, nameLength <= RemoteCallLimits.maxFunctionNameLength,
              count >= RemoteCallLimits.itemHeaderSize + nameLength else { return nil }
        let argumentsStart = 55 + nameLength + 4
        let argumentsLength = u32(55 + nameLength)
        guard argumentsLength <= maxArgumentSize, argumentsStart + argumentsLength == count,
              let function = names.name(of: UnsafeRawBufferPointer(rebasing: raw[55..<55 + nameLength]))
        else { return nil }
        return CallItem(
            id: CallID(caller: caller, sequence: u64(33)), attempt: attempt, function: function,
            memoize: flags & memoizeFlag != 0, deadline: u64(43),
            arguments: Array(UnsafeRawBufferPointer(rebasing: raw[argumentsStart..<count]))
        )
    }

    static func preciseDecode(_ raw: UnsafeRawBufferPointer, maxArgumentSize: Int) throws(WireError) -> CallItem {
        var reader = WireReader(raw)
        let id = try readHeader(&reader)
        let attempt = try reader.readU8(field: "call.attempt")
        guard attempt >= 1 else { throw .malformed(field: "call.attempt", reason: "attempt 0") }
        let flags = try reader.readU8(field: "call.flags")
        guard flags & ~memoizeFlag == 0 else {
            throw .malformed(field: "call.flags", reason: "unknown flag bits 0x\(String(flags & ~memoizeFlag, radix: 16))")
        }
        let deadline = try reader.readU64(field: "call.deadline")
        let function = try reader.readString(field: "call.function", maxLength: RemoteCallLimits.maxFunctionNameLength)
        guard !function.isEmpty else { throw .malformed(field: "call.function", reason: "empty") }
        let arguments = try reader.readByteString(field: "call.arguments", maxLength: maxArgumentSize)
        guard reader.remaining == 0 else {
            throw .malformed(field: "call", reason: "\(reader.remaining) trailing bytes")
        }
        return CallItem(
            id: id, attempt: attempt, function: function, memoize: flags & memoizeFlag != 0,
            deadline: deadline, arguments: Array(arguments)
        )
    }

    /// Decodes an item from an array.
    public static func decode(_ bytes: [UInt8], maxArgumentSize: Int = Int(UInt32.max)) throws(WireError) -> CallItem {
        let result: Result<CallItem, WireError> = bytes.withUnsafeBytes { raw in
            Result { () throws(WireError) in try decode(raw, maxArgumentSize: maxArgumentSize) }
        }
        return try result.get()
    }

    /// The call ID of an item whose version, caller and sequence read, even if the rest is bad:
    /// it tells an executor whom to report a malformed call to.
    public static func header(of bytes: [UInt8]) -> CallID? {
        header(of: ItemPayload(bytes))
    }

    /// As ``header(of:)-([UInt8])``, for a queue item's bytes in place.
    public static func header(of bytes: ItemPayload) -> CallID? {
        bytes.withUnsafeBytes { raw in
            var reader = WireReader(raw)
            return try? readHeader(&reader)
        }
    }

    private static func readHeader(_ reader: inout WireReader) throws(WireError) -> CallID {
        let version = try reader.readU8(field: "call.version")
        guard version == RemoteCallLimits.itemVersion else {
            throw .malformed(field: "call.version", reason: "unknown version \(version)")
        }
        let caller = try reader.readPeerID(field: "call.caller")
        return CallID(caller: caller, sequence: try reader.readU64(field: "call.sequence"))
    }
}
