import P2PQConnectionManager
import P2PQNodeMachine
import P2PQWire
import Testing

/// ``LinkMachine``: the hello, ping and goodbye stages of a link, as a plain value.
@Suite struct LinkProtocolTests {
    let me = PeerID(bytes: [UInt8](repeating: 1, count: 32))!
    let peer = PeerID(bytes: [UInt8](repeating: 2, count: 32))!
    let impostor = PeerID(bytes: [UInt8](repeating: 3, count: 32))!
    let timeout: UInt64 = 5_000_000_000

    func makeLink() -> LinkMachine {
        LinkMachine(local: .init(peerID: me, listenHost: "10.0.0.1", listenPort: 7000, incarnation: 11, features: 6),
                     handshakeTimeout: timeout, timeoutDescription: "5 seconds", keepaliveTimeoutDescription: "30 seconds")
    }

    /// Feeds a link message the way the session hands it over: its type and body.
    func receive(_ message: LinkMessage, on link: inout LinkMachine, now: UInt64) -> LinkReceipt {
        var framed: [UInt8] = []
        try! message.encode(into: &framed)
        let body = Array(framed.dropFirst(5))
        return body.withUnsafeBytes { link.received(message.messageType, $0, now: now) }
    }

    func hello(from id: PeerID, version: UInt16 = WireProtocol.version, host: String = "", port: UInt16 = 7001) -> LinkMessage {
        .hello(Hello(protocolVersion: version, peerID: id, listenPort: port, listenHost: host, incarnation: 99, features: 4))
    }

    /// A link past the handshake and both hellos.
    func readyLink() -> LinkMachine {
        var link = makeLink()
        _ = link.opened(now: 0)
        _ = link.established(peer: peer, version: WireProtocol.version, remoteHost: "10.0.0.2", now: 1)
        _ = receive(hello(from: peer), on: &link, now: 2)
        return link
    }

    @Test func theHandshakeSendsOurHelloAndTheRightHelloMakesTheLinkReady() {
        var link = makeLink()
        #expect(link.opened(now: 100) == [.armTimer(at: 100 + timeout)])
        #expect(!link.canSend)
        #expect(link.established(peer: peer, version: WireProtocol.version, remoteHost: "10.0.0.2", now: 200) == [
            .send(.hello(Hello(protocolVersion: WireProtocol.version, peerID: me, listenPort: 7000, listenHost: "10.0.0.1",
                               incarnation: 11, features: 6))),
        ])
        #expect(link.stage == .awaitingHello && link.canSend)
        // No host in the hello: the peer listens on the host this connection is with.
        let facts = LinkMachine.RemoteHello(peerID: peer, version: WireProtocol.version, incarnation: 99, features: 4,
                                             listenHost: "10.0.0.2", listenPort: 7001)
        #expect(receive(hello(from: peer), on: &link, now: 300) == .handled([.cancelTimer, .up(facts)]))
        #expect(link.stage == .ready && link.remote == facts)
    }

    @Test func aHelloClaimingAnotherPeerIDClosesTheLink() {
        var link = makeLink()
        _ = link.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
        #expect(receive(hello(from: impostor), on: &link, now: 2) == .handled([.close(.failed(duringHandshake: false))]))
        #expect(link.closeReason?.contains("does not match its static key") == true)
        #expect(link.stage == .awaitingHello && link.remote == nil)
    }

    @Test func anythingButAHelloFirstOrAHelloOfAnotherVersionClosesTheLink() {
        var link = makeLink()
        _ = link.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
        #expect(receive(.ping(nonce: 1, sentAt: 1), on: &link, now: 2) == .handled([.close(.failed(duringHandshake: false))]))
        #expect(link.closeReason == "expected hello, got ping")

        if let other = WireProtocol.supportedVersions.first(where: { $0 != WireProtocol.version }) {
            var link = makeLink()
            _ = link.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
            #expect(receive(hello(from: peer, version: other), on: &link, now: 2) == .handled([.close(.failed(duringHandshake: false))]))
            #expect(link.remote == nil)
        }
    }

    @Test func theHandshakeDeadlineClosesOnlyALinkNotYetReady() {
        var handshaking = makeLink()
        _ = handshaking.opened(now: 0)
        #expect(handshaking.tick(now: timeout) == [.close(.failed(duringHandshake: true))])
        #expect(handshaking.closeReason == "no handshake within 5 seconds")

        var waiting = makeLink()
        _ = waiting.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
        #expect(waiting.tick(now: timeout) == [.close(.failed(duringHandshake: false))])

        var ready = readyLink()
        #expect(ready.tick(now: timeout).isEmpty)
        #expect(ready.closeReason == nil)
    }

    @Test func pingsAreAnsweredAndOurPongsMeasureTheRoundTrip() {
        var link = readyLink()
        #expect(receive(.ping(nonce: 5, sentAt: 77), on: &link, now: 1_000) == .handled([.heard, .send(.pong(nonce: 5, sentAt: 77))]))
        #expect(link.ping(nonce: 9, now: 2_000) == [.send(.ping(nonce: 9, sentAt: 2_000))])
        // A pong for another ping is heard but measures nothing.
        #expect(receive(.pong(nonce: 8, sentAt: 1_500), on: &link, now: 2_100) == .handled([.heard]))
        #expect(link.lastRoundTrip == 0)
        #expect(receive(.pong(nonce: 9, sentAt: 2_000), on: &link, now: 2_350) == .handled([.heard]))
        #expect(link.lastRoundTrip == 350)
    }

    @Test func noPingBeforeOurHello() {
        var link = makeLink()
        #expect(link.ping(nonce: 1, now: 1).isEmpty)
    }

    @Test func upperLayerMessagesPassOnlyOnAReadyLink() {
        var link = makeLink()
        _ = link.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
        let body: [UInt8] = [1, 2, 3]
        let early = body.withUnsafeBytes { link.received(.queueStats, $0, now: 2) }
        #expect(early == .handled([.close(.failed(duringHandshake: false))]))
        var ready = readyLink()
        #expect(body.withUnsafeBytes { ready.received(.queueStats, $0, now: 3) } == .deliver)
    }

    @Test func aSecondHelloClosesTheLink() {
        var link = readyLink()
        #expect(receive(hello(from: peer), on: &link, now: 3) == .handled([.heard, .close(.failed(duringHandshake: false))]))
        #expect(link.closeReason == "a second hello")
    }

    @Test func thePeersGoodbyeClosesTheLinkAndTellsWhetherItLeft() {
        var leaving = readyLink()
        #expect(receive(.goodbye(reason: .shuttingDown, detail: "bye"), on: &leaving, now: 3) == .handled([.heard, .close(.peerSaidGoodbye)]))
        #expect(leaving.peerLeft)
        #expect(leaving.closeReason == "peer said goodbye (shuttingDown): bye")

        #expect(!leaving.peerClosed)

        // A refusal and a duplicate's goodbye: the peer closed the link but is alive.
        var duplicate = readyLink()
        _ = receive(.goodbye(reason: .duplicateLink, detail: "dup"), on: &duplicate, now: 3)
        #expect(!duplicate.peerLeft && duplicate.peerClosed)
        var refused = readyLink()
        _ = receive(.goodbye(reason: .protocolError, detail: "too many peers"), on: &refused, now: 3)
        #expect(!refused.peerLeft && refused.peerClosed)
    }

    @Test func ourGoodbyeIsSentWhenThereIsASessionToSayIt() {
        var ready = readyLink()
        #expect(ready.leave(.leaving, detail: "node stopping") == [
            .send(.goodbye(reason: .leaving, detail: "node stopping")), .close(.afterGoodbye),
        ])
        #expect(ready.closeReason == "goodbye (leaving): node stopping")

        var handshaking = makeLink()
        #expect(handshaking.leave(.leaving, detail: "x") == [.close(.afterFlush)])

        #expect(ready.closed(.other, description: "closed locally", outbound: true).previous == .ready)
        #expect(ready.leave(.leaving, detail: "again").isEmpty)
        #expect(ready.fail("late").isEmpty)
        #expect(ready.closeReason == "goodbye (leaving): node stopping")
    }

    @Test func operationsAddressesAreCheckedBeforeUse() {
        var link = readyLink()
        #expect(receive(.operations(host: "", port: 9000), on: &link, now: 3) == .handled([.heard]))
        #expect(link.operationsAddress == "10.0.0.2:9000")
        _ = receive(.operations(host: "fe80::1", port: 9001), on: &link, now: 4)
        #expect(link.operationsAddress == "[fe80::1]:9001")
        #expect(receive(.operations(host: "evil/<script>", port: 9002), on: &link, now: 5) == .handled([
            .heard, .note("ignored an operations address with unusable characters"),
        ]))
        #expect(link.operationsAddress == "[fe80::1]:9001")
    }

    @Test func theManagersClosesSayGoodbyeExceptToASilentPeer() {
        var duplicate = readyLink()
        #expect(duplicate.close(.duplicate) == [.send(.goodbye(reason: .duplicateLink, detail: "duplicate link")), .close(.afterGoodbye)])
        var full = readyLink()
        #expect(full.close(.tooManyPeers) == [.send(.goodbye(reason: .protocolError, detail: "too many peers")), .close(.afterGoodbye)])
        var silent = readyLink()
        #expect(silent.close(.keepaliveTimeout) == [.close(.failed(duringHandshake: false))])
        #expect(silent.closeReason == "silent for 30 seconds")
    }

    @Test func aStoppingNodeEndsEachStageItsOwnWay() {
        var ready = readyLink()
        #expect(ready.nodeStopping().isEmpty)  // the connection manager's to close
        var waiting = makeLink()
        _ = waiting.established(peer: peer, version: WireProtocol.version, remoteHost: "h", now: 1)
        #expect(waiting.nodeStopping() == [.send(.goodbye(reason: .leaving, detail: "node stopping")), .close(.afterGoodbye)])
        var handshaking = makeLink()
        #expect(handshaking.nodeStopping() == [.close(.failed(duringHandshake: true))])
    }

    @Test func aCloseInTheHandshakeIsExplained() {
        var refused = makeLink()
        #expect(refused.closed(.peerClosed, description: "closed by peer", outbound: true) == .init(
            previous: .handshaking, reason: "closed by the peer during the handshake (another cluster key or link cipher?)",
            beforeHandshake: true))
        var inbound = makeLink()
        #expect(inbound.closed(.peerClosed, description: "closed by peer", outbound: false).reason == "closed during handshake: closed by peer")
        var dial = makeLink()
        #expect(dial.closed(.connectFailed(error: "refused"), description: "connect failed: refused", outbound: true).reason == "refused")
        // A close decided here keeps its reason.
        var decided = makeLink()
        _ = decided.fail("bad record")
        #expect(decided.closed(.other, description: "closed locally", outbound: true) == .init(
            previous: .handshaking, reason: "bad record", beforeHandshake: false))
        var ready = readyLink()
        #expect(ready.closed(.reset, description: "reset by peer", outbound: true) == .init(
            previous: .ready, reason: "reset by peer", beforeHandshake: false))
        #expect(ready.stage == .closed)
    }
}
