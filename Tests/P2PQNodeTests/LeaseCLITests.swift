import Foundation
import Glibc
import Testing

@Suite("The p2pq command: leases", .serialized)
struct LeaseCLITests {
    @Test("`p2pq pop --lease` prints tokens; `p2pq ack` and `p2pq nack` settle them; a used token exits 65")
    func leaseCommands() async throws {
        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("p2pq-cli-\(UUID().uuidString).key").path
        defer { unlink(keyFile) }
        #expect(try await runP2PQ(["keygen", keyFile]).status == 0)
        let node = try await CLITests.OperatedNode(keyFile: keyFile, bootstrap: nil)
        defer { kill(node.process.processIdentifier, SIGKILL) }
        let common = [node.operations, "--queue", "w", "--token-file", keyFile]
        #expect(try await runP2PQ(["push"] + common + ["one", "two", "three"]).status == 0)

        let popped = try await runP2PQ(["pop"] + common + ["--max", "3", "--timeout", "2000", "--lease", "30s"])
        #expect(popped.status == 0)
        let lines = popped.output.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        #expect(lines.map { $0.count } == [2, 2, 2], "pop --lease printed: \(popped.output)")
        #expect(lines.map { $0.last ?? "" } == ["one", "two", "three"])
        let tokens = lines.map { $0.first ?? "" }

        let ack = try await runP2PQ(["ack"] + common + [tokens[0]])
        #expect(ack.status == 0 && ack.output.contains("acked 1"), "ack: \(ack.output)")
        #expect(try await runP2PQ(["nack"] + common + [tokens[1]]).status == 0)
        // Acked already: refused (exit 65).
        #expect(try await runP2PQ(["ack"] + common + [tokens[0]]).status == 65)
        // "two" is back in the queue; "three" is still leased.
        let plain = try await runP2PQ(["pop"] + common + ["--max", "5", "--timeout", "300"])
        #expect(plain.output.split(separator: "\n") == ["two"], "pop: \(plain.output)")
        // Bad durations are command-line errors.
        #expect(try await runP2PQ(["pop"] + common + ["--lease", "0s"]).status == 64)
        #expect(try await runP2PQ(["pop"] + common + ["--lease", "13h"]).status == 64)
        #expect(try await runP2PQ(["ack"] + common + ["notanumber"]).status == 64)
    }
}
