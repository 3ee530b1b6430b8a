// `import P2PQNode` is the one import an application needs: the modules whose types the public
// API takes or returns come with it (item batches and payloads, PeerID, ClusterKey and
// NodeIdentity, SocketAddress and the reactor's settings, the queue's and the remote calls'
// configurations, counters and errors, the compact Codable coders, and the swift-log,
// swift-metrics, swift-prometheus and swift-service-lifecycle types in its signatures).
@_exported import CoreMetrics
@_exported import Logging
@_exported import P2PQCodable
@_exported import P2PQLink
@_exported import P2PQMembership
@_exported import P2PQQueue
@_exported import P2PQReactor
@_exported import P2PQRemoteCall
@_exported import P2PQWire
@_exported import Prometheus
@_exported import ServiceLifecycle
