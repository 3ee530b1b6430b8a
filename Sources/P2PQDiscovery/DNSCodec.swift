// The DNS wire format (RFC 1035 §4.1) with name compression (§4.1.4), as plain functions over
// byte arrays. The decoder checks every length against the packet before reading, so hostile
// packets end in a DNSError, never a trap.

extension DNSMessage {
    /// Smallest encoded question: the root name and type and class.
    static let minQuestionSize = 5
    /// Smallest encoded record: the root name, the 10 fixed bytes and no data.
    static let minRecordSize = 11

    /// Decodes one message. The whole packet must be the message (no trailing bytes).
    public static func decode(_ packet: [UInt8]) throws(DNSError) -> DNSMessage {
        var reader = DNSReader(bytes: packet)
        return try reader.readMessage()
    }

    /// Decodes one message from raw bytes.
    public static func decode(_ packet: UnsafeRawBufferPointer) throws(DNSError) -> DNSMessage {
        try decode(Array(packet))
    }

    /// The message in wire form.
    ///
    /// - Parameter compress: point repeated name suffixes at their first occurrence (owner
    ///   names and PTR and SRV targets; RFC 6762 §18.14 allows it in SRV data for mDNS).
    public func encoded(compress: Bool = true) throws(DNSError) -> [UInt8] {
        var writer = DNSWriter(compress: compress)
        try writer.write(self)
        return writer.bytes
    }
}

struct DNSReader {
    let bytes: [UInt8]

    mutating func readMessage() throws(DNSError) -> DNSMessage {
        guard bytes.count >= DNSMessage.headerSize else { throw .truncatedHeader(length: bytes.count) }
        let id = u16(0)
        let flags = u16(2)
        let counts = (Int(u16(4)), Int(u16(6)), Int(u16(8)), Int(u16(10)))
        // Refuse up front what cannot fit, so a 12-byte packet cannot make us reserve 4 x 65535 slots.
        let least = counts.0 * DNSMessage.minQuestionSize
            + (counts.1 + counts.2 + counts.3) * DNSMessage.minRecordSize
        guard least <= bytes.count - DNSMessage.headerSize else {
            throw .tooManyRecords(declared: counts.0 + counts.1 + counts.2 + counts.3, packetSize: bytes.count)
        }
        var offset = DNSMessage.headerSize
        var message = DNSMessage(id: id, flags: flags)
        message.questions.reserveCapacity(counts.0)
        for _ in 0..<counts.0 { message.questions.append(try readQuestion(&offset)) }
        message.answers = try readRecords(counts.1, &offset)
        message.authorities = try readRecords(counts.2, &offset)
        message.additionals = try readRecords(counts.3, &offset)
        guard offset == bytes.count else { throw .trailingBytes(offset: offset) }
        return message
    }

    private func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }

    private func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) << 16 | UInt32(u16(at + 2)) }

    private func readQuestion(_ offset: inout Int) throws(DNSError) -> DNSQuestion {
        let start = offset
        let (name, end) = try readName(at: offset)
        guard end + 4 <= bytes.count else { throw .truncatedQuestion(offset: start) }
        let rawClass = u16(end + 2)
        offset = end + 4
        return DNSQuestion(name: name, type: DNSRecordType(u16(end)), recordClass: rawClass & 0x7FFF,
                           unicastResponse: rawClass & 0x8000 != 0)
    }

    private func readRecords(_ count: Int, _ offset: inout Int) throws(DNSError) -> [DNSResourceRecord] {
        var records: [DNSResourceRecord] = []
        records.reserveCapacity(count)
        for _ in 0..<count { records.append(try readRecord(&offset)) }
        return records
    }

    private func readRecord(_ offset: inout Int) throws(DNSError) -> DNSResourceRecord {
        let start = offset
        let (name, fixed) = try readName(at: offset)
        guard fixed + 10 <= bytes.count else { throw .truncatedRecord(offset: start) }
        let type = DNSRecordType(u16(fixed))
        let rawClass = u16(fixed + 2)
        let ttl = u32(fixed + 4)
        let length = Int(u16(fixed + 8))
        let dataStart = fixed + 10
        guard dataStart + length <= bytes.count else { throw .truncatedRecordData(offset: dataStart, length: length) }
        let data = try readData(type: type, at: dataStart, length: length)
        offset = dataStart + length
        return DNSResourceRecord(name: name, data: data, ttl: ttl, cacheFlush: rawClass & 0x8000 != 0,
                                 recordClass: rawClass & 0x7FFF)
    }

    private func readData(type: DNSRecordType, at start: Int, length: Int) throws(DNSError) -> DNSRecordData {
        let end = start + length
        let malformed = DNSError.malformedRecordData(type: type, offset: start)
        switch type {
        case .a:
            guard length == 4 else { throw malformed }
            return .a(Array(bytes[start..<end]))
        case .aaaa:
            guard length == 16 else { throw malformed }
            return .aaaa(Array(bytes[start..<end]))
        case .ptr:
            guard length > 0 else { throw malformed }
            let (target, nameEnd) = try readName(at: start)
            guard nameEnd == end else { throw malformed }
            return .ptr(target)
        case .srv:
            guard length >= 7 else { throw malformed }
            let (target, nameEnd) = try readName(at: start + 6)
            guard nameEnd == end else { throw malformed }
            return .srv(priority: u16(start), weight: u16(start + 2), port: u16(start + 4), target: target)
        case .txt:
            var strings: [[UInt8]] = []
            var at = start
            while at < end {
                let count = Int(bytes[at])
                guard at + 1 + count <= end else { throw malformed }
                strings.append(Array(bytes[at + 1..<at + 1 + count]))
                at += 1 + count
            }
            return .txt(strings)
        default:
            return .opaque(type: type, bytes: Array(bytes[start..<end]))
        }
    }

    /// Reads a possibly compressed name; returns it and the offset just past it where it
    /// started (past its first pointer, if it has one).
    ///
    /// Every pointer must lead strictly before the start of the run of labels that contains it:
    /// compressors only point back at names already written, and the rule makes each jump land
    /// lower than the last, so no packet can make this loop.
    func readName(at start: Int) throws(DNSError) -> (DNSName, Int) {
        var labels: [[UInt8]] = []
        var position = start
        var runStart = start
        var end: Int?
        var wireLength = 1
        while true {
            guard position < bytes.count else { throw .truncatedName(offset: start) }
            let length = Int(bytes[position])
            switch length & 0xC0 {
            case 0xC0:
                guard position + 1 < bytes.count else { throw .truncatedName(offset: start) }
                let target = (length & 0x3F) << 8 | Int(bytes[position + 1])
                if target >= position { throw .forwardPointer(offset: position, target: target) }
                if target >= runStart { throw .pointerLoop(offset: position, target: target) }
                if end == nil { end = position + 2 }
                position = target
                runStart = target
            case 0x00:
                if length == 0 { return (DNSName(labels: labels), end ?? position + 1) }
                guard position + 1 + length <= bytes.count else { throw .truncatedName(offset: start) }
                wireLength += 1 + length
                guard wireLength <= DNSName.maxWireLength else { throw .nameTooLong(offset: start) }
                labels.append(Array(bytes[position + 1..<position + 1 + length]))
                position += 1 + length
            default:
                throw .labelTooLong(offset: position, length: length)
            }
        }
    }
}

struct DNSWriter {
    let compress: Bool
    var bytes: [UInt8] = []
    /// Where each name suffix written so far starts (only offsets a pointer can hold).
    private var suffixes: [DNSName: Int] = [:]

    init(compress: Bool) {
        self.compress = compress
        bytes.reserveCapacity(512)
    }

    mutating func write(_ message: DNSMessage) throws(DNSError) {
        for section in [message.questions.count, message.answers.count, message.authorities.count, message.additionals.count] {
            guard section <= 0xFFFF else { throw .unencodable("\(section) entries in one section") }
        }
        u16(message.id)
        u16(message.flags)
        u16(UInt16(message.questions.count))
        u16(UInt16(message.answers.count))
        u16(UInt16(message.authorities.count))
        u16(UInt16(message.additionals.count))
        for question in message.questions {
            try name(question.name)
            u16(question.type.rawValue)
            u16(question.recordClass & 0x7FFF | (question.unicastResponse ? 0x8000 : 0))
        }
        for record in message.answers { try write(record) }
        for record in message.authorities { try write(record) }
        for record in message.additionals { try write(record) }
    }

    private mutating func write(_ record: DNSResourceRecord) throws(DNSError) {
        try name(record.name)
        u16(record.type.rawValue)
        u16(record.recordClass & 0x7FFF | (record.cacheFlush ? 0x8000 : 0))
        u16(UInt16(record.ttl >> 16))
        u16(UInt16(record.ttl & 0xFFFF))
        let lengthAt = bytes.count
        u16(0)
        switch record.data {
        case .a(let address):
            guard address.count == 4 else { throw .unencodable("A address of \(address.count) bytes") }
            bytes += address
        case .aaaa(let address):
            guard address.count == 16 else { throw .unencodable("AAAA address of \(address.count) bytes") }
            bytes += address
        case .ptr(let target):
            try name(target)
        case .srv(let priority, let weight, let port, let target):
            u16(priority)
            u16(weight)
            u16(port)
            try name(target)
        case .txt(let strings):
            for string in strings {
                guard string.count <= 255 else { throw .unencodable("TXT string of \(string.count) bytes") }
                bytes.append(UInt8(string.count))
                bytes += string
            }
        case .opaque(_, let data):
            bytes += data
        }
        let length = bytes.count - lengthAt - 2
        guard length <= 0xFFFF else { throw .unencodable("record data of \(length) bytes") }
        bytes[lengthAt] = UInt8(length >> 8)
        bytes[lengthAt + 1] = UInt8(length & 0xFF)
    }

    private mutating func name(_ name: DNSName) throws(DNSError) {
        for label in name.labels {
            guard label.count <= DNSName.maxLabelLength else { throw .labelTooLong(offset: bytes.count, length: label.count) }
            // An empty label would end the name early.
            guard !label.isEmpty else { throw .unencodable("empty label in \(name)") }
        }
        guard name.wireLength <= DNSName.maxWireLength else { throw .nameTooLong(offset: bytes.count) }
        for index in name.labels.indices {
            let suffix = DNSName(labels: Array(name.labels[index...]))
            if compress, let target = suffixes[suffix] {
                u16(0xC000 | UInt16(target))
                return
            }
            if compress && bytes.count < 0x4000 { suffixes[suffix] = bytes.count }
            bytes.append(UInt8(name.labels[index].count))
            bytes += name.labels[index]
        }
        bytes.append(0)
    }

    private mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xFF))
    }
}
