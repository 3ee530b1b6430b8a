import P2PQWire

/// Names one remote call cluster-wide: the caller's peer ID and the caller's sequence number.
///
/// Results and notices travel to `caller`, so on the wire they carry only `sequence`.
public struct CallID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The node that made the call and waits for its result.
    public var caller: PeerID
    /// The caller's number for the call; never reused by one caller process.
    public var sequence: UInt64

    public init(caller: PeerID, sequence: UInt64) {
        self.caller = caller
        self.sequence = sequence
    }

    public static func < (lhs: CallID, rhs: CallID) -> Bool {
        (lhs.caller, lhs.sequence) < (rhs.caller, rhs.sequence)
    }

    public var description: String { "\(caller.description.prefix(8))#\(sequence)" }
}

/// How a call ended on its executor, as it travels back to the caller in a results message.
public enum CallOutcome: Sendable, Equatable {
    /// The function returned these encoded bytes.
    case success([UInt8])
    /// The function threw: the error's type name and description (both truncated to the wire
    /// limits, see ``RemoteCallLimits``).
    case thrown(typeName: String, description: String)
    /// No function of the call's name is registered on the executor.
    case unknownFunction
    /// The arguments did not decode as the function's parameter type.
    case badArguments(String)
    /// The call item itself was not valid (its header decoded, so the caller is known).
    case malformedCall(String)

    /// Whether a memo cache may keep this outcome (only successes are cached).
    public var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }

    /// A ``thrown(typeName:description:)`` outcome with both strings cut to the wire limits at
    /// a character boundary, so any error can be reported.
    public static func thrownTruncating(typeName: String, description: String) -> CallOutcome {
        .thrown(
            typeName: truncateUTF8(typeName, to: RemoteCallLimits.maxTypeNameLength),
            description: truncateUTF8(description, to: RemoteCallLimits.maxDescriptionLength)
        )
    }
}

/// Wire limits of the remote-call layer (item and messages).
public enum RemoteCallLimits {
    /// Version byte at the start of every call item.
    public static let itemVersion: UInt8 = 1
    /// Longest function name, in UTF-8 bytes (names are never empty).
    public static let maxFunctionNameLength = 255
    /// Longest error type name in a result, in UTF-8 bytes.
    public static let maxTypeNameLength = 255
    /// Longest error description (and bad-arguments or malformed-call reason), in UTF-8 bytes.
    public static let maxDescriptionLength = 4096
    /// Most entries in one results, started or cancel message.
    public static let maxEntriesPerMessage = 65535
    /// Bytes of a call item before its function name and arguments:
    /// version, caller, sequence, attempt, flags, deadline, name length, arguments length.
    public static let itemHeaderSize = 1 + WireProtocol.peerIDSize + 8 + 1 + 1 + 8 + 4 + 4
    /// Bytes a results entry takes besides its success payload: sequence, kind, length.
    public static let resultEntryOverhead = 8 + 1 + 4
}

/// Why a call failed, as the caller sees it.
public enum RemoteCallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The function threw on the executor: the remote error's type name and description.
    case remote(typeName: String, description: String)
    /// No function of this name is registered on the node that took the call.
    case unknownFunction(String)
    /// The arguments did not decode on the executor.
    case badArguments(function: String, description: String)
    /// The executor could not read the call item.
    case malformedCall(function: String, description: String)
    /// The call's deadline passed before its result arrived.
    case timedOut(function: String)
    /// The caller cancelled the call.
    case cancelled(function: String)
    /// The executors of `attempts` attempts died or left before answering; no retry is left.
    case retriesExhausted(function: String, attempts: Int)
    /// The caller already has `limit` calls outstanding; try again after `.capacityAvailable`.
    case tooManyOutstandingCalls(limit: Int)
    /// The call cannot be made at all (empty or over-long name, arguments over the limit, or
    /// arguments that failed to encode).
    case invalidCall(String)
    /// The result arrived but did not decode as the expected type (raised by the typed API).
    case badResult(function: String, description: String)
    /// The caller's node stopped (or was not running) before the call completed.
    case nodeStopped

    public var description: String {
        switch self {
        case .remote(let typeName, let description):
            return "remote function threw \(typeName): \(description)"
        case .unknownFunction(let name):
            return "unknown function \"\(name)\" on the executing node"
        case .badArguments(let function, let description):
            return "bad arguments for \"\(function)\": \(description)"
        case .malformedCall(let function, let description):
            return "malformed call of \"\(function)\": \(description)"
        case .timedOut(let function):
            return "call of \"\(function)\" timed out"
        case .cancelled(let function):
            return "call of \"\(function)\" was cancelled"
        case .retriesExhausted(let function, let attempts):
            return "call of \"\(function)\" lost its executor \(attempts) times; no retry left"
        case .tooManyOutstandingCalls(let limit):
            return "too many outstanding calls (limit \(limit))"
        case .invalidCall(let reason):
            return "invalid call: \(reason)"
        case .badResult(let function, let description):
            return "result of \"\(function)\" did not decode: \(description)"
        case .nodeStopped:
            return "the node is not running"
        }
    }

    /// The caller-side error for an outcome other than success.
    init?(outcome: CallOutcome, function: String) {
        switch outcome {
        case .success: return nil
        case .thrown(let typeName, let description): self = .remote(typeName: typeName, description: description)
        case .unknownFunction: self = .unknownFunction(function)
        case .badArguments(let description): self = .badArguments(function: function, description: description)
        case .malformedCall(let description): self = .malformedCall(function: function, description: description)
        }
    }
}

/// What memo caches are keyed by: the function name and the encoded arguments.
public struct MemoKey: Hashable, Sendable {
    public var function: String
    public var arguments: [UInt8]

    public init(function: String, arguments: [UInt8]) {
        self.function = function
        self.arguments = arguments
    }

    /// Bytes the key holds, for the cache's byte bound.
    var byteCount: Int { function.utf8.count + arguments.count }
}

/// The longest prefix of `string` of at most `limit` UTF-8 bytes that ends on a character.
func truncateUTF8(_ string: String, to limit: Int) -> String {
    if string.utf8.count <= limit { return string }
    var result = ""
    var used = 0
    for character in string {
        let size = character.utf8.count
        if used + size > limit { break }
        result.append(character)
        used += size
    }
    return result
}
