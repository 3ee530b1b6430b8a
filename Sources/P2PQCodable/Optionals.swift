#if canImport(FoundationEssentials)
import FoundationEssentials
#elseif canImport(Foundation)
import Foundation
#endif

// Optionals need a presence byte outside keyed containers, so the coders must recognise
// `Optional<Wrapped>` whatever `Wrapped` is. These marker protocols let them do it without
// knowing `Wrapped` statically.

protocol CompactOptionalEncodable {
    /// The wrapped value, or nil.
    var compactWrapped: (any Encodable)? { get }
}

extension Optional: CompactOptionalEncodable where Wrapped: Encodable {
    var compactWrapped: (any Encodable)? { self }
}

/// Decodes a value of a type only known at run time (the wrapped type of an optional).
protocol CompactWrappedDecoding {
    func decodeWrapped<W: Decodable>(_ type: W.Type) throws -> W
}

protocol CompactOptionalDecodable {
    static var compactNone: Self { get }
    static func compactSome(_ decoding: some CompactWrappedDecoding) throws -> Self
}

extension Optional: CompactOptionalDecodable where Wrapped: Decodable {
    static var compactNone: Self { nil }
    static func compactSome(_ decoding: some CompactWrappedDecoding) throws -> Self {
        .some(try decoding.decodeWrapped(Wrapped.self))
    }
}
