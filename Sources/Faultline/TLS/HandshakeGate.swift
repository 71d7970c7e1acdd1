import NIOCore

/// In front of the TLS handler of a connection that a handshake fault took: on the client's
/// first bytes (its hello) it closes the connection, or holds them for a delay and then lets
/// the handshake go on as usual. Reads stay stopped while it holds, so nothing piles up.
final class HandshakeGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    enum Action: Equatable {
        case close
        case delay(Duration)
    }

    private let action: Action
    private var held: [NIOAny] = []
    private var holding = false
    private var readPending = false

    init(_ action: Action) {
        self.action = action
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch action {
        case .close:
            context.close(promise: nil)
        case .delay(let delay):
            held.append(data)
            guard !holding else { return }
            holding = true
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay.nanoseconds)) {
                let (gate, context) = loopBound.value
                gate.release(context: context)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !holding { context.fireChannelReadComplete() }
    }

    func read(context: ChannelHandlerContext) {
        if holding {
            readPending = true
        } else {
            context.read()
        }
    }

    private func release(context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        holding = false
        for data in held { context.fireChannelRead(data) }
        held = []
        context.fireChannelReadComplete()
        if readPending { context.read() }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
