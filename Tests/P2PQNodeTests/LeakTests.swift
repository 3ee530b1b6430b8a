import Foundation
import Glibc
import P2PQLink
import P2PQNode
import Testing

/// Open descriptors of this process.
/// Open descriptors of this process, not counting timerfds: libdispatch opens those lazily
/// (Task.sleep), and nothing in p2pq creates one.
func openDescriptorCount() -> Int {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return fds.filter { fd in
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? ""
        return !target.contains("timerfd")
    }.count
}

/// Threads of this process whose name starts with `prefix` (reactor threads are "p2pq-…"; the process itself is "p2pqueue…").
func threadCount(named prefix: String) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { tid in
        let name = (try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8)) ?? ""
        return name.hasPrefix(prefix)
    }.count
}

/// Starts three meshed nodes, exchanges keepalives for a moment, stops them all.
func runMeshOnce() async throws {
    let key = ClusterKey.generate()
    let first = try Node(configuration: testConfiguration(key: key))
    let info = try await first.start()
    var nodes = [first]
    for _ in 0..<2 {
        let node = try Node(configuration: testConfiguration(key: key, bootstrap: ["\(info.listenAddress)"]))
        try await node.start()
        nodes.append(node)
    }
    try await eventually("a mesh of three") {
        for node in nodes where await node.connectedPeers().count != 2 { return false }
        return true
    }
    for node in nodes { await node.stop() }
}

@Suite("Node resources")
struct LeakTests {
    // Run in a child process (an exit test), where nothing else opens descriptors meanwhile.
    @Test("Stopping nodes leaks no descriptor and no thread")
    func noLeaks() async {
        await #expect(processExitsWith: .success) {
            try await runMeshOnce()  // warm-up: runtime and logging set themselves up lazily
            let descriptors = openDescriptorCount()
            let threads = threadCount(named: "p2pq-")
            for _ in 0..<3 { try await runMeshOnce() }
            let leakedDescriptors = openDescriptorCount() - descriptors
            let leakedThreads = threadCount(named: "p2pq-") - threads
            if leakedDescriptors != 0 || leakedThreads != 0 || threads != 0 {
                print("leaked \(leakedDescriptors) descriptors, \(leakedThreads) threads (\(threads) before)")
                exit(1)
            }
        }
    }
}
