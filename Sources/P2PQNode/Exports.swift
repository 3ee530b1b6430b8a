// `import P2PQNode` is the one import an application needs: the modules whose types the public
// API takes or returns come with it (item batches and payloads, PeerID, ClusterKey and
// NodeIdentity, SocketAddress and the reactor's settings, the queue's and the remote calls'
// configurations, counters and errors, the compact Codable coders, swift-log's Logger and
// swift-service-lifecycle's Service). swift-metrics and swift-prometheus are not re-exported:
// their Timer, Counter and Gauge would clash with Foundation's Timer and with each other in
// every file that imports P2PQNode; an application that picks a metrics backend
// (`NodeMetricsBackend.factory`, `.prometheus`) imports those packages itself.
@_exported import Logging
@_exported import P2PQCodable
@_exported import P2PQLink
@_exported import P2PQMembership
@_exported import P2PQQueue
@_exported import P2PQReactor
@_exported import P2PQRemoteCall
@_exported import P2PQWire
@_exported import ServiceLifecycle
