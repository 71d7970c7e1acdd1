import FaultlineRules
import NIOCore

/// What a loop's tracker needs of a connection, whatever the listener speaks.
protocol TrackedConnection: AnyObject {
    /// New rules for the listener (faults on bytes and per request follow them).
    func rulesChanged(_ configuration: ListenerConfiguration)
    /// Closes both sides now (idle timeout, end of the drain period).
    func closeAll()
    /// Called four times per idle timeout; closes a connection quiet for a whole period.
    func idleSweep()
    /// Bytes the proxy holds for the connection (outbound buffers and fault queues).
    var bufferedBytes: Int { get }
}

/// Idleness as the loop's sweep sees it: a read sets a flag (cheaper than a clock read per
/// chunk, and no timer per connection); four sweeps in a row without one, four per idle
/// timeout, mean the connection was silent for at least one idle period.
struct IdleTimer {
    private var sawActivity = false
    private var quietSweeps = 0

    mutating func activity() {
        sawActivity = true
    }

    /// Called by each sweep; true when the connection is to be closed.
    mutating func sweep() -> Bool {
        if sawActivity {
            sawActivity = false
            quietSweeps = 0
            return false
        }
        quietSweeps += 1
        return quietSweeps >= 4
    }
}

/// The open connections of one listener on one event loop. Only touched on that loop, so
/// accepting and closing take no lock; the listener visits every loop's tracker to drain.
// @unchecked Sendable: the tracker is handed to the loop's channel initializers, but every
// method is only ever called on `eventLoop` (the drain visits it with `eventLoop.submit`).
final class ConnectionTracker: @unchecked Sendable {
    let eventLoop: EventLoop
    private var connections: [ObjectIdentifier: any TrackedConnection] = [:]
    private var nextID: UInt64
    private let idStride: UInt64
    private var idleSweep: RepeatedTask?

    /// `http` listeners: upstream connections kept between clients (empty for `tcp`).
    let upstreamPool = HTTPUpstreamPool()

    /// Upstream failures, logged about once a second however many there are.
    let upstreamFailures: UpstreamFailureLog

    /// The random source of this loop's fault decisions for the listener.
    var random: FaultRandom

    /// Counts since the last metrics scrape, folded into the shared counters by `takeCounts`.
    var bytesUpstream: Int64 = 0
    var bytesDownstream: Int64 = 0
    private var accepted: Int64 = 0
    /// HTTP listeners: requests answered by status class (index 0 is 1xx), and in flight now.
    var requestsByClass: [Int64] = [0, 0, 0, 0, 0]
    var requestsInFlight = 0

    /// Connection ids are unique per listener: each loop counts from its own index in steps
    /// of the loop count.
    init(eventLoop: EventLoop, loopIndex: Int, loopCount: Int, seed: UInt64) {
        self.eventLoop = eventLoop
        self.upstreamFailures = UpstreamFailureLog(eventLoop: eventLoop)
        self.random = FaultRandom(seed: seed &+ UInt64(loopIndex) &* 0x9E37_79B9)
        self.nextID = UInt64(loopIndex) + 1
        self.idStride = UInt64(loopCount)
    }

    func makeID() -> UInt64 {
        defer { nextID += idStride }
        return nextID
    }

    /// `isNew` is false for a connection that continues one already counted (a WebSocket
    /// tunnel taking over from its HTTP connection).
    func add(_ connection: some TrackedConnection, isNew: Bool = true) {
        connections[ObjectIdentifier(connection)] = connection
        if isNew { accepted &+= 1 }
    }

    func remove(_ connection: some TrackedConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    var count: Int { connections.count }

    struct Counts: Sendable {
        var accepted: Int64
        var bytesUpstream: Int64
        var bytesDownstream: Int64
        var open: Int
        var requestsByClass: [Int64]
        var requestsInFlight: Int
    }

    /// The counts since the last call, and the connections open now.
    func takeCounts() -> Counts {
        defer {
            accepted = 0
            bytesUpstream = 0
            bytesDownstream = 0
            requestsByClass = [0, 0, 0, 0, 0]
        }
        return Counts(
            accepted: accepted, bytesUpstream: bytesUpstream, bytesDownstream: bytesDownstream, open: count,
            requestsByClass: requestsByClass, requestsInFlight: requestsInFlight)
    }

    /// One repeating task per loop and listener checks every connection for idleness, four
    /// times per idle timeout, instead of a timer per connection.
    func startIdleSweep(idleTimeout: TimeAmount) {
        let interval = TimeAmount.nanoseconds(max(idleTimeout.nanoseconds / 4, 1_000_000))
        idleSweep = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            for connection in self.connections.values { connection.idleSweep() }
            self.upstreamPool.closeStale()
        }
    }

    func stopIdleSweep() {
        idleSweep?.cancel()
        idleSweep = nil
    }

    /// New fault rules for the listener: every open connection follows them from now on.
    func rulesChanged(_ configuration: ListenerConfiguration) {
        for connection in connections.values { connection.rulesChanged(configuration) }
    }

    func closeAll() {
        upstreamPool.close()
        for connection in connections.values { connection.closeAll() }
    }

    var bufferedBytes: Int {
        connections.values.reduce(0) { $0 + $1.bufferedBytes }
    }
}
