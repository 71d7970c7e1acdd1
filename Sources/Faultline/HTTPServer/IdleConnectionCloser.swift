import NIOCore
import NIOHTTP1

/// Closes a connection of the small HTTP servers (metrics, control, Toxiproxy API, demo) that
/// has neither read nor written for a while, once `IdleStateHandler` says so: without it, a
/// client that opens connections and leaves them (a forgotten script, a port scanner) would
/// hold file descriptors, which the proxy's own clients need, for as long as it likes.
final class IdleConnectionCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
