import NIOCore

/// Closes its channel when `IdleStateHandler` (placed before it) reports the channel idle.
/// The small HTTP servers (metrics, control, Toxiproxy API, demo) use it so that a client that
/// opens connections and leaves them (a forgotten script, a port scanner) cannot hold file
/// descriptors, which the proxy's own clients need, for as long as it likes.
final class IdleConnectionCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
