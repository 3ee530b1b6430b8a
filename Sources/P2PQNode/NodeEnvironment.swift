import Glibc
import P2PQLink
import P2PQReactor
import P2PQWire

/// Everything non-deterministic a node uses, in one value: its clocks, the seed of its random
/// choices, its incarnation and its handshake keys. The machines take what they need from it
/// (time as `now`, randomness as a generator of their own) and read nothing else, so a test or
/// a simulation that passes its own environment (``NodeConfiguration/environment``) replays a
/// node's decisions.
public struct NodeEnvironment: Sendable {
    /// Monotonic nanoseconds. The reactor's timers run on `MonotonicTime`, so a node on a
    /// reactor needs that clock, or one that moves with it.
    public var monotonicNanoseconds: @Sendable () -> UInt64
    /// Nanoseconds since the Unix epoch (call deadlines carried to other nodes, the
    /// dashboard's times).
    public var wallNanoseconds: @Sendable () -> UInt64
    /// Seeds every random choice of the node: each machine gets its own generator, split
    /// from this seed (``NodeConfiguration/membershipSeed``, when set, still seeds membership).
    public var seed: UInt64
    /// Distinguishes restarts of the same identity (announced in hellos); the first sequence
    /// numbers of queues and calls start at least here, so they do not repeat across restarts.
    public var incarnation: UInt64
    /// The ephemeral keys of link handshakes, split per link. ``HandshakeKeySource/system``
    /// for any node whose links carry real traffic.
    public var handshakeKeys: HandshakeKeySource

    /// An environment of the given parts (see each property).
    public init(monotonicNanoseconds: @escaping @Sendable () -> UInt64, wallNanoseconds: @escaping @Sendable () -> UInt64,
                seed: UInt64, incarnation: UInt64, handshakeKeys: HandshakeKeySource) {
        self.monotonicNanoseconds = monotonicNanoseconds
        self.wallNanoseconds = wallNanoseconds
        self.seed = seed
        self.incarnation = incarnation
        self.handshakeKeys = handshakeKeys
    }

    /// What a node runs on: the system's clocks, a random seed, the wall-clock time of the call
    /// as the incarnation, and handshake keys from the system's secure random source.
    public static func system() -> NodeEnvironment {
        let wall: @Sendable () -> UInt64 = {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
        }
        return NodeEnvironment(monotonicNanoseconds: { MonotonicTime.now().nanoseconds }, wallNanoseconds: wall,
                               seed: UInt64.random(in: 0...UInt64.max), incarnation: wall(), handshakeKeys: .system)
    }

    /// A replayable environment: the system's clocks (a node on a reactor needs the monotonic
    /// one) with every random choice, the incarnation and the handshake keys drawn from `seed`.
    /// For tests and simulations only (see ``HandshakeKeySource/seeded(_:)``).
    public static func seeded(_ seed: UInt64, incarnation: UInt64) -> NodeEnvironment {
        var environment = system()
        var generator = SplitMix64(seed: seed)
        environment.seed = generator.next()
        environment.incarnation = incarnation
        environment.handshakeKeys = .seeded(generator.next())
        return environment
    }

    /// The node's generator: split into one per machine (``split()``).
    struct Random {
        private var root: SplitMix64
        init(seed: UInt64) { root = SplitMix64(seed: seed) }
        /// A generator of its own for one more machine.
        mutating func split() -> SplitMix64 { SplitMix64(seed: root.next()) }
        /// A seed of its own for one more machine that takes a seed.
        mutating func seed() -> UInt64 { root.next() }
    }
}
