import Crypto

/// The bearer token of a node's operations endpoint (queue routes, `/status`, and `/metrics`
/// off loopback): 32 random bytes written as 64 hex digits, or derived from a cluster key.
public struct OperationsToken: Sendable, Equatable, CustomStringConvertible {
    /// The token as it travels in `Authorization: Bearer <text>`.
    public let text: String

    /// A token given as text (what a client sends); nil unless it is 64 hex digits.
    public init?(text: String) {
        guard let bytes = Hex.decode(text), bytes.count == 32 else { return nil }
        self.text = Hex.encode(bytes)
    }

    /// A fresh random token.
    public static func generate() -> OperationsToken {
        OperationsToken(text: Hex.encode(SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }))!
    }

    /// The token every holder of `key` can compute: HMAC-SHA256 of the label
    /// `p2pq operations token v1` under the key, in hex. It reveals nothing about the key, so
    /// it can be handed to a client that must not join the cluster.
    public static func derived(from key: ClusterKey) -> OperationsToken {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("p2pq operations token v1".utf8), using: SymmetricKey(data: key.bytes))
        return OperationsToken(text: Hex.encode(Array(mac)))!
    }

    static let fileHeader = "p2pq-operations-token-v1"

    /// The token file's text: a header word and 64 hex digits.
    public var fileContents: String { "\(Self.fileHeader) \(text)\n" }

    /// Parses a token file, or a cluster key file (whose derived token it then is).
    public init(fileContents text: String) throws(IdentityError) {
        if text.hasPrefix(ClusterKey.fileHeader) {
            self = .derived(from: try ClusterKey(fileContents: text))
        } else {
            self.text = Hex.encode(try parseKeyFile(text, header: Self.fileHeader, what: "operations token"))
        }
    }

    /// Reads a token file or a cluster key file.
    public static func load(path: String) throws(IdentityError) -> OperationsToken {
        try OperationsToken(fileContents: try readSmallFile(path))
    }

    /// Writes a token file readable by its owner only (mode 0600). Refuses to overwrite.
    public func save(path: String) throws(IdentityError) {
        try writeSecretFile(path, contents: fileContents)
    }

    /// Whether `candidate` is this token, in time independent of where they differ (the
    /// lengths are public: every token is 64 characters).
    public func matches<S: Sequence>(_ candidate: S) -> Bool where S.Element == UInt8 {
        var difference: UInt8 = 0
        var count = 0
        var mine = text.utf8.makeIterator()
        for byte in candidate {
            count += 1
            difference |= byte ^ (mine.next() ?? 0)
        }
        return difference == 0 && count == text.utf8.count
    }

    /// Redacted: a token never goes to a log.
    public var description: String { "OperationsToken(…)" }
}
