import FaultlineRules
import NIOCore

/// Idle upstream connections of one `http` listener on one event loop. When a client leaves
/// while its upstream connection is between requests and kept alive, the connection waits
/// here, and the next client on this loop takes it instead of dialing (as HAProxy's default
/// `http-reuse safe` does). A connection only ever serves one client at a time: it enters the
/// pool between two requests and leaves it before the next one is written.
///
/// Only touched on its loop, like the tracker that holds it.
final class HTTPUpstreamPool {
    /// Where a pooled connection leads: a reload that changes the upstream or its TLS
    /// settings makes the connections dialed before it useless to new clients.
    struct Target: Equatable {
        let upstream: HostPort
        let tls: UpstreamTLSSettings?

        init(_ rule: ListenerRule) {
            upstream = rule.upstream
            tls = rule.upstreamTLS
        }
    }

    private struct Entry {
        let channel: Channel
        let handler: HTTPUpstreamSideHandler
        let target: Target
        let pooledAt: NIODeadline
    }

    /// Idle connections per loop and listener at most: one per client connection of a busy
    /// moment, without holding descriptors without end.
    static let capacity = 256
    /// A pooled connection unused for this long is closed: servers close idle keep-alive
    /// connections after a while (nginx after 75 s, Node.js after 5 s), and a connection
    /// the server is closing is a failed request waiting to happen.
    static let maximumIdle = TimeAmount.seconds(4)

    /// Most recently pooled last: taken first, since it is the least likely to be closing.
    private var idle: [Entry] = []
    /// False once the listener drains: clients that finish then close their upstream.
    private(set) var isOpen = true

    var count: Int { idle.count }

    /// Keeps an idle upstream connection; false when the pool is full or closed (the caller
    /// closes it then).
    func put(_ channel: Channel, _ handler: HTTPUpstreamSideHandler, target: Target) -> Bool {
        guard isOpen, idle.count < Self.capacity, channel.isActive else { return false }
        handler.park(in: self)
        idle.append(Entry(channel: channel, handler: handler, target: target, pooledAt: .now()))
        return true
    }

    /// An idle connection to `target`, if one is kept and fresh enough.
    func take(_ target: Target) -> (channel: Channel, handler: HTTPUpstreamSideHandler)? {
        let freshAfter = NIODeadline.now() - Self.maximumIdle
        while let index = idle.lastIndex(where: { $0.target == target }) {
            let entry = idle.remove(at: index)
            guard entry.pooledAt > freshAfter, entry.channel.isActive else {
                entry.handler.unpark()
                entry.channel.close(promise: nil)
                continue
            }
            entry.handler.unpark()
            return (entry.channel, entry.handler)
        }
        return nil
    }

    /// A pooled connection closed, or sent something while idle: it is dropped (and closed).
    func discard(_ handler: HTTPUpstreamSideHandler) {
        guard let index = idle.firstIndex(where: { $0.handler === handler }) else { return }
        let entry = idle.remove(at: index)
        entry.handler.unpark()
        entry.channel.close(promise: nil)
    }

    /// Closes the connections idle for longer than `maximumIdle` (called by the loop's sweep).
    func closeStale() {
        let freshAfter = NIODeadline.now() - Self.maximumIdle
        while let index = idle.firstIndex(where: { $0.pooledAt <= freshAfter }) {
            let entry = idle.remove(at: index)
            entry.handler.unpark()
            entry.channel.close(promise: nil)
        }
    }

    /// The listener drains or stops: every idle connection closes, and none is kept after.
    func close() {
        isOpen = false
        let entries = idle
        idle.removeAll()
        for entry in entries {
            entry.handler.unpark()
            entry.channel.close(promise: nil)
        }
    }
}
