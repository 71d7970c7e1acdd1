import FaultlineRules
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// One request and its response on an `http` listener, from the request head to the end of
/// the response. Requests on a connection are handled one at a time (a pipelined request
/// waits in the connection's queue), so a connection has at most one exchange.
final class HTTPExchange {
    let startedAt = NIODeadline.now()
    let isHead: Bool
    var clientKeepAlive: Bool
    /// An HTTP/1.0 client keeps its connection only when the answer says so.
    var clientIsHTTP10 = false
    /// The head as sent upstream, kept to send it again if a reused upstream connection
    /// turns out to have been closed by the server (see `HTTPProxyConnection.retryStale`).
    var head: HTTPRequestHead?
    /// The head's bytes as the client sent them, when they go upstream so (nothing taken out).
    var headBytes: ByteBuffer?
    /// The request went on an upstream connection taken from the pool.
    var onReusedUpstream = false
    var retriedStale = false
    var bodyPartsSent = 0
    /// The fault decided for this request when its head arrived (it keeps it).
    var fault: RequestFault?

    /// Request parts not yet written upstream: while dialing, while a delay holds the request,
    /// or while the upstream is not writable. Reads stop meanwhile, so it stays one read burst.
    /// (Arrays: an empty one costs no allocation, and most requests never queue a part.)
    var requestQueue: [HTTPClientRequestPart] = []
    var requestHeld = false
    /// The request's end has been read: parts after it belong to the next (pipelined) request.
    var requestEnded = false
    var headSent = false
    var requestSent = false
    /// abort, blackhole and Faultline's own answers: the request is read and dropped.
    var dropRequest = false
    /// What to answer once the request has been read in full.
    var pendingReply: (status: Int, headers: [HTTPAbort.HeaderField], body: String)?
    /// The bytes of `pendingReply` as an HTTP/1.1 keep-alive answer, when the rule has them made.
    var pendingReplyBytes: ByteBuffer?

    /// Response parts not yet written to the client: while a delay holds the response, while
    /// throttling paces it, or while the client is not writable.
    var responseQueue: [HTTPResponseBytes] = []
    var responseHeld = false
    var responseHeadReceived = false
    var responseEndReceived = false
    var responseHeadSent = false
    var status = 0
    var bodySent = 0
    var upstreamKeepAlive = true
    var nextWriteAt = NIODeadline.uptimeNanoseconds(0)
    /// The delay of a request or response, the throttle's next slot, a blackhole's close.
    var timer: Scheduled<Void>?
    /// When the response head must have come (504 past it): set when the request has been
    /// sent, cleared by the response head. Watched by the connection's deadline timer.
    var responseDeadline: NIODeadline?
    var complete = false
    /// The request asked for `Upgrade` (WebSocket); after the upstream's `101` the connection
    /// becomes a byte tunnel.
    var upgradeRequested = false
    var upgrading = false

    init(isHead: Bool, clientKeepAlive: Bool) {
        self.isHead = isHead
        self.clientKeepAlive = clientKeepAlive
    }

    /// True when the fault acts on the response body, so that each part goes through the pump.
    var shapesResponse: Bool {
        switch fault {
        case .delayResponse, .truncate, .throttle, .reset(afterBodyBytes: .some): true
        default: false
        }
    }

    func cancelTimers() {
        timer?.cancel()
        timer = nil
        responseDeadline = nil
    }
}

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
    private let settings: HTTPSettings
    private let metrics: HTTPListenerMetrics
    /// The rules new requests follow; replaced when the rules change.
    private var faultConfiguration: ListenerConfiguration

    private var clientChannel: Channel?
    private var clientHandler: HTTPClientSideHandler?
    private var clientActive = false

    private var upstreamChannel: Channel?
    private var upstreamHandler: HTTPUpstreamSideHandler?
    /// Bumped for each upstream connection: events of one given up are ignored.
    private var generation = 0
    private var upstreamConnecting = false
    private var upstreamReady = false
    private var upstreamResetSeen = false
    /// The upstream connection carried an `Upgrade` request: a server that did not switch
    /// may still have stopped parsing HTTP on it (NIO's decoder does), so it is not pooled.
    private var upstreamUpgradeSent = false

    private var exchange: HTTPExchange?
    /// Parts of requests a client sent before the answer to the one in flight (pipelining):
    /// kept in order, with reads stopped, and taken up once that answer is complete. At most
    /// what the decoder had already read, since reads stay stopped while it is not empty.
    private var pipelined = CircularBuffer<HTTPRequestFramer.Part>()
    private var replayingPipelined = false
    /// When the head of the request being read must be complete (408 past it); nil between
    /// requests and once a head is in.
    private var headDeadline: NIODeadline?
    /// One timer for the head and response deadlines, armed lazily: a deadline later than the
    /// one the timer is set for leaves it alone, and when it fires it re-arms for whatever is
    /// still due. A keep-alive connection then schedules nothing per request (a timer per
    /// request and its cancellation cost more than the rest of the request's own work).
    private var deadlineTimer: Scheduled<Void>?
    private var deadlineTimerAt = NIODeadline.distantFuture
    /// The client half-closed or an answer said `Connection: close`: close after this response.
    private var closeAfterResponse = false
    private var finished = false
    private var rejected = false

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

    private func armDeadlineTimer() {
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

    private func handleRequestPart(_ part: HTTPRequestFramer.Part) {
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

    // MARK: Requests

    private func startExchange(_ head: HTTPRequestHead, _ bytes: ByteBuffer) {
        headDeadline = nil
        guard exchange == nil else {
            // Requests are taken one at a time (`pipelined` holds the rest); anything else is
            // a bug that must not turn into crossed responses.
            closeAll()
            return
        }
        let exchange = HTTPExchange(isHead: head.method == .HEAD, clientKeepAlive: head.isKeepAlive)
        self.exchange = exchange
        tracker.requestsInFlight += 1
        if head.uri.utf8.count > settings.maxHeadBytes {
            reply(exchange, 431, "request line longer than \(settings.maxHeadBytes) bytes\n")
            answerAtOnceIfBodyAwaited(head, exchange)
            return
        }
        exchange.upgradeRequested = head.headers.contains(name: "upgrade")
        exchange.clientIsHTTP10 = head.version == .http1_0
        var head = head
        // The head goes upstream as the client sent it unless a header is taken out.
        var unchanged = true
        if !faultConfiguration.faults.isEmpty || settings.headerFaults.enabled {
            unchanged = decideFault(&head, exchange)
            if exchange.dropRequest || !clientActive {
                answerAtOnceIfBodyAwaited(head, exchange)
                return
            }
        }
        if exchange.upgradeRequested {
            upstreamUpgradeSent = true
        } else if head.version == .http1_1, head.headers.contains(name: "connection") {
            Self.removeHopByHopHeaders(&head.headers)
            unchanged = false
        }
        exchange.head = head
        exchange.headBytes = unchanged ? bytes : nil
        ensureUpstream()
        sendUpstream(.head(head), exchange)
    }

    /// Never removed on a `Connection` option's say-so: the request's framing and target.
    private static let framingHeaders: Set<String> = ["close", "content-length", "transfer-encoding", "host"]

    /// `Connection` and what it names are about the client's own connection (RFC 9110,
    /// section 7.6.1): a client's `Connection: close` ends its connection after the answer,
    /// while the upstream connection stays open for the next request or client.
    static func removeHopByHopHeaders(_ headers: inout HTTPHeaders) {
        for option in headers[canonicalForm: "connection"] where !framingHeaders.contains(option.lowercased()) {
            headers.remove(name: String(option))
        }
        headers.remove(name: "connection")
        headers.remove(name: "keep-alive")
        headers.remove(name: "proxy-connection")
    }

    /// Decides the request's fault; false when it took a fault header out of the head.
    private func decideFault(_ head: inout HTTPRequestHead, _ exchange: HTTPExchange) -> Bool {
        let headers = head.headers
        let decision = HTTPFaultPlanner.decide(
            faults: faultConfiguration.faults, headerFaults: settings.headerFaults,
            // The path ends at the query: found in UTF-8, not by walking Characters.
            request: RequestFacts(method: head.method.rawValue, path: head.uri[..<(head.uri.utf8.firstIndex(of: UInt8(ascii: "?")) ?? head.uri.endIndex)]),
            header: { headers.first(name: $0) }, clientAddress: { clientChannel?.remoteAddress?.addressBytes },
            random: &tracker.random)
        var unchanged = true
        if settings.headerFaults.enabled,
            headers.contains(name: HeaderFaults.delayHeader) || headers.contains(name: HeaderFaults.abortHeader)
        {
            // The service under test never sees the fault headers.
            head.headers.remove(name: HeaderFaults.delayHeader)
            head.headers.remove(name: HeaderFaults.abortHeader)
            unchanged = false
        }
        let fault: RequestFault
        switch decision {
        case .none:
            return unchanged
        case .badHeader(let reason):
            reply(exchange, 400, "faultline: \(reason)\n")
            return unchanged
        case .header(let headerFault):
            faultConfiguration.headerInjections(kind: headerFault.kind)?.increment()
            fault = headerFault
        case .rule(let rule, let ruleFault):
            faultConfiguration.injections(rule).increment()
            fault = ruleFault
            if case .abort = ruleFault { exchange.pendingReplyBytes = faultConfiguration.abortAnswer(rule) }
        }
        exchange.fault = fault
        switch fault {
        case .abort(let abort):
            exchange.dropRequest = true
            exchange.pendingReply = (abort.status, abort.headers, abort.body)
        case .reset(afterBodyBytes: nil):
            exchange.dropRequest = true
            if let clientChannel { ProxyConnection.reset(clientChannel) }
        case .blackhole(let closeAfter):
            exchange.dropRequest = true
            if let closeAfter {
                exchange.timer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(closeAfter.nanoseconds)) {
                    [self] in
                    exchange.timer = nil
                    closeAll()
                }
            }
        case .delayRequest(let nanoseconds):
            exchange.requestHeld = true
            exchange.timer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(nanoseconds)) { [self] in
                exchange.timer = nil
                exchange.requestHeld = false
                pumpRequest()
            }
        case .delayResponse, .truncate, .reset, .throttle:
            break  // acts on the response
        }
        return unchanged
    }

    /// A client that sent `Expect: 100-continue` holds its body back until it hears 100 (curl
    /// for 1 s, other clients longer), which only the upstream would send. So Faultline's own
    /// answer (an abort, a 400) goes out at once, as from a server that refuses the body (RFC
    /// 9110, section 10.1.1), and the connection closes after it: whether the body follows is
    /// then up to the client, so the next bytes could not be read as a request.
    private func answerAtOnceIfBodyAwaited(_ head: HTTPRequestHead, _ exchange: HTTPExchange) {
        guard clientActive, let reply = exchange.pendingReply, !exchange.requestEnded,
            head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }),
            head.headers.contains(name: "transfer-encoding") || (head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0) > 0
        else { return }
        exchange.pendingReply = nil
        exchange.clientKeepAlive = false
        answer(exchange, status: reply.status, headers: reply.headers, body: reply.body, made: exchange.pendingReplyBytes)
    }

    /// Faultline answers the request itself, once the request has been read in full.
    private func reply(_ exchange: HTTPExchange, _ status: Int, _ body: String) {
        exchange.dropRequest = true
        exchange.pendingReply = (status, [.init(name: "Content-Type", value: "text/plain; charset=utf-8")], body)
    }

    private func sendUpstream(_ part: HTTPClientRequestPart, _ exchange: HTTPExchange) {
        // The plain path: nothing waits before this part and the upstream takes it now; the
        // flush comes at the end of the read burst.
        if exchange.requestQueue.isEmpty, !exchange.requestHeld, upstreamReady, let upstream = upstreamHandler,
            upstream.isWritable
        {
            upstream.write(part, headBytes: exchange.headBytes)
            switch part {
            case .end: requestSent(exchange)
            case .body: exchange.bodyPartsSent += 1
            case .head: exchange.headSent = true
            }
            return
        }
        exchange.requestQueue.append(part)
        pumpRequest()
    }

    private func pumpRequest() {
        guard let exchange, !exchange.requestHeld, upstreamReady, let upstream = upstreamHandler else { return }
        var wrote = false
        while let part = exchange.requestQueue.first, upstream.isWritable {
            exchange.requestQueue.removeFirst()
            upstream.write(part, headBytes: exchange.headBytes)
            wrote = true
            switch part {
            case .head: exchange.headSent = true
            case .end: requestSent(exchange)
            case .body: exchange.bodyPartsSent += 1
            }
        }
        if wrote { upstream.flush() }
        if exchange.requestQueue.isEmpty { clientHandler?.resumeReading() }
    }

    private func requestSent(_ exchange: HTTPExchange) {
        exchange.headSent = true
        exchange.requestSent = true
        guard !exchange.responseHeadReceived else { return }
        exchange.responseDeadline = .now() + .nanoseconds(settings.responseTimeout.nanoseconds)
        armDeadlineTimer()
    }

    // MARK: Upstream

    /// Takes an idle connection from the loop's pool, or dials (only dials with `fromPool`
    /// false: a request sent again after a stale one must not meet another stale one).
    private func ensureUpstream(fromPool: Bool = true) {
        guard upstreamChannel == nil, !upstreamConnecting else { return }
        if fromPool, let (channel, handler) = tracker.upstreamPool.take(HTTPUpstreamPool.Target(listener.rule)) {
            generation += 1
            handler.adopt(by: self, generation: generation)
            upstreamChannel = channel
            upstreamHandler = handler
            upstreamReady = true
            upstreamResetSeen = false
            exchange?.onReusedUpstream = true
            return
        }
        exchange?.onReusedUpstream = false
        upstreamConnecting = true
        upstreamResetSeen = false
        generation += 1
        let generation = self.generation
        let loopBoundSelf = NIOLoopBound(self, eventLoop: eventLoop)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.nanoseconds(listener.rule.connectTimeout.nanoseconds))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = loopBoundSelf.value
                    let handler = HTTPUpstreamSideHandler(
                        connection: connection, generation: generation,
                        maxHeadBytes: max(connection.settings.maxHeadBytes, 64 * 1024))
                    if let tls = connection.listener.upstreamTLS {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls.context, serverHostname: tls.serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                    connection.upstreamHandler = handler
                    connection.upstreamChannel = channel
                }
            }
        let connected = listener.upstream.connect(bootstrap, on: eventLoop)
        connected.assumeIsolated().whenComplete { [self] result in
            guard generation == self.generation else {
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            upstreamConnecting = false
            switch result {
            case .success(let channel):
                guard clientActive else {
                    channel.close(promise: nil)
                    return
                }
                upstreamReady = true
                pumpRequest()
            case .failure(let error):
                upstreamHandler = nil
                upstreamChannel = nil
                let reason = UpstreamFailureReason(error)
                listener.metrics.connectFailures(reason).increment()
                metrics.upstreamErrors[HTTPUpstreamError(connectFailure: reason)]!.increment()
                tracker.upstreamFailures.failed(
                    reason.rawValue, error: error, connection: id, upstream: "\(listener.rule.upstream)",
                    message: "upstream connect failed; answering 502", logger: logger)
                if let exchange {
                    fail(exchange, 502, "faultline: cannot connect to the upstream \(listener.rule.upstream) (\(UpstreamFailureLog.describe(error)))\n")
                }
            }
        }
    }

    func mayReadUpstream(_ generation: Int) -> Bool {
        guard generation == self.generation else { return true }
        guard let exchange else { return true }  // an idle upstream: its EOF must be seen
        if exchange.upgrading { return false }  // the tunnel reads next
        // A held or paced response keeps parts in the queue: reads stop until it drains.
        return exchange.responseQueue.isEmpty && (clientHandler?.isWritable ?? false)
    }

    func upstreamReadComplete(_ generation: Int) {
        guard generation == self.generation else { return }
        clientHandler?.flush()
    }

    func upstreamBecameWritable(_ generation: Int) {
        guard generation == self.generation else { return }
        pumpRequest()
        clientHandler?.resumeReading()
    }

    func responsePart(_ part: HTTPResponseFramer.Part, generation: Int) {
        guard generation == self.generation, let exchange, exchange.headSent, !exchange.responseEndReceived else {
            // An answer nobody asked for: this upstream connection cannot be trusted.
            if generation == self.generation { closeUpstream() }
            return
        }
        if exchange.upgrading {
            // What the service sent right after its 101 belongs to the tunnel taking over.
            if case .tunnel(let bytes) = part {
                tracker.bytesDownstream &+= Int64(bytes.readableBytes)
                clientHandler?.write(bytes)
                clientHandler?.flush()
            }
            return
        }
        switch part {
        case .complete(let head, let bytes, let headLength):
            let (headBytes, unchanged) = finalResponseHead(head, bytes.getSlice(at: bytes.readerIndex, length: headLength)!, exchange)
            let bodyLength = bytes.readableBytes - headLength
            tracker.bytesDownstream &+= Int64(bodyLength)
            exchange.responseEndReceived = true
            if unchanged, exchange.responseQueue.isEmpty, !exchange.shapesResponse,
                let client = clientHandler, client.isWritable
            {
                // The plain path: the response as it came, in one write.
                exchange.responseHeadSent = true
                exchange.bodySent += bodyLength
                client.write(bytes)
                responseComplete(exchange, last: nil)
                return
            }
            sendToClient(.head(headBytes), exchange)
            if bodyLength > 0 { sendToClient(.body(bytes.getSlice(at: bytes.readerIndex + headLength, length: bodyLength)!), exchange) }
            sendToClient(.end(nil), exchange)
        case .head(let head, let bytes):
            if head.status < 200 {
                // 100 Continue and other interim answers go straight through.
                if head.status == 101 {
                    guard exchange.upgradeRequested, exchange.requestSent else {
                        closeUpstream()
                        fail(exchange, 502, "faultline: the upstream switched protocols without being asked\n")
                        return
                    }
                    exchange.upgrading = true
                    exchange.responseDeadline = nil
                    exchange.status = 101
                    clientHandler?.write(bytes)
                    clientHandler?.flush()
                    // After this callback returns: the handlers being removed are on the stack now.
                    eventLoop.assumeIsolated().execute { [self] in handOverToTunnel(exchange) }
                    return
                }
                clientHandler?.write(bytes)
                clientHandler?.flush()
                return
            }
            sendToClient(.head(finalResponseHead(head, bytes, exchange).bytes), exchange)
        case .body(let buffer):
            tracker.bytesDownstream &+= Int64(buffer.readableBytes)
            sendToClient(.body(buffer), exchange)
        case .framing(let buffer):
            sendToClient(.framing(buffer), exchange)
        case .end(let last):
            exchange.responseEndReceived = true
            sendToClient(.end(last), exchange)
        case .tunnel:
            // Bytes after a 101 that was not passed on: the connection is out of step.
            closeUpstream()
        }
    }

    /// A final response's head has come: the exchange takes note, and the head the client gets
    /// is returned (`bytes` itself, unless the client must hear something else about its
    /// connection).
    private func finalResponseHead(
        _ head: HTTPResponseFramer.Head, _ bytes: ByteBuffer, _ exchange: HTTPExchange
    ) -> (bytes: ByteBuffer, unchanged: Bool) {
        exchange.responseHeadReceived = true
        exchange.responseDeadline = nil
        exchange.status = head.status
        exchange.upstreamKeepAlive = head.keepAlive
        if case .delayResponse(let nanoseconds) = exchange.fault {
            exchange.responseHeld = true
            exchange.timer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(nanoseconds)) { [self] in
                exchange.timer = nil
                exchange.responseHeld = false
                pumpResponse()
            }
        }
        // The upstream's Connection header is about the upstream connection; the client
        // hears about its own: closed after this answer, or kept.
        let wanted: String? =
            !exchange.clientKeepAlive || !exchange.upstreamKeepAlive ? "close" : exchange.clientIsHTTP10 ? "keep-alive" : nil
        // Most often there is nothing to change: no header, or the upstream's own
        // "keep-alive" (nginx always sends it) is just as true of the client's connection.
        let unchanged =
            switch head.connection {
            case .absent: wanted == nil
            case .keepAlive: wanted == nil || wanted == "keep-alive"
            case .close: wanted == "close"
            case .other: false
            }
        return (unchanged ? bytes : HTTPResponseFramer.replacingConnection(in: bytes, with: wanted), unchanged)
    }

    private func sendToClient(_ part: HTTPResponseBytes, _ exchange: HTTPExchange) {
        if exchange.responseQueue.isEmpty, !exchange.shapesResponse, let client = clientHandler, client.isWritable {
            switch part {
            case .head(let bytes):
                exchange.responseHeadSent = true
                client.write(bytes)
            case .body(let bytes):
                exchange.bodySent += bytes.readableBytes
                client.write(bytes)
            case .framing(let bytes):
                client.write(bytes)
            case .end(let last):
                responseComplete(exchange, last: last)
            }
            return
        }
        exchange.responseQueue.append(part)
        pumpResponse()
    }

    /// Moves queued response parts to the client as far as the fault and the client allow.
    private func pumpResponse() {
        guard let exchange, !exchange.responseHeld, exchange.timer == nil, let client = clientHandler else { return }
        var wrote = false
        defer { if wrote { client.flush() } }
        while let part = exchange.responseQueue.first {
            guard client.isWritable else { return }
            switch part {
            case .head(let bytes):
                exchange.responseQueue.removeFirst()
                exchange.responseHeadSent = true
                client.write(bytes)
                wrote = true
            case .body(var buffer):
                switch exchange.fault {
                case .truncate(let limit), .reset(afterBodyBytes: .some(let limit)):
                    let allowed = max(0, limit - exchange.bodySent)
                    if buffer.readableBytes > allowed {
                        // The body stops here: a FIN (truncate) or an RST (reset).
                        if allowed > 0 { client.write(buffer.readSlice(length: allowed)!) }
                        exchange.bodySent += allowed
                        wrote = false
                        cutResponse(exchange, reset: { if case .reset = exchange.fault { true } else { false } }())
                        return
                    }
                case .throttle(let rate):
                    let now = NIODeadline.now()
                    if exchange.nextWriteAt > now {
                        armResponseTimer(exchange, at: exchange.nextWriteAt)
                        return
                    }
                    // Writes of at most 1/20 s worth, as the TCP bandwidth fault does.
                    let length = min(buffer.readableBytes, max(1, min(65536, rate / 20)))
                    exchange.nextWriteAt = max(now, exchange.nextWriteAt)
                        + .nanoseconds(Int64(Double(length) / Double(rate) * 1e9))
                    if length < buffer.readableBytes {
                        let piece = buffer.readSlice(length: length)!
                        exchange.responseQueue[exchange.responseQueue.startIndex] = .body(buffer)
                        exchange.bodySent += length
                        client.write(piece)
                        wrote = true
                        continue
                    }
                default:
                    break
                }
                exchange.responseQueue.removeFirst()
                exchange.bodySent += buffer.readableBytes
                client.write(buffer)
                wrote = true
            case .framing(let bytes):
                exchange.responseQueue.removeFirst()
                client.write(bytes)
                wrote = true
            case .end(let last):
                exchange.responseQueue.removeFirst()
                wrote = false
                responseComplete(exchange, last: last)
                // The upstream's reads were held while the queue was full; the next response
                // on a kept-alive connection comes through them.
                upstreamHandler?.resumeReading()
                return
            }
        }
        upstreamHandler?.resumeReading()
    }

    private func armResponseTimer(_ exchange: HTTPExchange, at deadline: NIODeadline) {
        exchange.timer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            exchange.timer = nil
            pumpResponse()
        }
    }

    /// The body was cut by a fault: the client sees the connection end mid-body.
    private func cutResponse(_ exchange: HTTPExchange, reset: Bool) {
        closeUpstream()
        endExchange(exchange, counted: true)
        guard let clientChannel else { return }
        if reset {
            clientHandler?.flush()
            ProxyConnection.reset(clientChannel)
        } else {
            clientHandler?.flush()
            clientChannel.close(mode: .all, promise: nil)
        }
    }

    private func responseComplete(_ exchange: HTTPExchange, last: ByteBuffer?) {
        // A client that half-closed after pipelining requests still gets every answer.
        let close = !exchange.clientKeepAlive || !exchange.upstreamKeepAlive || (closeAfterResponse && pipelined.isEmpty)
        if !exchange.upstreamKeepAlive || !exchange.requestSent {
            // The upstream closes, or it answered before the whole request reached it: either
            // way the next request needs a fresh connection.
            closeUpstream()
        }
        endExchange(exchange, counted: true)
        clientHandler?.writeEnd(last, thenClose: close)
        if close {
            pipelined.removeAll()
        } else {
            if exchange.upgradeRequested, !exchange.upgrading {
                // The upstream did not switch protocols: the client's bytes are HTTP again.
                clientHandler?.resumeAfterRefusedUpgrade()
                upstreamHandler?.flush()
            }
            takeUpPipelined()
        }
    }

    /// Starts the requests that waited for the answer just completed, until one is in flight
    /// again; reads resume once none is left.
    private func takeUpPipelined() {
        // An answer completed while a pipelined part is being handled (an abort, say) comes
        // back here: the loop below goes on with the next part.
        guard !replayingPipelined else { return }
        guard !pipelined.isEmpty else {
            clientHandler?.resumeReading()
            return
        }
        replayingPipelined = true
        defer { replayingPipelined = false }
        while clientActive, exchange?.requestEnded != true, let part = pipelined.popFirst() {
            handleRequestPart(part)
        }
        // Not inside a client read: no read-complete will flush what went upstream.
        upstreamHandler?.flush()
        if pipelined.isEmpty { clientHandler?.resumeReading() }
    }

    /// After a `101`: both channels drop their HTTP handlers and a byte-forwarding
    /// `ProxyConnection` takes them over, as a TCP listener would forward them.
    private func handOverToTunnel(_ exchange: HTTPExchange) {
        guard self.exchange === exchange, let client = clientChannel, let upstream = upstreamChannel,
            client.isActive, upstream.isActive
        else {
            closeAll()
            return
        }
        endExchange(exchange, counted: true)
        let tunnel = ProxyConnection(
            id: id, clientChannel: client, listener: listener.withoutFaults(), tracker: tracker, logger: logger)
        do {
            // The tunnel's handlers go in first, so that bytes the HTTP decoders still hold
            // (a frame the service sent right after its 101) are forwarded, not lost.
            try tunnel.adoptTunnel(client: client, upstream: upstream)
            // The client handler passes on what the client sent behind its upgrade request as it goes.
            if let handler = clientHandler { _ = client.pipeline.syncOperations.removeHandler(handler) }
            // The upstream's bytes after its 101 have been passed on already (`responsePart`).
            let upstreamPipeline = upstream.pipeline.syncOperations
            if let handler = upstreamHandler { _ = upstreamPipeline.removeHandler(handler) }
        } catch {
            logger.warning("WebSocket hand-over failed; closing", metadata: ["conn.id": "\(id)", "error": "\(error)"])
            client.close(promise: nil)
            upstream.close(promise: nil)
            return
        }
        // This connection is over; the tunnel owns both channels from here.
        finished = true
        tracker.remove(self)
        generation += 1
        clientHandler = nil
        upstreamHandler = nil
        clientChannel = nil
        upstreamChannel = nil
        client.read()
        upstream.read()
    }

    func upstreamError(_ error: any Error, generation: Int) {
        guard generation == self.generation else { return }
        if let reason = UpstreamTLSFailure.reason(error) {
            listener.metrics.connectFailures(.tls).increment()
            metrics.upstreamErrors[.connectTLS]!.increment()
            tracker.upstreamFailures.failed(
                UpstreamFailureReason.tls.rawValue, error: error, connection: id, upstream: "\(listener.rule.upstream)",
                message: "upstream TLS handshake failed; answering 502", logger: logger)
            let channel = upstreamChannel
            forgetUpstream()
            channel?.close(promise: nil)
            if let exchange { fail(exchange, 502, "faultline: TLS with the upstream \(listener.rule.upstream) failed (\(reason))\n") }
            return
        }
        if let ioError = error as? IOError, ioError.errnoCode == ECONNRESET || ioError.errnoCode == EPIPE {
            upstreamResetSeen = true
        } else if error is HTTPResponseFramer.FramingError {
            metrics.upstreamErrors[.badResponse]!.increment()
            let channel = upstreamChannel
            forgetUpstream()
            channel?.close(promise: nil)
            if let exchange { fail(exchange, 502, "faultline: the upstream sent a malformed response\n") }
            return
        }
        upstreamChannel?.close(promise: nil)
    }

    func upstreamBecameInactive(_ generation: Int) {
        guard generation == self.generation else { return }
        let reset = upstreamResetSeen
        forgetUpstream()
        guard let exchange, !exchange.responseEndReceived else { return }
        if !exchange.headSent {
            // Nothing of this request reached the old connection: dial again.
            ensureUpstream()
            pumpRequest()
            return
        }
        if retryStale(exchange) { return }
        metrics.upstreamErrors[reset ? .reset : .closed]!.increment()
        fail(exchange, 502, reset
            ? "faultline: the upstream reset the connection before answering\n"
            : "faultline: the upstream closed the connection before answering\n")
    }

    /// A request on a reused upstream connection that the server closed before answering
    /// (it was closing the idle connection as the request went out): sent once more on a
    /// fresh connection, when sending it twice cannot do harm. That is what HTTP clients do
    /// with kept-alive connections (RFC 9112, section 9.3.1): methods that are idempotent by
    /// definition, no request body, and nothing of the response seen yet.
    private func retryStale(_ exchange: HTTPExchange) -> Bool {
        guard exchange.onReusedUpstream, !exchange.retriedStale, exchange.requestSent, exchange.bodyPartsSent == 0,
            !exchange.responseHeadReceived, exchange.responseQueue.isEmpty, let head = exchange.head,
            [.GET, .HEAD, .OPTIONS, .TRACE].contains(head.method)
        else { return false }
        exchange.retriedStale = true
        exchange.responseDeadline = nil
        exchange.headSent = false
        exchange.requestSent = false
        exchange.requestQueue.removeAll()
        exchange.requestQueue.append(.head(head))
        exchange.requestQueue.append(.end(nil))
        metrics.upstreamErrors[.staleRetried]!.increment()
        ensureUpstream(fromPool: false)
        pumpRequest()
        return true
    }

    /// The client is gone between two requests: its upstream connection, kept alive by the
    /// server, waits in the loop's pool for the next client instead of being closed.
    private func releaseUpstream() {
        guard let channel = upstreamChannel, let handler = upstreamHandler, upstreamReady, !upstreamConnecting,
            !upstreamUpgradeSent, tracker.upstreamPool.put(channel, handler, target: HTTPUpstreamPool.Target(listener.rule))
        else {
            closeUpstream()
            return
        }
        forgetUpstream()
    }

    private func forgetUpstream() {
        generation += 1
        upstreamUpgradeSent = false
        upstreamChannel = nil
        upstreamHandler = nil
        upstreamReady = false
        upstreamConnecting = false
    }

    private func closeUpstream() {
        let channel = upstreamChannel
        forgetUpstream()
        channel?.close(promise: nil)
    }

    // MARK: Answers of Faultline's own

    /// An answer made by Faultline (abort, 400 for a bad fault header, 501): keep-alive unless
    /// the request said otherwise.
    private func answer(
        _ exchange: HTTPExchange, status: Int, headers: [HTTPAbort.HeaderField], body: String, made: ByteBuffer? = nil
    ) {
        exchange.status = status
        exchange.upstreamKeepAlive = true
        exchange.requestSent = true  // nothing went upstream, so the upstream connection stays usable
        exchange.responseHeadSent = true
        let closing = !exchange.clientKeepAlive || (closeAfterResponse && pipelined.isEmpty)
        if let made, !closing, !exchange.clientIsHTTP10, !exchange.isHead {
            clientHandler?.write(made)
        } else {
            // The client hears whether its connection stays: an HTTP/1.0 client only keeps it when told.
            var fields = headers.map { (name: $0.name, value: $0.value) }
            if closing {
                fields.append((name: "Connection", value: "close"))
            } else if exchange.clientIsHTTP10 {
                fields.append((name: "Connection", value: "keep-alive"))
            }
            clientHandler?.write(HTTPResponseBytes.answer(status: status, headers: fields, body: body, isHead: exchange.isHead))
        }
        responseComplete(exchange, last: nil)
    }

    /// The upstream failed this request (502, 504): answered if no response has started, the
    /// connection closed either way (the request body may be half read).
    private func fail(_ exchange: HTTPExchange, _ status: Int, _ body: String) {
        guard self.exchange === exchange else { return }
        exchange.cancelTimers()
        exchange.responseQueue.removeAll()
        guard !exchange.responseHeadSent else {
            endExchange(exchange, counted: true)
            // What the client was given of the response goes out before the close (the head
            // may still wait for its flush), so that it sees a response cut short, not none.
            clientHandler?.writeEnd(nil, thenClose: true)
            closeUpstream()
            return
        }
        exchange.status = status
        exchange.responseHeadSent = true
        let headers = [(name: "Content-Type", value: "text/plain; charset=utf-8"), (name: "Connection", value: "close")]
        clientHandler?.write(HTTPResponseBytes.answer(status: status, headers: headers, body: body, isHead: exchange.isHead))
        endExchange(exchange, counted: true)
        clientHandler?.writeEnd(nil, thenClose: true)
    }

    /// A request that cannot be parsed or took too long: answered as plain bytes past the
    /// HTTP codec, then the connection closes.
    private func reject(_ status: Int, _ reason: String, _ message: String) {
        // The decoder may report the same broken request more than once: answer it once.
        guard !rejected else { return }
        rejected = true
        tracker.requestsByClass[3] &+= 1
        guard let context = clientHandler?.context else {
            closeAll()
            return
        }
        let body = "faultline: \(message)\n"
        let text = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer(string: text))).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Ending

    /// The exchange is over: counted by status class and duration if it was answered.
    private func endExchange(_ exchange: HTTPExchange, counted: Bool) {
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
