import NIOCore

/// The open connections of one listener on one event loop. Only touched on that loop, so
/// accepting and closing take no lock; the listener visits every loop's tracker to drain.
// @unchecked Sendable: the tracker is handed to the loop's channel initializers, but every
// method is only ever called on `eventLoop` (the drain visits it with `eventLoop.submit`).
final class ConnectionTracker: @unchecked Sendable {
    let eventLoop: EventLoop
    private var connections: [ObjectIdentifier: ProxyConnection] = [:]
    private var nextID: UInt64
    private let idStride: UInt64

    /// Connection ids are unique per listener: each loop counts from its own index in steps
    /// of the loop count.
    init(eventLoop: EventLoop, loopIndex: Int, loopCount: Int) {
        self.eventLoop = eventLoop
        self.nextID = UInt64(loopIndex) + 1
        self.idStride = UInt64(loopCount)
    }

    func makeID() -> UInt64 {
        defer { nextID += idStride }
        return nextID
    }

    func add(_ connection: ProxyConnection) {
        connections[ObjectIdentifier(connection)] = connection
    }

    func remove(_ connection: ProxyConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    var count: Int { connections.count }

    func closeAll() {
        for connection in connections.values { connection.closeAll() }
    }

    var bufferedBytes: Int {
        connections.values.reduce(0) { $0 + $1.bufferedBytes }
    }
}
