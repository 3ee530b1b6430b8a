import ServiceLifecycle

extension Node: Service {
    /// Runs the node as a swift-service-lifecycle `Service`: starts it (unless the application
    /// already did), serves until graceful shutdown is triggered or the task is cancelled, then
    /// leaves the cluster cleanly (``stop()``: goodbyes, queued items handed on, links closed).
    public func run() async throws {
        if isIdle { try await start() }
        // Returns on graceful shutdown; throws CancellationError on cancellation. Both end here.
        try? await gracefulShutdown()
        await stop()
    }
}
