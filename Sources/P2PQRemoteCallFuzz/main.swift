// Fuzz target for the remote-call decoders (P2PQRemoteCall): the messages 0x40–0x46 and the
// call item (the bytes of a call-queue item and of each entry of a direct message).
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files named on the command line (P2PQFuzzSupport.fuzzMain), or, given
// `--write-corpus <dir>`, writes the seed corpus (Fuzz/corpus/rpc).
//
// The first input byte picks what to decode (byte % 8: the seven message types, then a call
// item); the rest is the body. A decoded direct run must also agree with its calls as items,
// and a result run split into runs again must be itself. Besides "no crash", whatever decodes must validate, have an
// exact `bodySize` or `encodedSize`, and survive encode → decode unchanged; a call item's
// encoding must be the very bytes it was decoded from (the format has one encoding per value).

import P2PQFuzzSupport
import P2PQRemoteCall
import P2PQWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

let types: [MessageType] = RemoteCallMessage.messageTypes

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let choice = Int(data[0]) % (types.count + 1)
    let body = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    guard choice < types.count else {
        fuzzCallItem(body)
        return 0
    }
    let type = types[choice]
    guard let message = checkMessageRoundTrip(RemoteCallMessage.self, type: type, body: body) else { return 0 }
    if case .direct(let items) = message {
        for item in items { item.withUnsafeBytes { fuzzCallItem($0) } }
    }
    if case .resultRun(let run) = message {
        let entries = run.entries
        precondition(entries.count == run.outcomes.count, "a result run's entries are not its outcomes")
        let (runs, singles) = ResultRun.split(entries)
        precondition(singles.isEmpty && runs.flatMap(\.entries) == entries || entries.count == 1,
                     "a result run split again is not itself")
    }
    if case .directRun(let run) = message {
        let items = run.items()
        precondition(items.count == run.count, "a run's items are not its count")
        var rebuilt = CallRun(caller: run.caller, firstSequence: run.firstSequence, attempt: run.attempt,
                              function: run.function, memoize: run.memoize, deadline: run.deadline)
        for item in items {
            precondition(item.id == run.id(at: Int(item.id.sequence &- run.firstSequence)), "a run's item has a stray ID")
            rebuilt.append(arguments: item.arguments)
        }
        precondition(rebuilt == run, "a run rebuilt from its items differs")
    }
    return 0
}

func fuzzCallItem(_ bytes: UnsafeRawBufferPointer) {
    let header = CallItem.header(of: Array(bytes))
    let result = Result { () throws(WireError) in try CallItem.decode(bytes, maxArgumentSize: 1 << 20) }
    guard case .success(let item) = result else { return }
    precondition(header == item.id, "header(of:) disagrees with decode")
    precondition(item.encodedSize == bytes.count, "encodedSize of a call item is not exact")
    let encoded: [UInt8]
    switch Result(catching: { () throws(WireError) in try item.encoded() }) {
    case .success(let value): encoded = value
    case .failure(let error): fatalError("a decoded call item does not encode: \(error)")
    }
    precondition(encoded.elementsEqual(bytes), "a call item has a second encoding")
}

/// The seeds: one valid body per message type, and a call item.
func seeds() throws -> [(name: String, bytes: [UInt8])] {
    let caller = PeerID(bytes: [UInt8](repeating: 7, count: 32))!
    let item = try CallItem(id: CallID(caller: caller, sequence: 3), attempt: 2, function: "fib", memoize: true,
                            deadline: 1_700_000_000_000_000_000, arguments: [0, 0, 0, 30]).encoded()
    let messages: [(String, RemoteCallMessage)] = [
        ("results", .results([
            CallResultEntry(sequence: 1, outcome: .success([1, 2])),
            CallResultEntry(sequence: 2, outcome: .thrown(typeName: "E", description: "d")),
            CallResultEntry(sequence: 3, outcome: .unknownFunction),
            CallResultEntry(sequence: 4, outcome: .badArguments("b")),
            CallResultEntry(sequence: 5, outcome: .malformedCall("m")),
        ])),
        ("started", .started([CallStartedEntry(sequence: 9, attempt: 1)])),
        ("cancel", .cancel([1, 2])),
        ("direct", .direct([item])),
        ("credit", .credit(16)),
        ("direct-run", .directRun(CallRun(caller: caller, firstSequence: 3, attempt: 2, function: "fib", memoize: true,
                                          deadline: 1_700_000_000_000_000_000, arguments: [[0, 0, 0, 30], [], [1]]))),
        ("result-run", .resultRun(ResultRun(firstSequence: 41, outcomes: [
            .success([1, 2]), .thrown(typeName: "E", description: "d"), .unknownFunction, .badArguments("b"),
            .malformedCall("m"), .success([]),
        ]))),
    ]
    var result = try messages.map { name, message in
        var frame: [UInt8] = []
        try message.encode(into: &frame)
        return (name, [UInt8(types.firstIndex(of: message.messageType)!)] + frame.dropFirst(5))
    }
    result.append(("call-item", [UInt8(types.count)] + item))
    return result
}

try writeCorpusIfAsked(seeds)

fuzzMain(name: "P2PQRemoteCallFuzz", fuzz)
