import FaultlineRules
import NIOCore
import NIOHTTP1

/// A request from its head to the upstream: the fault decision, and the request bytes sent
/// on with back-pressure.
extension HTTPProxyConnection {
    func startExchange(_ head: HTTPRequestHead, _ bytes: ByteBuffer) {
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

    func sendUpstream(_ part: HTTPClientRequestPart, _ exchange: HTTPExchange) {
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

    func pumpRequest() {
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
}
