import Crypto
import Glibc
import P2PQNoise
import P2PQWire

extension PeerID {
    /// The PeerID that belongs to a Noise static public key: its SHA-256.
    public init(publicKey: [UInt8]) {
        self.init(bytes: Array(SHA256.hash(data: publicKey)))!
    }

    /// The first 12 hex digits (48 bits): enough to tell nodes apart in logs and tables.
    public var short: String { String(description.prefix(12)) }
}

/// The shared secret that admits a node to a cluster: the Noise pre-shared key of every link.
public struct ClusterKey: Sendable, Equatable {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    /// A fresh random key.
    public static func generate() -> ClusterKey {
        ClusterKey(bytes: Array(SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }))!
    }

    /// A public identifier of the cluster (for discovery announcements): a hash of the key
    /// under a fixed label, so it names the cluster without revealing the key.
    public var clusterID: String {
        var hasher = SHA256()
        hasher.update(data: Array("p2pq cluster id v1".utf8))
        hasher.update(data: bytes)
        return Hex.encode(Array(hasher.finalize().prefix(8)))
    }

    static let fileHeader = "p2pq-cluster-key-v1"

    /// The key file's text: a header word and 64 hex digits.
    public var fileContents: String { "\(Self.fileHeader) \(Hex.encode(bytes))\n" }

    /// Parses a key file's text.
    public init(fileContents text: String) throws(IdentityError) {
        let bytes = try parseKeyFile(text, header: Self.fileHeader, what: "cluster key")
        self.bytes = bytes
    }

    /// Reads a key file.
    public static func load(path: String) throws(IdentityError) -> ClusterKey {
        try ClusterKey(fileContents: try readSmallFile(path))
    }

    /// Writes a key file readable by its owner only (mode 0600). Refuses to overwrite.
    public func save(path: String) throws(IdentityError) {
        try writeSecretFile(path, contents: fileContents)
    }
}

/// A node's long-term key pair and the PeerID derived from it.
public struct NodeIdentity: Sendable {
    public let keyPair: NoiseKeyPair
    public let peerID: PeerID

    public init(keyPair: NoiseKeyPair) {
        self.keyPair = keyPair
        self.peerID = PeerID(publicKey: keyPair.publicKey)
    }

    /// A fresh identity.
    public static func generate() -> NodeIdentity { NodeIdentity(keyPair: .generate()) }

    static let fileHeader = "p2pq-identity-v1"

    /// The identity file's text: a header word and the private key in hex.
    public var fileContents: String { "\(Self.fileHeader) \(Hex.encode(keyPair.privateKeyBytes))\n" }

    public init(fileContents text: String) throws(IdentityError) {
        let bytes = try parseKeyFile(text, header: Self.fileHeader, what: "identity")
        do {
            self.init(keyPair: try NoiseKeyPair(privateKey: bytes))
        } catch {
            throw .malformed(what: "identity", reason: "not a Curve25519 private key")
        }
    }

    /// Loads the identity at `path`, or creates one there (mode 0600) if the file is missing.
    public static func loadOrCreate(path: String) throws(IdentityError) -> NodeIdentity {
        if access(path, F_OK) == 0 {
            return try NodeIdentity(fileContents: try readSmallFile(path))
        }
        let identity = NodeIdentity.generate()
        try writeSecretFile(path, contents: identity.fileContents)
        return identity
    }
}

/// Errors reading or writing key and identity files.
public enum IdentityError: Error, Sendable, Equatable, CustomStringConvertible {
    case cannotRead(path: String, errno: Int32)
    case cannotWrite(path: String, errno: Int32)
    case alreadyExists(path: String)
    case malformed(what: String, reason: String)

    public var description: String {
        switch self {
        case .cannotRead(let p, let e): return "cannot read \(p): \(String(cString: strerror(e)))"
        case .cannotWrite(let p, let e): return "cannot write \(p): \(String(cString: strerror(e)))"
        case .alreadyExists(let p): return "\(p) already exists; refusing to overwrite a key"
        case .malformed(let what, let reason): return "malformed \(what) file: \(reason)"
        }
    }
}

func parseKeyFile(_ text: String, header: String, what: String) throws(IdentityError) -> [UInt8] {
    let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" })
    guard words.count == 2, words[0] == header else {
        throw .malformed(what: what, reason: "expected '\(header) <64 hex digits>'")
    }
    guard let bytes = Hex.decode(String(words[1])), bytes.count == 32 else {
        throw .malformed(what: what, reason: "the key must be 64 hex digits")
    }
    return bytes
}

func readSmallFile(_ path: String) throws(IdentityError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .cannotRead(path: path, errno: errno) }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = read(fd, &buffer, buffer.count)
    guard n >= 0 else { throw .cannotRead(path: path, errno: errno) }
    return String(decoding: buffer.prefix(n), as: UTF8.self)
}

func writeSecretFile(_ path: String, contents: String) throws(IdentityError) {
    // O_EXCL: never clobber an existing key; 0600: secrets stay with their owner.
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
        if errno == EEXIST { throw .alreadyExists(path: path) }
        throw .cannotWrite(path: path, errno: errno)
    }
    defer { close(fd) }
    let bytes = Array(contents.utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else { throw .cannotWrite(path: path, errno: errno) }
}

enum Hex {
    static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
