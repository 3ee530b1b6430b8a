import Foundation
import P2PQLink
import P2PQOperations

/// One request to an operations endpoint (`base` is `http://host:port`) with the bearer token.
func operationsRequest(_ base: String, _ path: String, method: String = "GET", token: OperationsToken,
                       body: [UInt8] = [], timeout: Duration = .seconds(10)) async throws -> OperationsClient.Response {
    try await OperationsClient.send(base + path, method: method, headers: [("Authorization", "Bearer \(token.text)")],
                                    body: body, timeout: timeout)
}

/// GET `path` on an operations endpoint with the bearer token; the status and body.
func httpGet(_ port: Int, _ path: String, token: OperationsToken) async throws -> (Int, Data) {
    let response = try await operationsRequest("http://127.0.0.1:\(port)", path, token: token)
    return (response.status, Data(response.body))
}
