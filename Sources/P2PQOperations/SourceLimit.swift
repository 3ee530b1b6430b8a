import NIOCore
import Synchronization

/// Open connections per source address, shared by the endpoint's event loops.
final class SourceConnectionCounts: Sendable {
    let limit: Int
    private let open = Mutex<[String: Int]>([:])

    init(limit: Int) {
        self.limit = limit
    }

    /// Takes a slot for `source`; false when it has `limit` connections open already.
    func admit(_ source: String) -> Bool {
        open.withLock { open in
            let count = open[source, default: 0]
            guard count < limit else { return false }
            open[source] = count + 1
            return true
        }
    }

    func release(_ source: String) {
        open.withLock { open in
            guard let count = open[source] else { return }
            open[source] = count > 1 ? count - 1 : nil
        }
    }
}

/// Closes a new connection whose source address already has its share of the endpoint's
/// connections open: without it, idle or slow connections from one client could take all of
/// them, and real clients would wait for the idle timeout to free one.
final class SourceLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let counts: SourceConnectionCounts
    private let refusals: RefusalLog
    private var admitted: String?

    init(counts: SourceConnectionCounts, refusals: RefusalLog) {
        self.counts = counts
        self.refusals = refusals
    }

    func channelActive(context: ChannelHandlerContext) {
        let source = context.channel.remoteAddress?.ipAddress ?? "unknown"
        guard counts.admit(source) else {
            refusals.note("closed a connection from \(source): it has \(counts.limit) open already")
            context.close(promise: nil)
            return
        }
        admitted = source
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let admitted {
            counts.release(admitted)
            self.admitted = nil
        }
        context.fireChannelInactive()
    }
}
