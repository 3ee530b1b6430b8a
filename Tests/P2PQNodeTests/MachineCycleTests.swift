import P2PQQueue
import P2PQWorkloads
import Testing

/// The machine-only benchmark drivers (`p2pq bench queue-machine`, `p2pq bench call-machine`)
/// must run their machines to completion through the wire encoding; they throw if the machines
/// stall, refuse or fail a call.
@Suite("Machine benchmark cycles")
struct MachineCycleTests {
    @Test("The queue cycle delivers every item, both delivery modes", arguments: [DeliveryMode.atLeastOnce, .atMostOnce])
    func queueCycle(delivery: DeliveryMode) throws {
        var configuration = QueueConfiguration()
        configuration.delivery = delivery
        let result = try QueueMachineCycle.run(items: 30_000, payloadSize: 64, batch: 1_000, configuration: configuration)
        #expect(result.items == 30_000)
        // Transfers carry every item once: at least 30,000 x (64 + 4) bytes crossed the wire
        // (a length per item; runs and origins come on top).
        #expect(result.wireBytes >= 30_000 * (64 + QueueWire.itemOverhead))
        #expect(result.messages > 0)
    }

    @Test("The call cycle completes every call, one at a time and in batches", arguments: [1, 16])
    func callCycle(batch: Int) throws {
        let result = try CallMachineCycle.run(calls: 20_000, inFlight: 64, batch: batch)
        #expect(result.calls == 20_000)
        // After the first calls every call goes direct: far fewer messages than calls in batches.
        if batch > 1 { #expect(result.messages < 20_000 / 4) }
    }

    @Test("The task floor runs every task and every hop, on the global executor and on a reactor", arguments: [false, true])
    func taskFloor(onReactor: Bool) async throws {
        let result = try await TaskFloor.run(units: 10_000, inFlight: 64, onReactor: onReactor)
        #expect(result.executor == (onReactor ? "reactor" : "global"))
        #expect(result.tasksRun == 10_000)
        #expect(result.hopsDone == 10_000 / 64 * 64)
        #expect(result.taskMicroseconds.isFinite && result.taskMicroseconds >= 0)
        #expect(result.hopMicroseconds.isFinite && result.hopMicroseconds >= 0)
    }
}
