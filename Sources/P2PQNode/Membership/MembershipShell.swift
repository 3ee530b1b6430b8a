import P2PQMembership
import P2PQNodeMachine
import P2PQReactor
import P2PQWire

/// Runs the node's ``MembershipMachine`` on the reactor thread: feeds it link changes, membership
/// messages and its timer, and carries out its directives (sending over the node's links,
/// emitting ``NodeEvent``s).
final class MembershipShell {
    private unowned let core: NodeCore
    private var membership: MembershipMachine
    /// Directives are carried out one at a time; inputs that arrive meanwhile (a send that
    /// fails and is reported back) queue behind them.
    private lazy var driver = ShellDriver<MembershipAction>(handle: { [unowned self] in self.handle($0) })
    private lazy var timer = ShellTimer(reactor: core.reactor) { [unowned self] in
        self.perform(self.membership.tick(now: self.core.now))
    }

    init(core: NodeCore, configuration: MembershipConfiguration, incarnation: UInt64, seed: UInt64) {
        self.core = core
        membership = MembershipMachine(localPeer: core.identity.peerID, incarnation: incarnation,
                                configuration: configuration, seed: seed)
    }

    func start() {
        perform(membership.start(now: core.now))
    }

    /// A link to `peer` became ready; `incarnation` is from its hello.
    func linkUp(_ peer: PeerID, incarnation: UInt64) {
        perform(membership.linkUp(peer, incarnation: incarnation, now: core.now))
    }

    func linkDown(_ peer: PeerID) {
        perform(membership.linkDown(peer, now: core.now))
    }

    /// Decodes and handles a membership message. Returns the decode error, if any, so the
    /// caller can close the link that sent it.
    func received(_ type: MessageType, _ body: UnsafeRawBufferPointer, from peer: PeerID) -> WireError? {
        let message: MembershipMessage
        do {
            message = try MembershipMessage.decode(type: type, body: body)
        } catch {
            return error
        }
        perform(membership.received(message, from: peer, now: core.now))
        return nil
    }

    /// Tells every live member this node is leaving. Call before the links say goodbye, so
    /// the announcement travels ahead of the goodbye on each link.
    func leave() {
        perform(membership.leave(now: core.now))
        timer.cancel()
    }

    var members: [MemberStatus] { membership.members }
    /// Gossiped updates refused for an absurd incarnation.
    var refusedUpdates: UInt64 { membership.refusedUpdates }

    func state(of peer: PeerID) -> MemberState? { membership.state(of: peer) }

    var localHealth: Int { membership.localHealth }

    private func perform(_ directives: [MembershipAction]) {
        driver.perform(directives)
    }

    private func handle(_ directive: MembershipAction) {
        switch directive {
        case .send(let message, let peer):
            if !core.send(message, to: peer) {
                perform(membership.undeliverable(message, to: peer, now: core.now))
            }
        case .event(let event):
            report(event)
        case .armTimer(let at):
            timer.arm(at: at)
        }
    }

    /// Logs and emits a membership event; the verdicts go to the layers through
    /// ``NodeCore/route(_:)``.
    private func report(_ event: MembershipEvent) {
        switch event {
        case .joined(let peer):
            core.logger.info("member \(peer.short) joined")
            core.emit(.memberJoined(peer))
            core.route(.joined(peer, linked: core.manager.link(to: peer) != nil))
        case .suspect(let peer):
            core.logger.notice("member \(peer.short) suspected (local health \(membership.localHealth))")
            core.emit(.memberSuspected(peer))
        case .alive(let peer):
            core.logger.notice("member \(peer.short) refuted its suspicion")
            core.emit(.memberAlive(peer))
        case .dead(let peer):
            core.logger.warning("member \(peer.short) declared dead")
            core.emit(.memberDead(peer))
            core.route(.dead(peer))
        case .refutedDeath:
            core.logger.warning("this node was declared dead (refuted at incarnation \(membership.incarnation))")
            core.route(.refuted)
        case .left(let peer):
            core.logger.info("member \(peer.short) left")
            core.emit(.memberLeft(peer))
            core.route(.left(peer))
        }
    }
}
