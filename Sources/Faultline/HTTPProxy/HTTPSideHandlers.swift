import NIOCore
import NIOHTTP1

/// The client pipeline's one handler: the client's bytes in, cut into request parts by an
/// `HTTPRequestFramer` and handed to the connection; response bytes out (the upstream's as they
/// came, or Faultline's own answers, see `HTTPResponseBytes`); and the read gate for
/// back-pressure, as in the TCP proxy.
final class HTTPClientSideHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connection: HTTPProxyConnection
    private(set) var context: ChannelHandlerContext?
    private var framer: HTTPRequestFramer
    /// Bytes read behind a request that asked for `Upgrade`: the tunnel's if the upstream
    /// switches protocols (passed on when this handler is removed), HTTP again if not.
    private var heldForUpgrade: ByteBuffer?
    private var readGate = ReadGate()
    private var inactive = false
    /// The channel's writability as its events said: NIO reports every change, and at once for
    /// the write that fills the channel's buffer. Asked on every forwarded part and read, so it
    /// is kept here rather than fetched from the channel through the pipeline each time.
    private(set) var isWritable = false

    init(connection: HTTPProxyConnection, maxHeadBytes: Int) {
        self.connection = connection
        self.framer = HTTPRequestFramer(maxHeadBytes: maxHeadBytes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        isWritable = context.channel.isWritable
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        isWritable = false
        // Handed over to a tunnel: what the client sent behind its upgrade request is its.
        if let held = heldForUpgrade {
            heldForUpgrade = nil
            context.fireChannelRead(wrapInboundOut(held))
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        connection.clientBecameActive()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
        connection.clientBecameInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        connection.clientBytesArrived()
        if var held = heldForUpgrade {
            heldForUpgrade = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        frame(&buffer)
    }

    /// Hands the requests in `buffer` to the connection, part by part.
    private func frame(_ buffer: inout ByteBuffer) {
        do {
            while !inactive, let part = try framer.next(&buffer) {
                connection.requestPart(part)
            }
        } catch {
            connection.requestMalformed(error)
            return
        }
        if framer.isWaitingForUpgrade, buffer.readableBytes > 0 { heldForUpgrade = buffer }
    }

    /// The upstream answered an `Upgrade` request without switching: the client's next
    /// request, if it already sent one, is read now.
    func resumeAfterRefusedUpgrade() {
        guard framer.isWaitingForUpgrade else { return }
        framer.resumeAfterRefusedUpgrade()
        if var held = heldForUpgrade {
            heldForUpgrade = nil
            frame(&held)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.clientReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        isWritable = context.channel.isWritable
        if isWritable { connection.clientBecameWritable() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            if framer.isBetweenRequests {
                connection.clientInputClosed()
            } else {
                // The rest of the request will never come.
                connection.requestMalformed(.init(description: "the client closed its side in the middle of a request"))
            }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.clientError(error)
    }

    func read(context: ChannelHandlerContext) {
        // Waiting to hear whether the upstream switches protocols: one read's bytes at most are held.
        readGate.read(context, allowed: connection.mayReadClient() && !framer.isWaitingForUpgrade)
    }

    func resumeReading() {
        readGate.resume(context)
    }

    func write(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    /// Writes the last bytes of a response (if any) and flushes; with `thenClose`, closes the
    /// connection once everything before it is written.
    func writeEnd(_ last: ByteBuffer?, thenClose: Bool) {
        guard let context else { return }
        guard thenClose else {
            if let last { context.write(wrapOutboundOut(last), promise: nil) }
            context.flush()
            return
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(last ?? ByteBuffer())).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// The upstream pipeline's HTTP handler (after TLS, if the upstream speaks it): request parts
/// out, written as bytes by `HTTPRequestBytes`, and the upstream's bytes in, cut into responses
/// by an `HTTPResponseFramer`. `generation` tells a current upstream connection from one the
/// connection has already given up. Between two clients the connection may wait in the loop's
/// `HTTPUpstreamPool`, parked: it belongs to no client then, and anything it does (close, send
/// bytes nobody asked for, fail) takes it out of the pool.
final class HTTPUpstreamSideHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The client connection using this upstream connection; nil while parked.
    private var connection: HTTPProxyConnection?
    private(set) var generation: Int
    private var pool: HTTPUpstreamPool?
    private(set) var context: ChannelHandlerContext?
    private var readGate = ReadGate()
    /// The channel's writability as its events said: NIO reports every change, and at once for
    /// the write that fills the channel's buffer. Asked on every forwarded part and read, so it
    /// is kept here rather than fetched from the channel through the pipeline each time.
    private(set) var isWritable = false

    private var framer: HTTPResponseFramer
    /// The line end after each chunk of a chunked request body: one shared buffer, not one per chunk.
    private static let chunkEnd = ByteBuffer(string: "\r\n")
    private var request = HTTPRequestBytes()

    init(connection: HTTPProxyConnection, generation: Int, maxHeadBytes: Int) {
        self.connection = connection
        self.generation = generation
        self.framer = HTTPResponseFramer(maxHeadBytes: maxHeadBytes)
    }

    /// Into the pool: from now on the handler answers to the pool only, and keeps reading so
    /// that the server closing the idle connection is seen at once.
    func park(in pool: HTTPUpstreamPool) {
        self.pool = pool
        connection = nil
        resumeReading()
    }

    func unpark() {
        pool = nil
    }

    /// Taken from the pool by a client connection, as its upstream of this generation.
    func adopt(by connection: HTTPProxyConnection, generation: Int) {
        self.connection = connection
        self.generation = generation
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        isWritable = context.channel.isWritable
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        isWritable = false
    }

    func channelInactive(context: ChannelHandlerContext) {
        guard let connection else {
            pool?.discard(self)
            return
        }
        // A body without a length ends with the connection.
        if framer.connectionEnded() { connection.responsePart(.end(nil), generation: generation) }
        connection.upstreamBecameInactive(generation)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection else {
            // An idle connection has nothing to say: a server that speaks now is out of step.
            pool?.discard(self)
            return
        }
        var buffer = unwrapInboundIn(data)
        let generation = self.generation
        do {
            while let part = try framer.next(&buffer) {
                connection.responsePart(part, generation: generation)
            }
        } catch {
            connection.upstreamError(error, generation: generation)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection?.upstreamReadComplete(generation)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        isWritable = context.channel.isWritable
        if isWritable { connection?.upstreamBecameWritable(generation) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let connection else {
            pool?.discard(self)
            return
        }
        connection.upstreamError(error, generation: generation)
    }

    func read(context: ChannelHandlerContext) {
        readGate.read(context, allowed: connection?.mayReadUpstream(generation) ?? true)
    }


    func resumeReading() {
        readGate.resume(context)
    }

    /// Writes a request part; a head as `headBytes` when given (the client's own bytes).
    func write(_ part: HTTPClientRequestPart, headBytes: ByteBuffer? = nil) {
        guard let context else { return }
        switch part {
        case .head(let head):
            // The answer to a HEAD has no body, whatever its head says.
            framer.answersHeadRequest = head.method == .HEAD
            let bytes = request.head(head, as: headBytes, allocator: context.channel.allocator)
            context.write(wrapOutboundOut(bytes), promise: nil)
        case .body(let data):
            if let header = request.chunkHeader(length: data.readableBytes, allocator: context.channel.allocator) {
                context.write(wrapOutboundOut(header), promise: nil)
                context.write(NIOAny(data), promise: nil)
                context.write(wrapOutboundOut(Self.chunkEnd), promise: nil)
            } else {
                context.write(NIOAny(data), promise: nil)
            }
        case .end(let trailers):
            if let end = request.end(trailers, allocator: context.channel.allocator) {
                context.write(wrapOutboundOut(end), promise: nil)
            }
        }
    }

    func flush() {
        context?.flush()
    }
}
