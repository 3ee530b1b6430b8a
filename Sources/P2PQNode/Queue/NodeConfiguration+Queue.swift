import P2PQQueue

extension NodeConfiguration {
    /// Most items one local queue holds (queued plus outgoing transfers in flight); pushes
    /// beyond it wait (backpressure). Shorthand for `queue.maxItems`.
    public var maxQueueItems: Int {
        get { queue.maxItems }
        set { queue.maxItems = newValue }
    }

    /// Most payload bytes one local queue holds (queued plus outgoing in flight). Shorthand for
    /// `queue.maxBytes`.
    public var maxQueueBytes: Int {
        get { queue.maxBytes }
        set { queue.maxBytes = newValue }
    }
}
