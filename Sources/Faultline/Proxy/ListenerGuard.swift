import Logging
import Prometheus
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What keeps a listener within its limits, shared by its loops: the count of open client
/// connections against `max_connections` (one atomic add at accept and one subtract at close,
/// never per byte), and whether accepting is failing for want of file descriptors. Each
/// "episode" (full, or out of descriptors) is logged when it starts and when it ends, not per
/// connection turned away.
final class ListenerGuard: Sendable {
    private let open = Atomic<Int>(0)
    private let full = Atomic<Bool>(false)
    private let acceptFailing = Atomic<Bool>(false)
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Takes a connection slot, or says the listener is full. A slot taken is given back when
    /// the client's channel closes, whatever closed it.
    func admit(_ channel: Channel, limit: Int, rejected: Counter) -> Bool {
        let count = open.wrappingAdd(1, ordering: .relaxed).newValue
        guard count <= limit else {
            open.wrappingSubtract(1, ordering: .relaxed)
            rejected.increment()
            if !full.exchange(true, ordering: .relaxed) {
                logger.warning(
                    "listener full: new connections are closed until some end",
                    metadata: ["max_connections": "\(limit)"])
            }
            return false
        }
        channel.closeFuture.whenComplete { [self] _ in
            let left = open.wrappingSubtract(1, ordering: .relaxed).newValue
            if left < limit, full.load(ordering: .relaxed), full.exchange(false, ordering: .relaxed) {
                logger.notice("listener accepting again", metadata: ["connections.open": "\(left)"])
            }
        }
        return true
    }

    /// accept(2) failed (EMFILE, ENFILE, ...): the first failure of an episode is logged.
    func acceptFailed(_ error: IOError) {
        if !acceptFailing.exchange(true, ordering: .relaxed) {
            logger.error(
                "cannot accept connections; backing off (open connections are not affected)",
                metadata: ["error": "\(String(cString: strerror(error.errnoCode)))"])
        }
    }

    /// A connection was accepted: an episode of failures, if any, is over.
    func acceptSucceeded() {
        if acceptFailing.load(ordering: .relaxed), acceptFailing.exchange(false, ordering: .relaxed) {
            logger.notice("accepting connections again")
        }
    }
}

/// On each listening channel: when accept(2) fails for want of resources (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), stops accepting for a second, then tries again.
///
/// NIO leaves this to the application, and its own `AcceptBackoffHandler` only delays the next
/// `read()`: the listening socket stays registered for readability, so epoll wakes the loop
/// at once, again and again (a busy loop at 100% CPU for as long as descriptors are short).
/// Switching `autoRead` off takes the socket out of epoll for the pause; the connections
/// waiting meanwhile stay in the kernel's backlog and are accepted once descriptors free up.
final class AcceptBackoff: ChannelInboundHandler {
    typealias InboundIn = Channel

    static let pause = TimeAmount.seconds(1)
    private let failed: (@Sendable (IOError) -> Void)?
    private let succeeded: (@Sendable () -> Void)?
    private var paused = false

    init(failed: (@Sendable (IOError) -> Void)? = nil, succeeded: (@Sendable () -> Void)? = nil) {
        self.failed = failed
        self.succeeded = succeeded
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        succeeded?()
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        failed?(error)
        guard !paused, let options = context.channel.syncOptions else { return }
        paused = true
        try? options.setOption(.autoRead, value: false)
        let channel = context.channel
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) { [self] in
            paused = false
            try? channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}
