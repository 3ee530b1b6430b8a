import Testing
import P2PQWire
@testable import P2PQRemoteCall

/// A caller accepts results only from peers that announced the call (docs/protocol.md §10):
/// an executor's messages, however they are batched, must always satisfy it.
@Suite struct ResultTrustTests {
    @Test("Every result an executor sends is accepted by the caller: started notices go first, even when results flush early")
    func executorAlwaysAnnouncesFirst() {
        let callerPeer = peer(1), executorPeer = peer(2)
        var c = CallerMachine(localPeer: callerPeer)
        // Small messages: results of 40 bytes fill one after a few entries and go out early.
        var e = ExecutorMachine(configuration: ExecutorConfiguration(maxConcurrentCalls: 64, maxMessageBodySize: 128, grantsCredit: false),
                                localPeer: executorPeer)
        e.register("f")
        _ = e.start()
        var items: [[UInt8]] = []
        var ids: [CallID] = []
        for n in 0..<40 {
            let (id, actions) = c.call(function: n % 5 == 4 ? "unknown" : "f", arguments: [UInt8(n)], now: 0)
            ids.append(id)
            for case .push(_, let bytes) in actions { items.append(bytes) }
        }
        var sent: [(RemoteCallMessage, PeerID)] = []
        let admitted = e.popped(items, wallClock: 0)
        sent += admitted.messages
        let finished = e.finished(admitted.runs.map { ($0.id, CallOutcome.success([UInt8](repeating: 7, count: 40))) })
        sent += finished.messages
        sent += e.flush().messages
        #expect(sent.contains { if case .results = $0.0 { true } else { false } })
        var completed = 0
        for (message, to) in sent where to == callerPeer {
            completed += c.received(message, from: executorPeer, now: 1).completions.count
        }
        #expect(completed == ids.count)
        #expect(c.counters.refusedResults == 0 && c.outstandingCalls == 0)
    }
}
