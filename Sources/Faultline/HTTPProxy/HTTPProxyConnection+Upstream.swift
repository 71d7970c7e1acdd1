import NIOCore
import NIOPosix
import NIOSSL

/// The upstream connection: taken from the pool or dialed, its failures, and its release
/// back to the pool or its close.
extension HTTPProxyConnection {
    /// Takes an idle connection from the loop's pool, or dials (only dials with `fromPool`
    /// false: a request sent again after a stale one must not meet another stale one).
    func ensureUpstream(fromPool: Bool = true) {
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
    func releaseUpstream() {
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

    func closeUpstream() {
        let channel = upstreamChannel
        forgetUpstream()
        channel?.close(promise: nil)
    }
}
