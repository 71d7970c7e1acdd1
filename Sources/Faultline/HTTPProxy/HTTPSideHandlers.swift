import NIOCore
import NIOHTTP1

/// First in the client pipeline, before the HTTP decoder: it tells the connection that bytes
/// arrived (the head timeout starts with a request's first byte), and Faultline's own error
/// replies (400, 408, 431) are written from its context, so that they go out even while the
/// handlers after it are being torn down by the decoder's error.
final class HTTPHeadWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connection: HTTPProxyConnection
    private(set) var context: ChannelHandlerContext?

    init(connection: HTTPProxyConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.clientBytesArrived()
        context.fireChannelRead(data)
    }
}

/// Last in the client pipeline (after NIO's HTTP request decoder): request parts in, response
/// bytes out (the upstream's as they came, or Faultline's own answers, see `HTTPResponseBytes`),
/// and the read gate for back-pressure, as in the TCP proxy.
final class HTTPClientSideHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connection: HTTPProxyConnection
    private(set) var context: ChannelHandlerContext?
    private var readHeld = false
    /// The channel's writability as its events said: NIO reports every change, and at once for
    /// the write that fills the channel's buffer. Asked on every forwarded part and read, so it
    /// is kept here rather than fetched from the channel through the pipeline each time.
    private(set) var isWritable = false

    init(connection: HTTPProxyConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        isWritable = context.channel.isWritable
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        isWritable = false
    }

    func channelActive(context: ChannelHandlerContext) {
        connection.clientBecameActive()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.clientBecameInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.requestPart(unwrapInboundIn(data))
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
            connection.clientInputClosed()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.clientError(error)
    }

    func read(context: ChannelHandlerContext) {
        if connection.mayReadClient() {
            context.read()
        } else {
            readHeld = true
        }
    }


    func resumeReading() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
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
    private var readHeld = false
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
        if connection?.mayReadUpstream(generation) ?? true {
            context.read()
        } else {
            readHeld = true
        }
    }


    func resumeReading() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    func write(_ part: HTTPClientRequestPart) {
        guard let context else { return }
        switch part {
        case .head(let head):
            // The answer to a HEAD has no body, whatever its head says.
            framer.answersHeadRequest = head.method == .HEAD
            context.write(wrapOutboundOut(request.head(head, allocator: context.channel.allocator)), promise: nil)
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
