// Fuzz target for the DNS decoder and the mDNS agent.
//
// Built with -sanitize=fuzzer and -DP2PQ_FUZZ it hands control to libFuzzer; built plainly it
// replays the files named on the command line (P2PQFuzzSupport.fuzzMain).
//
// Besides "no crash", it checks that whatever decodes re-encodes (with and without compression)
// to a message that decodes to the same value, and that the agent survives the packet as a
// query and as a response.

import P2PQDiscovery
import P2PQFuzzSupport
import P2PQWire


let configuration = MDNSConfiguration(
    instanceName: "fuzz", hostName: DNSName("fuzz.local"), servicePort: 7000, addresses: [[127, 0, 0, 1]],
    peerID: "00", clusterIdentifier: "c", protocolVersion: "1"
)

/// A started agent, copied for each input (a value: the copy shares storage until written).
let startedAgent: MDNSMachine = {
    var agent = MDNSMachine(configuration: configuration, randomNumberGenerator: SplitMix64(seed: 1))  // seeded: a crashing input replays exactly
    _ = agent.start(now: 1)
    return agent
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let packet = Array(UnsafeBufferPointer(start: data, count: size))
    guard case .success(let message) = Result(catching: { () throws(DNSError) in try DNSMessage.decode(packet) }) else {
        return 0
    }
    for compress in [true, false] {
        let bytes: [UInt8]
        do throws(DNSError) {
            bytes = try message.encoded(compress: compress)
        } catch {
            fatalError("a decoded message does not encode: \(error)")
        }
        guard let again = try? DNSMessage.decode(bytes) else { fatalError("re-encoded message does not decode") }
        precondition(again == message, "round trip changed the message")
    }
    // The agent drops what does not decode before looking at it: only decodable packets reach it.
    var agent = startedAgent
    _ = agent.received(packet, from: MDNSAddress(bytes: [127, 0, 0, 1], port: 5353), now: 2)
    _ = agent.received(packet, from: MDNSAddress(bytes: [127, 0, 0, 2], port: 4000), now: 3)
    _ = agent.tick(now: 4_000_000_000)
    _ = agent.stop(now: 5_000_000_000)
    return 0
}

fuzzMain(name: "P2PQDNSFuzz", fuzz)
