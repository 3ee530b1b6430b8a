/// A token in a handshake pattern (spec §7).
public enum NoiseToken: String, Sendable, Hashable {
    /// Send/receive an ephemeral public key.
    case e
    /// Send/receive a static public key (encrypted once a key exists).
    case s
    /// DH(initiator e, responder e).
    case ee
    /// DH(initiator e, responder s).
    case es
    /// DH(initiator s, responder e).
    case se
    /// DH(initiator s, responder s).
    case ss
    /// Mix the next pre-shared key into key and transcript.
    case psk
}

/// A handshake pattern: pre-messages plus the ordered message token lists, with any
/// modifiers (currently `pskN`) already applied.
///
/// Message `i` is sent by the initiator when `i` is even and by the responder when odd.
public struct HandshakePattern: Sendable, Hashable {
    /// The full pattern name as it appears in a protocol name, e.g. `XXpsk0+psk3`.
    public let name: String
    /// The fundamental pattern, e.g. `XX`.
    public let baseName: String
    /// Modifiers in the order given, e.g. `["psk0", "psk3"]`.
    public let modifiers: [String]
    /// Tokens the initiator "sent" before the handshake (known to the responder up front).
    public let initiatorPreMessage: [NoiseToken]
    /// Tokens the responder "sent" before the handshake (known to the initiator up front).
    public let responderPreMessage: [NoiseToken]
    /// The handshake messages in order.
    public let messages: [[NoiseToken]]

    /// One-way patterns (`N`, `K`, `X`) have a single message and only the initiator sends.
    public var isOneWay: Bool { messages.count == 1 }

    /// Number of `psk` tokens, i.e. how many PSKs each party must supply.
    public var pskCount: Int { messages.reduce(0) { $0 + $1.filter { $0 == .psk }.count } }

    /// Base pattern names this engine knows: the one-way and interactive fundamental patterns.
    public static var supportedBaseNames: [String] { fundamentals.map(\.name) }

    /// Parses a pattern name such as `XX`, `NNpsk0` or `XXpsk0+psk3`.
    ///
    /// The base name is the leading run of upper-case letters and digits; the rest is a
    /// `+`-separated modifier list. `pskN` inserts a `psk` token at the start of message 0
    /// when `N == 0`, else at the end of message `N-1` (spec §9.2).
    public static func named(_ name: String) throws(NoiseError) -> HandshakePattern {
        let baseName = String(name.prefix { $0.isUppercase || $0.isNumber })
        guard !baseName.isEmpty else { throw .unsupportedPattern(name) }
        guard let base = fundamentals.first(where: { $0.name == baseName }) else {
            throw .unsupportedPattern(baseName)
        }
        let rest = name.dropFirst(baseName.count)
        let modifiers = rest.isEmpty ? [] : rest.split(separator: "+", omittingEmptySubsequences: false).map(String.init)

        var messages = base.messages
        var seenPositions = Set<Int>()
        for modifier in modifiers {
            guard let position = pskPosition(modifier),
                  position <= messages.count,
                  seenPositions.insert(position).inserted
            else {
                // `fallback` and anything unknown or out of range land here.
                throw .unsupportedModifier(modifier)
            }
            if position == 0 {
                messages[0].insert(.psk, at: 0)
            } else {
                messages[position - 1].append(.psk)
            }
        }
        return HandshakePattern(
            name: name, baseName: baseName, modifiers: modifiers,
            initiatorPreMessage: base.initiatorPre, responderPreMessage: base.responderPre,
            messages: messages
        )
    }

    /// `pskN` -> N, for canonical decimal N (no sign, no leading zeros).
    private static func pskPosition(_ modifier: String) -> Int? {
        guard modifier.hasPrefix("psk") else { return nil }
        let digits = modifier.dropFirst(3)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              digits == "0" || !digits.hasPrefix("0")
        else { return nil }
        return Int(digits)
    }

    private struct Fundamental: Sendable {
        let name: String
        let initiatorPre: [NoiseToken]
        let responderPre: [NoiseToken]
        let messages: [[NoiseToken]]
    }

    // Spec §7.4 (one-way) and §7.5 (interactive). Kept as data so every code path is shared.
    private static let fundamentals: [Fundamental] = [
        Fundamental(name: "N", initiatorPre: [], responderPre: [.s], messages: [[.e, .es]]),
        Fundamental(name: "K", initiatorPre: [.s], responderPre: [.s], messages: [[.e, .es, .ss]]),
        Fundamental(name: "X", initiatorPre: [], responderPre: [.s], messages: [[.e, .es, .s, .ss]]),
        Fundamental(name: "NN", initiatorPre: [], responderPre: [], messages: [[.e], [.e, .ee]]),
        Fundamental(name: "NK", initiatorPre: [], responderPre: [.s], messages: [[.e, .es], [.e, .ee]]),
        Fundamental(name: "NX", initiatorPre: [], responderPre: [], messages: [[.e], [.e, .ee, .s, .es]]),
        Fundamental(name: "KN", initiatorPre: [.s], responderPre: [], messages: [[.e], [.e, .ee, .se]]),
        Fundamental(name: "KK", initiatorPre: [.s], responderPre: [.s], messages: [[.e, .es, .ss], [.e, .ee, .se]]),
        Fundamental(name: "KX", initiatorPre: [.s], responderPre: [], messages: [[.e], [.e, .ee, .se, .s, .es]]),
        Fundamental(name: "XN", initiatorPre: [], responderPre: [], messages: [[.e], [.e, .ee], [.s, .se]]),
        Fundamental(name: "XK", initiatorPre: [], responderPre: [.s], messages: [[.e, .es], [.e, .ee], [.s, .se]]),
        Fundamental(name: "XX", initiatorPre: [], responderPre: [], messages: [[.e], [.e, .ee, .s, .es], [.s, .se]]),
        Fundamental(name: "IN", initiatorPre: [], responderPre: [], messages: [[.e, .s], [.e, .ee, .se]]),
        Fundamental(name: "IK", initiatorPre: [], responderPre: [.s], messages: [[.e, .es, .s, .ss], [.e, .ee, .se]]),
        Fundamental(name: "IX", initiatorPre: [], responderPre: [], messages: [[.e, .s], [.e, .ee, .se, .s, .es]]),
    ]
}

/// A parsed protocol name: `Noise_<pattern>_<dh>_<cipher>_<hash>` (spec §8).
public struct NoiseProtocol: Sendable, Hashable {
    /// The exact name, hashed into the initial handshake state.
    public let name: String
    /// The handshake pattern with modifiers applied.
    public let pattern: HandshakePattern
    /// The DH function (`25519`).
    public let dh: NoiseDHFunction
    /// The AEAD (`ChaChaPoly` or `AESGCM`).
    public let cipher: NoiseCipherFunction
    /// The hash (`SHA256` or `SHA512`).
    public let hash: NoiseHashFunction

    /// The project's protocol: XX with a cluster-wide PSK mixed in before the first message.
    public static let xxPSK0 = try! NoiseProtocol(name: "Noise_XXpsk0_25519_ChaChaPoly_SHA256")

    /// Parses a full protocol name.
    ///
    /// - Throws: ``NoiseError/invalidProtocolName(_:)`` for a malformed name,
    ///   ``NoiseError/unsupportedPattern(_:)`` / ``NoiseError/unsupportedModifier(_:)`` for
    ///   an unknown pattern, and ``NoiseError/unsupportedPrimitive(_:)`` for a DH, cipher or
    ///   hash that swift-crypto lacks (448, BLAKE2s, BLAKE2b) or that is unknown.
    public init(name: String) throws(NoiseError) {
        let parts = name.split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "Noise", parts.dropFirst().allSatisfy({ !$0.isEmpty }),
              name.utf8.count <= 255
        else {
            throw .invalidProtocolName(name)
        }
        guard let dh = NoiseDHFunction(rawValue: String(parts[2])) else {
            throw .unsupportedPrimitive(String(parts[2]))
        }
        guard let cipher = NoiseCipherFunction(rawValue: String(parts[3])) else {
            throw .unsupportedPrimitive(String(parts[3]))
        }
        guard let hash = NoiseHashFunction(rawValue: String(parts[4])) else {
            throw .unsupportedPrimitive(String(parts[4]))
        }
        self.name = name
        self.pattern = try HandshakePattern.named(String(parts[1]))
        self.dh = dh
        self.cipher = cipher
        self.hash = hash
    }
}
