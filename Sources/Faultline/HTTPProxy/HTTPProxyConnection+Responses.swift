import NIOCore

/// A response from its head to its end: passed on as the upstream sent it, held or cut by a
/// fault, pipelined requests taken up after it, and the hand-over to a tunnel after a `101`.
extension HTTPProxyConnection {
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
    func pumpResponse() {
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

    func responseComplete(_ exchange: HTTPExchange, last: ByteBuffer?) {
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
}
