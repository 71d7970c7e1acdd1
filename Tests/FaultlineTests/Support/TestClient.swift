import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// What a test client saw on its connection.
struct TransferResult: Sendable {
    var received = 0
    var mismatchAt: Int?
    var sawEOF = false
    var reset = false
    var error: String?
    /// The client's own timeout fired before the peer closed.
    var timedOut = false
    /// Time from connect to the first byte received, and to the end.
    var firstByteAfter: Duration?
    var closedAfter: Duration = .zero
    /// The first bytes received, for tests that read a header.
    var head = ByteBuffer()
}

/// Sends `sendBytes` pattern bytes (then optionally a FIN) and reads what comes back,
/// checking it against the pattern from `verifyFrom` (nil: no check). It closes once it has
/// `closeAfter` bytes, or when the peer closes. The result is delivered when the channel closes.
final class TransferHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let sendBytes: Int
    let halfCloseAfterSend: Bool
    let verifyFrom: Int?
    let closeAfter: Int?
    let done: EventLoopPromise<TransferResult>
    let timeout: TimeAmount?
    private let started = ContinuousClock.now
    private var sent = 0
    private var result = TransferResult()
    private var closedHere = false

    init(sendBytes: Int, halfCloseAfterSend: Bool, verifyFrom: Int?, closeAfter: Int?, timeout: TimeAmount? = nil,
         done: EventLoopPromise<TransferResult>) {
        self.timeout = timeout
        self.sendBytes = sendBytes
        self.halfCloseAfterSend = halfCloseAfterSend
        self.verifyFrom = verifyFrom
        self.closeAfter = closeAfter
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        if let timeout {
            let channel = context.channel
            context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                guard channel.isActive else { return }
                result.timedOut = true
                closedHere = true
                channel.close(promise: nil)
            }
        }
        push(context: context)
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        push(context: context)
    }

    private func push(context: ChannelHandlerContext) {
        while sent < sendBytes, context.channel.isWritable {
            let count = min(65536, sendBytes - sent)
            context.writeAndFlush(NIOAny(Pattern.chunk(from: sent, count: count)), promise: nil)
            sent += count
        }
        if sent == sendBytes, halfCloseAfterSend {
            sent += 1  // only once
            context.close(mode: .output, promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if result.firstByteAfter == nil { result.firstByteAfter = ContinuousClock.now - started }
        if result.head.readableBytes < 64 {
            var copy = buffer
            result.head.writeBuffer(&copy)
        }
        if let verifyFrom, result.mismatchAt == nil,
            let bad = Pattern.firstMismatch(in: buffer, at: verifyFrom + result.received)
        {
            result.mismatchAt = bad
        }
        result.received += buffer.readableBytes
        if let closeAfter, result.received >= closeAfter {
            closedHere = true
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            result.sawEOF = true
            closedHere = true
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? IOError, error.errnoCode == ECONNRESET {
            result.reset = true
        } else {
            result.error = "\(error)"
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // NIO closes a channel whose output is already shut as soon as the peer's FIN
        // arrives, without an inputClosed event: a close with no error and not asked for
        // by this handler is that FIN.
        if result.error == nil, !result.reset, !closedHere { result.sawEOF = true }
        result.closedAfter = ContinuousClock.now - started
        done.succeed(result)
    }
}

enum TestClient {
    /// Connects to 127.0.0.1:`port`, runs a `TransferHandler`, and returns its result.
    static func transfer(
        port: Int,
        group: EventLoopGroup,
        send: Int = 0,
        halfClose: Bool = false,
        verifyFrom: Int? = 0,
        closeAfter: Int? = nil,
        timeout: TimeAmount? = .seconds(30)
    ) async throws -> TransferResult {
        let loop = group.next()
        let done = loop.makePromise(of: TransferResult.self)
        do {
        _ = try await ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        TransferHandler(
                            sendBytes: send, halfCloseAfterSend: halfClose, verifyFrom: verifyFrom,
                            closeAfter: closeAfter, timeout: timeout, done: done))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        } catch {
            done.fail(error)
            throw error
        }
        return try await done.futureResult.get()
    }
}
