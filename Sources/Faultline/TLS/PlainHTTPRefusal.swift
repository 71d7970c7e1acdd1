import NIOCore

/// In front of the TLS handler of an http listener: a client that speaks plain HTTP to it
/// (`http://` to a TLS port) gets a plain-text `400` that says so, as from nginx, instead of an
/// empty reply. A TLS client's first byte is a record type (22, a handshake); a request's is a
/// method's first letter. Decided on the first bytes; a TLS client's go on, and this handler leaves.
final class PlainHTTPRefusal: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let answer: ByteBuffer = {
        let body = "faultline: this listener speaks TLS (use https://); a plain HTTP request was sent to it\n"
        return ByteBuffer(string: "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body)
    }()

    private var decided = false
    /// Counts the handshake as `not_tls` (the watcher behind the TLS handler, which does not
    /// pass on errors from in front of it).
    private let watcher: HandshakeOutcomeWatcher

    init(countingIn watcher: HandshakeOutcomeWatcher) {
        self.watcher = watcher
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else {
            context.fireChannelRead(data)
            return
        }
        decided = true
        let first = unwrapInboundIn(data).readableBytesView.first ?? 0
        guard (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first) else {
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        // Counted first: the write may complete, and the close end the channel, right here.
        watcher.plainHTTPRefused()
        // Written from here, before the TLS handler: plain bytes on the wire.
        context.writeAndFlush(wrapOutboundOut(Self.answer)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}
