/// A domain name as its labels (raw bytes, no dots, no root label).
///
/// Equality and hashing ignore ASCII case, as DNS names do (RFC 1035 §2.3.3, RFC 6762 §16).
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    /// The labels, most specific first (`["_p2pqueue", "_tcp", "local"]`).
    public var labels: [[UInt8]]

    /// Longest label (RFC 1035 §2.3.4).
    public static let maxLabelLength = 63
    /// Longest name in wire form, length bytes and the root label included.
    public static let maxWireLength = 255

    public init(labels: [[UInt8]]) {
        self.labels = labels
    }

    /// Splits dotted text into labels (a trailing dot is ignored; no escapes).
    public init(_ text: String) {
        labels = text.split(separator: ".", omittingEmptySubsequences: true).map { Array($0.utf8) }
    }

    /// Bytes this name takes uncompressed on the wire.
    public var wireLength: Int { labels.reduce(1) { $0 + 1 + $1.count } }

    /// The name with `prefix` as an extra first label.
    public func prepending(_ prefix: String) -> DNSName {
        DNSName(labels: [Array(prefix.utf8)] + labels)
    }

    /// The first label as text (an instance name, say).
    public var firstLabel: String { labels.first.map { String(decoding: $0, as: UTF8.self) } ?? "" }

    /// Dotted text with a trailing dot; dots and backslashes inside labels are escaped.
    public var description: String {
        if labels.isEmpty { return "." }
        return labels.map { label in
            var text = ""
            for byte in label {
                switch byte {
                case UInt8(ascii: "."), UInt8(ascii: "\\"): text += "\\" + String(UnicodeScalar(byte))
                case 0x21...0x7E: text.append(Character(UnicodeScalar(byte)))
                default: text += "\\" + String(byte)
                }
            }
            return text
        }.joined(separator: ".") + "."
    }

    private static func lower(_ byte: UInt8) -> UInt8 {
        (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
    }

    public static func == (lhs: DNSName, rhs: DNSName) -> Bool {
        guard lhs.labels.count == rhs.labels.count else { return false }
        for (a, b) in zip(lhs.labels, rhs.labels) {
            guard a.count == b.count, zip(a, b).allSatisfy({ lower($0) == lower($1) }) else { return false }
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        // Byte by byte: no lowercased copy to allocate (names are hashed often while encoding).
        hasher.combine(labels.count)
        for label in labels {
            hasher.combine(label.count)
            for byte in label { hasher.combine(Self.lower(byte)) }
        }
    }
}

/// A resource record type (RFC 1035 §3.2.2 and later RFCs).
public struct DNSRecordType: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let a = DNSRecordType(1)
    public static let ptr = DNSRecordType(12)
    public static let txt = DNSRecordType(16)
    public static let aaaa = DNSRecordType(28)
    public static let srv = DNSRecordType(33)
    public static let nsec = DNSRecordType(47)
    /// In questions only: every type.
    public static let any = DNSRecordType(255)

    public var description: String {
        switch rawValue {
        case 1: "A"
        case 12: "PTR"
        case 16: "TXT"
        case 28: "AAAA"
        case 33: "SRV"
        case 47: "NSEC"
        case 255: "ANY"
        default: "TYPE\(rawValue)"
        }
    }
}

/// The class IN; mDNS uses the class field's top bit as a flag (RFC 6762 §10.2, §5.4).
public enum DNSClass {
    public static let internet: UInt16 = 1
    /// In questions only: every class.
    public static let any: UInt16 = 255
}

/// A record's data. Types this module does not interpret are kept as opaque bytes.
public enum DNSRecordData: Hashable, Sendable {
    /// An IPv4 address (4 bytes).
    case a([UInt8])
    /// An IPv6 address (16 bytes).
    case aaaa([UInt8])
    case ptr(DNSName)
    case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DNSName)
    /// Character strings, each at most 255 bytes (RFC 6763 §6: `key=value` pairs).
    case txt([[UInt8]])
    /// Any other type, rdata uninterpreted (names inside it are not decompressed).
    case opaque(type: DNSRecordType, bytes: [UInt8])

    public var type: DNSRecordType {
        switch self {
        case .a: .a
        case .aaaa: .aaaa
        case .ptr: .ptr
        case .srv: .srv
        case .txt: .txt
        case .opaque(let type, _): type
        }
    }
}

/// A question (RFC 1035 §4.1.2).
public struct DNSQuestion: Hashable, Sendable {
    public var name: DNSName
    public var type: DNSRecordType
    /// The class without the top bit.
    public var recordClass: UInt16
    /// mDNS "QU": the querier prefers a unicast reply (the class field's top bit).
    public var unicastResponse: Bool

    public init(name: DNSName, type: DNSRecordType, recordClass: UInt16 = DNSClass.internet, unicastResponse: Bool = false) {
        self.name = name
        self.type = type
        self.recordClass = recordClass & 0x7FFF
        self.unicastResponse = unicastResponse
    }
}

/// A resource record (RFC 1035 §4.1.3).
public struct DNSResourceRecord: Hashable, Sendable {
    public var name: DNSName
    public var data: DNSRecordData
    /// The class without the top bit.
    public var recordClass: UInt16
    /// mDNS cache-flush: this record replaces others of its name and type (the class's top bit).
    public var cacheFlush: Bool
    /// Seconds; 0 in mDNS means goodbye.
    public var ttl: UInt32

    public init(name: DNSName, data: DNSRecordData, ttl: UInt32, cacheFlush: Bool = false, recordClass: UInt16 = DNSClass.internet) {
        self.name = name
        self.data = data
        self.recordClass = recordClass & 0x7FFF
        self.cacheFlush = cacheFlush
        self.ttl = ttl
    }

    public var type: DNSRecordType { data.type }
}

/// A DNS message (RFC 1035 §4.1).
public struct DNSMessage: Hashable, Sendable {
    public var id: UInt16
    /// The header's second 16-bit word (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    public var flags: UInt16
    public var questions: [DNSQuestion]
    public var answers: [DNSResourceRecord]
    public var authorities: [DNSResourceRecord]
    public var additionals: [DNSResourceRecord]

    public init(id: UInt16 = 0, flags: UInt16 = 0, questions: [DNSQuestion] = [], answers: [DNSResourceRecord] = [],
                authorities: [DNSResourceRecord] = [], additionals: [DNSResourceRecord] = []) {
        self.id = id
        self.flags = flags
        self.questions = questions
        self.answers = answers
        self.authorities = authorities
        self.additionals = additionals
    }

    /// QR: a response rather than a query.
    public static let responseFlag: UInt16 = 0x8000
    /// AA: authoritative answer (every mDNS response sets it).
    public static let authoritativeFlag: UInt16 = 0x0400
    /// TC: truncated.
    public static let truncatedFlag: UInt16 = 0x0200

    public var isResponse: Bool { flags & Self.responseFlag != 0 }
    public var isTruncated: Bool { flags & Self.truncatedFlag != 0 }
    /// The 4-bit opcode (0 is a standard query).
    public var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    /// The 4-bit response code.
    public var responseCode: UInt8 { UInt8(flags & 0xF) }

    /// The fixed header's size.
    public static let headerSize = 12
}

/// Why a DNS message could not be decoded or encoded. Offsets are byte offsets in the packet.
public enum DNSError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Fewer than 12 bytes.
    case truncatedHeader(length: Int)
    /// The header declares more questions and records than the packet could hold even at their
    /// smallest (5 bytes a question, 11 a record).
    case tooManyRecords(declared: Int, packetSize: Int)
    /// A name runs past the end of the packet.
    case truncatedName(offset: Int)
    /// A label length byte above 63 (the 0x40 and 0x80 prefixes), or a label to encode that long.
    case labelTooLong(offset: Int, length: Int)
    /// A name longer than 255 bytes in wire form (decompressed).
    case nameTooLong(offset: Int)
    /// A compression pointer to itself or to a later offset.
    case forwardPointer(offset: Int, target: Int)
    /// A compression pointer back into the part of the name already read: following it would loop.
    case pointerLoop(offset: Int, target: Int)
    /// A question's type and class run past the end.
    case truncatedQuestion(offset: Int)
    /// A record's fixed fields (type, class, TTL, length) run past the end.
    case truncatedRecord(offset: Int)
    /// A record's data runs past the end of the packet.
    case truncatedRecordData(offset: Int, length: Int)
    /// A record's data does not fit its type (wrong address length, a name or string that
    /// overruns or underruns the data length).
    case malformedRecordData(type: DNSRecordType, offset: Int)
    /// Bytes left after the last record.
    case trailingBytes(offset: Int)
    /// Encoding: a TXT string over 255 bytes, record data over 65535 bytes, an address of the
    /// wrong length, or more than 65535 entries in a section.
    case unencodable(String)

    public var description: String {
        switch self {
        case .truncatedHeader(let length): "DNS header truncated (\(length) bytes)"
        case .tooManyRecords(let declared, let size): "\(declared) questions and records cannot fit in \(size) bytes"
        case .truncatedName(let offset): "name at \(offset) truncated"
        case .labelTooLong(let offset, let length): "label at \(offset) is \(length) bytes (at most 63)"
        case .nameTooLong(let offset): "name at \(offset) exceeds 255 bytes"
        case .forwardPointer(let offset, let target): "compression pointer at \(offset) points forward to \(target)"
        case .pointerLoop(let offset, let target): "compression pointer at \(offset) loops back to \(target)"
        case .truncatedQuestion(let offset): "question at \(offset) truncated"
        case .truncatedRecord(let offset): "record at \(offset) truncated"
        case .truncatedRecordData(let offset, let length): "record data at \(offset) (\(length) bytes) runs past the packet"
        case .malformedRecordData(let type, let offset): "malformed \(type) data at \(offset)"
        case .trailingBytes(let offset): "trailing bytes at \(offset)"
        case .unencodable(let why): "cannot encode: \(why)"
        }
    }
}
