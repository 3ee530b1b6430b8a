import Glibc
import P2PQRemoteCall
import P2PQWire

/// W2b's two remote-call machines alone, on one thread, without sockets, tasks or queue: a
/// caller machine keeps `inFlight` calls of a 16-byte echo outstanding (made in batches of
/// `batch`), an executor machine runs them inline (the echo is the arguments), and every
/// message between them goes through the wire encoding. The caller's first calls, before it
/// holds credit, reach the executor as if its call queue had handed them over.
///
/// It measures what the machines cost per call, the part of `p2pq bench rpc` that tasks,
/// hand-overs and the link do not explain. Thread CPU time around each side's calls.
public struct CallMachineCycleResult: Sendable {
    public var calls: Int
    public var inFlight: Int
    public var batch: Int
    public var callerSeconds: Double
    public var executorSeconds: Double
    public var messages: Int

    public var callerNanosecondsPerCall: Double { callerSeconds * 1e9 / Double(calls) }
    public var executorNanosecondsPerCall: Double { executorSeconds * 1e9 / Double(calls) }

    public var json: String {
        func f(_ x: Double) -> String { "\((x * 10).rounded() / 10)" }
        return #"{"workload":"call-machine","calls":\#(calls),"in_flight":\#(inFlight),"batch":\#(batch),"#
            + #""caller_ns_per_call":\#(f(callerNanosecondsPerCall)),"executor_ns_per_call":\#(f(executorNanosecondsPerCall)),"#
            + #""messages":\#(messages)}"#
    }
}

public enum CallMachineCycleError: Error, CustomStringConvertible {
    case stalled(completed: Int, of: Int)
    case failed(RemoteCallError)
    case wire(WireError)

    public var description: String {
        switch self {
        case .stalled(let done, let total): "the cycle stalled after \(done) of \(total) calls"
        case .failed(let error): "a call failed: \(error)"
        case .wire(let error): "wire error: \(error)"
        }
    }
}

public enum CallMachineCycle {
    public static func run(calls: Int, inFlight: Int = 256, batch: Int = 1) throws(CallMachineCycleError) -> CallMachineCycleResult {
        let callerID = PeerID(bytes: [UInt8](repeating: 3, count: WireProtocol.peerIDSize))!
        let executorID = PeerID(bytes: [UInt8](repeating: 4, count: WireProtocol.peerIDSize))!
        var caller = CallerMachine(localPeer: callerID, configuration: CallerConfiguration(maxOutstandingCalls: max(1024, inFlight)))
        var executor = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: inFlight), localPeer: executorID)
        executor.register("echo")
        let argument = [UInt8](repeating: 0x42, count: 16)
        let batch = max(1, min(batch, inFlight))
        var callerTime: UInt64 = 0
        var executorTime: UInt64 = 0
        var messages = 0
        var toExecutor: [[UInt8]] = []  // frames
        var toCaller: [[UInt8]] = []
        var queued: [ItemPayload] = []  // pushed items, as the call queue would hand them over
        var outstanding = 0
        var made = 0
        var completed = 0
        var failure: RemoteCallError?
        var now: UInt64 = 1_000_000_000

        func encode(_ message: RemoteCallMessage) throws(CallMachineCycleError) -> [UInt8] {
            var frame: [UInt8] = []
            do { try message.encode(into: &frame) } catch { throw .wire(error) }
            messages += 1
            return frame
        }
        func decode(_ frame: [UInt8]) throws(CallMachineCycleError) -> RemoteCallMessage {
            switch decodeFrame(frame, RemoteCallMessage.decode) {
            case .success(let message): return message
            case .failure(let error): throw .wire(error)
            }
        }
        func performCaller(_ actions: [CallerAction]) throws(CallMachineCycleError) {
            for action in actions {
                switch action {
                case .push(_, let item): queued.append(ItemPayload(item))
                case .send(let message, _): toExecutor.append(try encode(message))
                case .complete(_, let result):
                    outstanding -= 1
                    completed += 1
                    if case .failure(let error) = result, failure == nil { failure = error }
                case .removeFromQueue, .armTimer, .capacityAvailable: break
                }
            }
        }
        func performExecutor(_ actions: [ExecutorAction]) throws(CallMachineCycleError) {
            var pending = actions
            while !pending.isEmpty {
                let current = pending
                pending = []
                for action in current {
                    switch action {
                    case .run(let tasks):
                        // Inline: the echo answers with its arguments at once.
                        pending += executor.finished(tasks.map { ($0.id, CallOutcome.success($0.arguments)) })
                    case .send(let message, _): toCaller.append(try encode(message))
                    case .setDemand, .resume, .cancelTask, .discard: break
                    }
                }
            }
        }

        try timed(&executorTime) { () throws(CallMachineCycleError) in try performExecutor(executor.start()) }
        var idle = 0
        while completed < calls {
            now += 1_000
            var progressed = false
            // The caller tops its calls up to `inFlight`, a batch at a time.
            while outstanding + batch <= inFlight && made < calls {
                let n = min(batch, calls - made)
                try timed(&callerTime) { () throws(CallMachineCycleError) in
                    let requests = [CallerMachine.Request](repeating: CallerMachine.Request(function: "echo", arguments: argument), count: n)
                    let (_, actions) = caller.call(batch: requests, now: now)
                    outstanding += n
                    made += n
                    try performCaller(actions)
                }
                progressed = true
            }
            if !queued.isEmpty {
                let items = queued
                queued = []
                try timed(&executorTime) { () throws(CallMachineCycleError) in
                    try performExecutor(executor.popped(items, wallClock: 0))
                }
                progressed = true
            }
            // Decoding counts on the receiver's side.
            for frame in toExecutor {
                try timed(&executorTime) { () throws(CallMachineCycleError) in
                    let message = try decode(frame)
                    if case .direct(let items) = message {
                        try performExecutor(executor.direct(items, from: callerID, wallClock: 0))
                    } else if case .directRun(let run) = message {
                        try performExecutor(executor.directRun(run, from: callerID, wallClock: 0))
                    } else {
                        try performExecutor(executor.received(message, from: callerID))
                    }
                }
                progressed = true
            }
            toExecutor.removeAll(keepingCapacity: true)
            // End of the executor's turn: results and credit go out in one message per caller.
            try timed(&executorTime) { () throws(CallMachineCycleError) in try performExecutor(executor.flush()) }
            for frame in toCaller {
                try timed(&callerTime) { () throws(CallMachineCycleError) in
                    try performCaller(caller.received(decode(frame), from: executorID, now: now))
                }
                progressed = true
            }
            toCaller.removeAll(keepingCapacity: true)
            if let failure { throw .failed(failure) }
            if progressed {
                idle = 0
            } else {
                idle += 1
                if idle > 3 { throw .stalled(completed: completed, of: calls) }
            }
        }
        return CallMachineCycleResult(
            calls: calls, inFlight: inFlight, batch: batch,
            callerSeconds: Double(callerTime) / 1e9, executorSeconds: Double(executorTime) / 1e9, messages: messages
        )
    }
}
