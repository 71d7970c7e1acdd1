import NIOCore

/// Closes its channel when `IdleStateHandler` (placed before it) reports the channel idle.
/// The small HTTP servers (metrics, control, Toxiproxy API, demo) use it so that a client that
/// opens connections and leaves them (a forgotten script, a port scanner) cannot hold file
/// descriptors, which the proxy's own clients need, for as long as it likes; `faultctl` uses it
/// so that a daemon that does not answer ends the command instead of hanging a script.
public final class IdleConnectionCloser: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    public init() {}

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
