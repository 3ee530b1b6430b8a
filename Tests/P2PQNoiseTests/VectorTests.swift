import Foundation
import Testing
@testable import P2PQNoise

@Suite("Published test vectors")
struct VectorTests {
    /// Every vector in Vectors/vectors.json (committed beside these tests) that uses primitives
    /// swift-crypto has must be reproduced byte for byte; a missing file is a failure, not a skip.
    @Test("Vectors/vectors.json reproduces byte for byte")
    func publishedVectors() throws {
        let url = publishedVectorsURL()
        guard FileManager.default.fileExists(atPath: url.path) else {
            Issue.record("\(url.path) is missing from the repository")
            return
        }
        let vectors = try decodeVectors(Data(contentsOf: url))
        #expect(!vectors.isEmpty, "vectors.json holds no vectors")

        var passed = 0
        var skipped: [String: Int] = [:]
        for vector in vectors {
            let outcome: VectorOutcome
            do {
                outcome = try runVector(vector)
            } catch {
                // Keep going so one broken vector does not hide the state of the others.
                Issue.record("\(vector.protocolName) [\(vector.source ?? "?")] threw \(error)")
                outcome = .failed
            }
            switch outcome {
            case .passed: passed += 1
            case .failed: break
            case .skipped(let primitive): skipped[primitive, default: 0] += 1
            }
            print("noise vector \(vector.protocolName) [\(vector.source ?? "?")]: \(outcome)")
        }
        let skippedCount = skipped.values.reduce(0, +)
        print("noise vectors: \(passed) of \(vectors.count) reproduced, \(skippedCount) skipped for unsupported primitives \(skipped)")
        #expect(passed + skippedCount == vectors.count, "some vectors did not reproduce")
        #expect(passed > 0)
    }

    /// Extra cacophony vectors so AESGCM, SHA512 and the pre-message paths (responder key
    /// in IK/NK, both keys in KK) are checked against an independent implementation, not
    /// just against ourselves.
    @Test("embedded cacophony vectors (AESGCM, SHA512, IK/KK/NK pre-messages)", arguments: EmbeddedVectors.all.keys.sorted())
    func embeddedVector(_ name: String) throws {
        let json = try #require(EmbeddedVectors.all[name])
        let vectors = try decodeVectors(Data(json.utf8))
        #expect(vectors.map(\.protocolName) == [name])
        for vector in vectors {
            #expect(try runVector(vector) == .passed)
        }
    }

    @Test("vectors using 448 or BLAKE2 are reported as skipped, not failed")
    func unsupportedPrimitivesSkip() throws {
        let json = EmbeddedVectors.nnAESGCMBLAKE2b
        let vector = try #require(try decodeVectors(Data(json.utf8)).first)
        #expect(try runVector(vector) == .skipped("BLAKE2b"))
    }
}
