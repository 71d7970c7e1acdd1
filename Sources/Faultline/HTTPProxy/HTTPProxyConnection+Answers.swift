import FaultlineRules
import NIOCore

/// Answers Faultline makes itself: an abort, a 502 or 504, a 400 to a bad request.
extension HTTPProxyConnection {
    /// An answer made by Faultline (abort, 400 for a bad fault header, 501): keep-alive unless
    /// the request said otherwise.
    func answer(
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
    func fail(_ exchange: HTTPExchange, _ status: Int, _ body: String) {
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
    func reject(_ status: Int, _ reason: String, _ message: String) {
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
}
