/// The tests' seeded generator is the one the sources use, so every test target draws the same
/// sequence from the same seed: `SplitMix64(seed:)` (Sendable, a `RandomNumberGenerator`).
@_exported import struct P2PQWire.SplitMix64
