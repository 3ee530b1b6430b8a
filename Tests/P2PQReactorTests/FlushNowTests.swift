import Glibc
import Testing
@testable import P2PQReactor

/// `TCPConnection.flushNow`: bytes leave before the turn that wrote them ends.
@Suite("Writing before the end of a turn")
struct FlushNowTests {
    @Test("With epoll, flushNow writes at once: the peer reads the bytes while the turn still runs")
    func flushNowWritesBeforeTheTurnEnds() async throws {
        try await withReactor(.epoll) { reactor in
            let (listenFD, address) = try RawSocket.listen(backlog: 4)
            defer { close(listenFD) }
            let active = Promise<Bool>()
            final class Quiet: TCPConnectionHandler {
                let active: Promise<Bool>
                init(active: Promise<Bool>) { self.active = active }
                func connectionDidBecomeActive(_ connection: TCPConnection) { active.fulfill(true) }
                func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
            }
            let connection = try await onLoop(reactor) {
                ReactorBound(try reactor.connect(to: address, handler: Quiet(active: active)), reactor: reactor)
            }
            let accepted = try await onThread("accept") { try? RawSocket.accept(listenFD) }
            let fd = try #require(accepted)
            defer { close(fd) }
            _ = try await active.value(within: .seconds(10), "the connection to become active")
            // Within one closure on the loop: write, flush now, and look at the peer's socket
            // before returning (without flushNow nothing is written until the turn's end).
            let (early, late) = try await onLoop(reactor) { () -> (Bool, Bool) in
                connection.value.write([UInt8](repeating: 7, count: 1000))
                let beforeFlush = RawSocket.wait(fd, for: Int16(POLLIN), timeoutMilliseconds: 50)
                connection.value.flushNow()
                let afterFlush = RawSocket.wait(fd, for: Int16(POLLIN), timeoutMilliseconds: 2000)
                return (beforeFlush, afterFlush)
            }
            #expect(early == false)
            #expect(late == true)
            #expect(try await onThread("read") { RawSocket.read(fd, upTo: 1000, idleTimeoutMilliseconds: 2000) } == 1000)
        }
    }
}
