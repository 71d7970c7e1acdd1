import FaultlineRules
import Logging
import NIOCore

/// One client connection of an `http` listener and the upstream connection it uses. Like the
/// TCP `ProxyConnection`, everything lives on the client's event loop and nothing is locked.
///
/// Upstream connections: one per client connection, dialed on the first request that needs
/// the upstream and kept while both sides keep the connection alive, so that a keep-alive
/// client costs one upstream connection, requests stay in order, and nothing is shared
/// between clients (a fault on one client's requests never delays another's).
final class HTTPProxyConnection: TrackedConnection {
    let id: UInt64
    let eventLoop: EventLoop
    let listener: ListenerConfiguration
    let tracker: ConnectionTracker
    let logger: Logger
    let settings: HTTPSettings
    let metrics: HTTPListenerMetrics
    /// The rules new requests follow; replaced when the rules change.
    var faultConfiguration: ListenerConfiguration

    var clientChannel: Channel?
    var clientHandler: HTTPClientSideHandler?
    var clientActive = false

    var upstreamChannel: Channel?
    var upstreamHandler: HTTPUpstreamSideHandler?
    /// Bumped for each upstream connection: events of one given up are ignored.
    var generation = 0
    var upstreamConnecting = false
    var upstreamReady = false
    var upstreamResetSeen = false
    /// The upstream connection carried an `Upgrade` request: a server that did not switch
    /// may still have stopped parsing HTTP on it (NIO's decoder does), so it is not pooled.
    var upstreamUpgradeSent = false

    var exchange: HTTPExchange?
    /// Parts of requests a client sent before the answer to the one in flight (pipelining):
    /// kept in order, with reads stopped, and taken up once that answer is complete. At most
    /// what the decoder had already read, since reads stay stopped while it is not empty.
    var pipelined = CircularBuffer<HTTPRequestFramer.Part>()
    var replayingPipelined = false
    /// When the head of the request being read must be complete (408 past it); nil between
    /// requests and once a head is in.
    var headDeadline: NIODeadline?
    /// One timer for the head and response deadlines, armed lazily: a deadline later than the
    /// one the timer is set for leaves it alone, and when it fires it re-arms for whatever is
    /// still due. A keep-alive connection then schedules nothing per request (a timer per
    /// request and its cancellation cost more than the rest of the request's own work).
    private var deadlineTimer: Scheduled<Void>?
    private var deadlineTimerAt = NIODeadline.distantFuture
    /// The client half-closed or an answer said `Connection: close`: close after this response.
    var closeAfterResponse = false
    var finished = false
    var rejected = false

    private let acceptedAt = NIODeadline.now()
    private var idle = IdleTimer()

    init(id: UInt64, clientChannel: Channel, listener: ListenerConfiguration, tracker: ConnectionTracker, logger: Logger) {
        self.id = id
        self.eventLoop = clientChannel.eventLoop
        self.clientChannel = clientChannel
        self.listener = listener
        self.faultConfiguration = listener
        self.tracker = tracker
        self.logger = logger
        self.settings = listener.rule.http
        self.metrics = listener.http!
    }

    /// Builds the client pipeline; called from the accepted channel's initializer.
    func attachClient(to channel: Channel) throws {
        // One handler: requests are cut from the bytes by its framer and kept in order here
        // (`pipelined`), not by NIO's pipelining handler, which stops and restarts reads around
        // every request (two epoll_ctl calls each); responses go out as bytes
        // (`HTTPResponseBytes`), with no encoder.
        let handler = HTTPClientSideHandler(connection: self, maxHeadBytes: settings.maxHeadBytes)
        clientHandler = handler
        try channel.pipeline.syncOperations.addHandler(handler)
    }

    // MARK: Client events

    func clientBecameActive() {
        clientActive = true
        tracker.add(self)
    }

    func clientBytesArrived() {
        idle.activity()
        // The head timeout runs from the first byte of a request to the end of its head.
        if exchange == nil, headDeadline == nil {
            headDeadline = .now() + .nanoseconds(settings.headTimeout.nanoseconds)
            armDeadlineTimer()
        }
    }

    func armDeadlineTimer() {
        let next = min(headDeadline ?? .distantFuture, exchange?.responseDeadline ?? .distantFuture)
        guard next < .distantFuture, deadlineTimer == nil || next < deadlineTimerAt else { return }
        deadlineTimer?.cancel()
        deadlineTimerAt = next
        deadlineTimer = eventLoop.assumeIsolated().scheduleTask(deadline: next) { [self] in
            deadlineTimer = nil
            deadlineTimerAt = .distantFuture
            deadlinesReached()
        }
    }

    private func deadlinesReached() {
        guard clientActive else { return }
        let now = NIODeadline.now()
        if let deadline = headDeadline, deadline <= now {
            headDeadline = nil
            if exchange == nil {
                reject(408, "Request Timeout", "request head not received within \(DurationText.format(settings.headTimeout))")
                return
            }
        }
        if let exchange, let deadline = exchange.responseDeadline, deadline <= now {
            exchange.responseDeadline = nil
            if !exchange.responseHeadReceived {
                metrics.upstreamErrors[.responseTimeout]!.increment()
                tracker.upstreamFailures.failed(
                    "response_timeout", connection: id, upstream: "\(listener.rule.upstream)",
                    message: "upstream did not answer within \(DurationText.format(settings.responseTimeout)); answering 504",
                    logger: logger)
                closeUpstream()
                fail(exchange, 504, "faultline: upstream did not answer within \(DurationText.format(settings.responseTimeout))\n")
                return
            }
        }
        armDeadlineTimer()
    }

    func requestPart(_ part: HTTPRequestFramer.Part) {
        if !pipelined.isEmpty || exchange?.requestEnded == true {
            pipelined.append(part)
            return
        }
        handleRequestPart(part)
    }

    func handleRequestPart(_ part: HTTPRequestFramer.Part) {
        switch part {
        case .head(let head, let bytes):
            startExchange(head, bytes)
        case .body(let buffer):
            tracker.bytesUpstream &+= Int64(buffer.readableBytes)
            guard let exchange, !exchange.dropRequest else { return }
            sendUpstream(.body(.byteBuffer(buffer)), exchange)
        case .end(let trailers):
            guard let exchange else { return }
            exchange.requestEnded = true
            if exchange.dropRequest {
                if let reply = exchange.pendingReply {
                    exchange.pendingReply = nil
                    answer(exchange, status: reply.status, headers: reply.headers, body: reply.body, made: exchange.pendingReplyBytes)
                }
                return
            }
            sendUpstream(.end(trailers), exchange)
        }
    }

    func clientReadComplete() {
        upstreamHandler?.flush()
    }

    func clientBecameWritable() {
        pumpResponse()
        upstreamHandler?.resumeReading()
    }

    func clientInputClosed() {
        // A client that half-closes after its request still gets the answer, unless no
        // answer will ever come (a blackhole): then the connection is over.
        if exchange == nil {
            clientChannel?.close(promise: nil)
        } else if case .blackhole = exchange?.fault {
            clientChannel?.close(promise: nil)
        } else {
            closeAfterResponse = true
        }
    }

    /// The client sent something that is not HTTP/1.1 (or a head over the limit): answered
    /// unless an answer has begun, and the connection closes either way.
    func requestMalformed(_ error: HTTPRequestFramer.MalformedRequest) {
        guard exchange?.responseHeadSent != true else {
            closeAll()
            return
        }
        if error.tooLarge {
            reject(431, "Request Header Fields Too Large", "request head larger than \(settings.maxHeadBytes) bytes")
        } else {
            reject(400, "Bad Request", "malformed request (\(error))")
        }
    }

    func clientError(_ error: any Error) {
        if !(error is ChannelError) {
            logger.debug("client connection error", metadata: ["conn.id": "\(id)", "error": "\(error)"])
        }
        closeAll()
    }

    func clientBecameInactive() {
        clientActive = false
        deadlineTimer?.cancel()
        deadlineTimer = nil
        headDeadline = nil
        pipelined.removeAll()
        if let exchange {
            // Left mid-request: the upstream connection is in an unknown state.
            exchange.cancelTimers()
            endExchange(exchange, counted: false)
            closeUpstream()
        } else {
            releaseUpstream()
        }
        finish()
    }

    func mayReadClient() -> Bool {
        if !pipelined.isEmpty { return false }
        guard let exchange else { return true }
        if exchange.upgrading { return false }  // the tunnel reads next
        if exchange.dropRequest { return true }  // read and dropped: memory stays flat
        return exchange.requestQueue.isEmpty && !exchange.requestHeld && upstreamReady
            && (upstreamHandler?.isWritable ?? false)
    }


    // MARK: Ending

    /// The exchange is over: counted by status class and duration if it was answered.
    func endExchange(_ exchange: HTTPExchange, counted: Bool) {
        guard !exchange.complete else { return }
        exchange.complete = true
        exchange.cancelTimers()
        tracker.requestsInFlight -= 1
        if counted, exchange.status >= 100 {
            tracker.requestsByClass[min(4, exchange.status / 100 - 1)] &+= 1
            metrics.duration.recordNanoseconds((NIODeadline.now() - exchange.startedAt).nanoseconds)
        }
        if self.exchange === exchange { self.exchange = nil }
    }

    func closeAll() {
        clientChannel?.close(promise: nil)
        closeUpstream()
    }

    func rulesChanged(_ configuration: ListenerConfiguration) {
        // The next request follows the new rules; the one in flight keeps its decision.
        faultConfiguration = configuration
    }

    func idleSweep() {
        if idle.sweep() {
            logger.debug("idle timeout; closing", metadata: ["conn.id": "\(id)"])
            closeAll()
        }
    }

    var bufferedBytes: Int {
        func buffered(_ channel: Channel?) -> Int {
            guard let options = channel?.syncOptions else { return 0 }
            return (try? options.getOption(.bufferedWritableBytes)) ?? 0
        }
        var queued = 0
        if let exchange {
            for part in exchange.responseQueue {
                switch part {
                case .head(let bytes), .body(let bytes), .framing(let bytes), .end(.some(let bytes)): queued += bytes.readableBytes
                case .end(nil): break
                }
            }
            for case .body(let data) in exchange.requestQueue { queued += data.readableBytes }
        }
        return buffered(clientChannel) + buffered(upstreamChannel) + queued
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        tracker.remove(self)
        listener.metrics.duration.recordNanoseconds((NIODeadline.now() - acceptedAt).nanoseconds)
        // Break the handler <-> connection cycles.
        clientHandler = nil
        clientChannel = nil
    }
}
