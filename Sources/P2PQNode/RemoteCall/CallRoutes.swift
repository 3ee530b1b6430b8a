import P2PQNodeMachine
import P2PQRemoteCall
import P2PQWire

/// Where each call's result goes, by the token the node machine completes it with (the shell's
/// books; reactor thread only).
///
/// A value, so that a run of results is routed in one mutation: the shell's stored properties
/// would each pay a dynamic exclusivity check per access, per result. Calls of `call` and
/// `call(batch:)` keep their request; calls of pipelined streams keep a plain value (the
/// stream's slot and the call's index), so the window's upkeep copies and destroys no
/// references. Each kind has its own token counter, streams' tokens carrying the top bit: a
/// result looks in one window, and each window stays dense. Windows, no hashing per call.
struct CallRoutes {
    private var requests = SequenceTable<CallRequest>()
    private var streamCalls = SequenceTable<StreamCall>()
    /// Streams with calls waiting, by slot, and how many each has waiting; a slot is reused once
    /// its stream has none.
    private var streams: [(stream: CallPipeline?, waiting: Int)] = []
    private var freeStreamSlots: [Int32] = []
    private var nextRequestToken: UInt64 = 1
    private var nextStreamToken: UInt64 = CallRoutes.streamTokenBit | 1
    /// Results for streams routed since ``takeStreamResults()``: each stream is woken once.
    private var streamResults: [(stream: CallPipeline, results: [CallPipeline.Element])] = []

    private static let streamTokenBit: UInt64 = 1 << 63

    /// A pipelined stream's call waiting for its result.
    private struct StreamCall {
        var slot: Int32
        var index: Int
    }

    /// Names `request` by a new token and keeps where its result goes.
    mutating func register(_ request: CallRequest) -> NodeCallRequest {
        let token = nextRequestToken
        nextRequestToken += 1
        requests.append(token, request)
        return NodeCallRequest(function: request.function, arguments: request.arguments, memoize: request.memoize,
                               timeout: request.timeout.map { UInt64(Swift.max(0, $0.nanosecondsClamped)) },
                               nested: request.nested, token: token)
    }

    /// Names each call of a stream's chunk by a new token and keeps where its result goes.
    mutating func register(_ chunk: StreamCalls, into calls: inout [NodeCallRequest]) {
        let stream = chunk.stream
        let timeout = stream.timeout.map { UInt64(Swift.max(0, $0.nanosecondsClamped)) }
        let slot = self.slot(of: stream, adding: chunk.arguments.count)
        calls.reserveCapacity(calls.count + chunk.arguments.count)
        for (offset, arguments) in chunk.arguments.enumerated() {
            let token = nextStreamToken
            nextStreamToken += 1
            streamCalls.append(token, StreamCall(slot: slot, index: chunk.firstIndex + offset))
            calls.append(NodeCallRequest(function: stream.function, arguments: arguments, memoize: stream.memoize,
                                         timeout: timeout, nested: nil, token: token))
        }
    }

    /// The slot of `stream` (a new one if it has no calls waiting), counting `count` more calls
    /// waiting for it. Few streams are open at once: a short search.
    private mutating func slot(of stream: CallPipeline, adding count: Int) -> Int32 {
        if let slot = streams.firstIndex(where: { $0.stream === stream }) {
            streams[slot].waiting += count
            return Int32(slot)
        }
        if let slot = freeStreamSlots.popLast() {
            streams[Int(slot)] = (stream, count)
            return slot
        }
        streams.append((stream, count))
        return Int32(streams.count - 1)
    }

    /// The tokens of the waiting requests these API tokens name (one scan for all of them).
    func tokens(ofRequests apiTokens: Set<UInt64>) -> Set<UInt64> {
        Set(requests.sequences(where: { apiTokens.contains($0.token) }))
    }

    /// The tokens of `stream`'s calls still waiting (one scan).
    func tokens(of stream: CallPipeline) -> Set<UInt64> {
        guard let slot = streams.firstIndex(where: { $0.stream === stream }) else { return [] }
        return Set(streamCalls.sequences(where: { $0.slot == Int32(slot) }))
    }

    /// Routes the results of ended calls: a request's task (or batch) is resumed at once (that
    /// only enqueues it), a stream's result waits in ``takeStreamResults()``. A token not
    /// waiting here is ignored.
    mutating func complete(_ ended: [NodeCallResult]) {
        for call in ended { complete(call.token, call.result) }
    }

    private mutating func complete(_ token: UInt64, _ result: Result<[UInt8], RemoteCallError>) {
        guard token & Self.streamTokenBit != 0 else {
            requests.remove(token)?.completion.resume(result)
            return
        }
        guard let call = streamCalls.remove(token), let stream = streams[Int(call.slot)].stream else { return }
        streams[Int(call.slot)].waiting -= 1
        if streams[Int(call.slot)].waiting == 0 {
            streams[Int(call.slot)].stream = nil
            freeStreamSlots.append(call.slot)
        }
        if let last = streamResults.indices.last, streamResults[last].stream === stream {
            streamResults[last].results.append((call.index, result))
        } else if let at = streamResults.firstIndex(where: { $0.stream === stream }) {
            streamResults[at].results.append((call.index, result))
        } else {
            streamResults.append((stream, [(call.index, result)]))
        }
    }

    /// The streams' results routed since the last take, one entry per stream.
    mutating func takeStreamResults() -> [(stream: CallPipeline, results: [CallPipeline.Element])] {
        guard !streamResults.isEmpty else { return [] }
        defer { streamResults.removeAll(keepingCapacity: true) }
        return streamResults
    }
}
