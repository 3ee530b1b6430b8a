import P2PQConnectionManager
import P2PQQueue
import P2PQRemoteCall
import P2PQNodeMachine
import P2PQWire

extension TraceHash {
    /// Adds a node machine's action: messages as their wire bytes (a description could show a
    /// dictionary, whose order differs between processes), peers as `number(peer)`, only rare
    /// actions as their description. The simulator's traces and the node-machine tests' hashes
    /// both come from here.
    public mutating func add(_ action: NodeAction<String>, number: (PeerID) -> Int) {
        switch action {
        case .dial(let address):
            add(1)
            add(bytes: address.utf8)
        case .sendPing(let link, let nonce):
            add(3)
            add(link.rawValue)
            add(nonce)
        case .sendPeerList(let link, let entries):
            add(4)
            add(link.rawValue)
            for entry in entries {
                add(number(entry.peer))
                add(bytes: entry.address.utf8)
            }
        case .send(let message, let to, let link):
            add(5)
            add(number(to))
            add(link.rawValue)
            if let bytes = try? message.encoded() { add(bytes: bytes) }
        case .armTimer(let timer, let at):
            add(6)
            add(timer)
            add(at)
        case .cancelTimer(let timer):
            add(7)
            add(timer)
        case .peerConnected(let peer, let link):
            add(8)
            add(number(peer))
            add(link.rawValue)
        case .peerMovedLink(let peer):
            add(9)
            add(number(peer))
        case .queue(let name, .send(let message, let to)):
            add(12)
            add(bytes: name.utf8)
            add(number(to))
            var bytes: [UInt8] = []
            if (try? MessageEncoder.encode(message, into: &bytes)) != nil { add(bytes: bytes) }
        case .queue(let name, .armTimer(let at)):
            add(13)
            add(bytes: name.utf8)
            add(at)
        case .sendCall(let message, let to):
            add(14)
            add(number(to))
            if let bytes = try? message.encoded() { add(bytes: bytes) }
        case .completeCalls(let ended):
            add(15)
            for call in ended {
                add(call.token)
                switch call.result {
                case .success(let bytes): add(bytes: bytes)
                case .failure(let error): add(bytes: "\(error)".utf8)
                }
            }
        case .runTasks(let tasks):
            add(16)
            for task in tasks {
                add(task.id.rawValue)
                add(task.call.sequence)
                add(bytes: task.arguments)
            }
        case .closeLink, .peerDisconnected, .member, .queue, .deadLettered,
             .cancelTask, .callItemDiscarded, .flushCallsAtEndOfTurn,
             .admitLink, .sendLinkMessage, .closeConnection, .linkNote, .linkReady, .dialFailedNote, .admissionReport:
            add(bytes: "\(action)".utf8)
        }
    }

    /// Adds a node machine's timer.
    public mutating func add(_ timer: NodeTimer) {
        switch timer {
        case .connections: add(0)
        case .membership: add(1)
        case .queue(let name):
            add(2)
            add(bytes: name.utf8)
        case .calls: add(3)
        case .link(let link):
            add(4)
            add(link.rawValue)
        case .admission: add(5)
        }
    }
}
