import NIOCore

/// The thin channel handler on each of the two channels of a proxied connection. It turns
/// channel events into calls on the `ProxyConnection` that owns both sides, and it is the
/// gate for back-pressure: an outbound `read()` passes only while the connection says this
/// side may read (its partner is connected and writable), otherwise it is held and resumed later.
final class ProxySideHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let side: ProxySide
    private let connection: ProxyConnection
    private(set) var context: ChannelHandlerContext?
    private var readGate = ReadGate()
    /// The channel's writability as its events said: NIO reports every change, and at once for
    /// the write that fills the channel's buffer. Asked on every forwarded part and read, so it
    /// is kept here rather than fetched from the channel through the pipeline each time.
    private(set) var isWritable = false

    init(side: ProxySide, connection: ProxyConnection) {
        self.side = side
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
        connection.sideBecameActive(side)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.sideBecameInactive(side)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.forward(unwrapInboundIn(data), from: side)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection.readComplete(from: side)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        isWritable = context.channel.isWritable
        connection.writabilityChanged(side, isWritable: isWritable)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            connection.inputClosed(side)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.errorCaught(error, on: side)
    }

    func read(context: ChannelHandlerContext) {
        readGate.read(context, allowed: connection.mayRead(side))
    }

    // MARK: Called by the connection

    func resumeReading() {
        readGate.resume(context)
    }

    func write(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    func flush() {
        context?.flush()
    }
}
