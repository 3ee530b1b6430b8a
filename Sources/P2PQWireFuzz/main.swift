// Fuzz target for the P2PQWire decoders.
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files named on the command line (P2PQFuzzSupport.fuzzMain).
//
// The first input byte picks the chunking and the frame limit; the rest is the stream. Besides
// "no crash", the target checks three properties any correct decoder has:
//  - chunking does not matter: fed whole or in pieces, the decoders produce the same messages
//    and the same error;
//  - decoding is canonical: a body that decodes re-encodes to exactly the same bytes;
//  - encodedSize is exact.

import P2PQFuzzSupport
import P2PQMembership
import P2PQWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a decoder made of a stream: what it delivered, then the error that stopped it.
struct Outcome: Equatable {
    var units: [[UInt8]] = []
    var error: WireError?
}

/// Chunk sizes for one run, derived from the selector byte so a crashing input replays exactly.
struct Chunker {
    /// Tiny, and good enough to scatter split points.
    private var random: SplitMix64
    private let pattern: UInt8

    init(selector: UInt8, length: Int) {
        pattern = selector & 0x0F
        random = SplitMix64(seed: UInt64(selector) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(length))
    }

    private mutating func next() -> UInt64 { random.next() }

    mutating func nextChunk(remaining: Int) -> Int {
        let size: Int
        switch pattern {
        case 0: size = remaining                                // whole
        case 1: size = 1                                        // byte by byte
        case 2: size = 2
        case 3: size = 5                                        // exactly a message header
        case 4...9: size = 1 + Int(next() % 16)                 // small, header-splitting
        default: size = 1 + Int(next() % 512)                   // larger, body-splitting
        }
        return Swift.min(Swift.max(size, 1), remaining)
    }
}

enum FuzzLimits {
    static let frameSizes = [512, 1024, 4096, WireProtocol.defaultMaxFrameSize]
}

func feedRecords(_ stream: UnsafeRawBufferPointer, chunker: Chunker?) -> Outcome {
    var decoder = RecordDecoder()
    var outcome = Outcome()
    var chunker = chunker
    var offset = 0
    do throws(WireError) {
        repeat {
            let size = chunker?.nextChunk(remaining: stream.count - offset) ?? stream.count - offset
            try decoder.feed(UnsafeRawBufferPointer(rebasing: stream[offset..<offset + size])) { body in
                outcome.units.append(Array(body))
            }
            offset += size
        } while offset < stream.count
    } catch {
        outcome.error = error
        // A failed decoder stays failed.
        do throws(WireError) {
            try decoder.feed(UnsafeRawBufferPointer(rebasing: stream[0..<0])) { _ in }
            fatalError("RecordDecoder accepted input after failing with \(error)")
        } catch {
            precondition(error == outcome.error, "RecordDecoder changed its error")
        }
    }
    return outcome
}

func feedMessages(_ chunks: [UnsafeRawBufferPointer], maxFrameSize: Int) -> Outcome {
    var decoder = try! MessageDecoder(maxFrameSize: maxFrameSize)
    var outcome = Outcome()
    do throws(WireError) {
        for chunk in chunks {
            try decoder.feed(chunk) { type, body in
                precondition(body.count < maxFrameSize, "body over the frame limit")
                outcome.units.append([type.rawValue] + Array(body))
                checkLinkMessage(type: type, body: body)
                checkMembershipMessage(type: type, body: body)
            }
        }
    } catch {
        outcome.error = error
    }
    return outcome
}

/// Decodes a body as a link message; if it decodes, it must re-encode to the same bytes.
func checkLinkMessage(type: MessageType, body: UnsafeRawBufferPointer) {
    guard let message = try? LinkMessage.decode(type: type, body: body) else { return }
    precondition(message.messageType == type)
    let size: Int
    do throws(WireError) {
        size = try MessageEncoder.encodedSize(of: message)
    } catch {
        fatalError("decoded \(message) does not validate: \(error)")
    }
    let encoded = try! message.encoded()
    precondition(encoded.count == size, "encodedSize \(size) != \(encoded.count)")
    precondition(encoded.dropFirst(WireProtocol.messageHeaderSize).elementsEqual(body), "re-encoding differs")
}

/// Decodes a body as a membership message; if it decodes, it must re-encode to the same bytes.
func checkMembershipMessage(type: MessageType, body: UnsafeRawBufferPointer) {
    guard MessageType.membershipRange.contains(type.rawValue),
          let message = try? MembershipMessage.decode(type: type, body: body) else { return }
    precondition(message.messageType == type)
    guard let encoded = try? message.encoded() else { fatalError("decoded \(message) does not re-encode") }
    precondition(encoded.count == WireProtocol.messageHeaderSize + message.bodySize, "bodySize is wrong")
    precondition(encoded.dropFirst(WireProtocol.messageHeaderSize).elementsEqual(body), "re-encoding differs")
}

func split(_ stream: UnsafeRawBufferPointer, _ chunker: Chunker) -> [UnsafeRawBufferPointer] {
    var chunker = chunker
    var chunks: [UnsafeRawBufferPointer] = []
    var offset = 0
    while offset < stream.count {
        let size = chunker.nextChunk(remaining: stream.count - offset)
        chunks.append(UnsafeRawBufferPointer(rebasing: stream[offset..<offset + size]))
        offset += size
    }
    return chunks
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let selector = input[0]
    let stream = UnsafeRawBufferPointer(rebasing: input[1...])
    let maxFrameSize = FuzzLimits.frameSizes[Int(selector >> 4) % FuzzLimits.frameSizes.count]
    let chunker = Chunker(selector: selector, length: stream.count)

    // 1. The stream as plaintext messages: whole vs chunked must agree.
    let whole = feedMessages([stream], maxFrameSize: maxFrameSize)
    let chunked = feedMessages(split(stream, chunker), maxFrameSize: maxFrameSize)
    precondition(whole == chunked, "MessageDecoder depends on chunking")

    // 2. The stream as records: whole vs chunked must agree; then the record bodies, as
    //    insecure-mode plaintext, go through a message decoder one record at a time.
    let records = feedRecords(stream, chunker: nil)
    precondition(records == feedRecords(stream, chunker: chunker), "RecordDecoder depends on chunking")
    for body in records.units { precondition(!body.isEmpty && body.count <= WireProtocol.maxRecordBodySize) }
    let plaintext = Array(records.units.joined())
    plaintext.withUnsafeBytes { whole in
        var views: [UnsafeRawBufferPointer] = []
        var offset = 0
        for body in records.units {
            views.append(UnsafeRawBufferPointer(rebasing: whole[offset..<offset + body.count]))
            offset += body.count
        }
        let perRecord = feedMessages(views, maxFrameSize: maxFrameSize)
        precondition(perRecord == feedMessages([whole], maxFrameSize: maxFrameSize), "message decoding depends on record boundaries")
    }
    return 0
}

fuzzMain(name: "P2PQWireFuzz", fuzz)
