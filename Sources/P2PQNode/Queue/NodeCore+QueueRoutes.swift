extension NodeCore {
    /// The node's queues for status output (filled in by the queue layer).
    func queueStatuses() -> [NodeStatus.Queue] { [] }

    /// Queue control routes of the operations endpoint; false when the request is not one.
    func routeQueue(_ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) -> Bool { false }
}
