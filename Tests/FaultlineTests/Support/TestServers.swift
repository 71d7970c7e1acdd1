import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Upstream servers for the proxy tests, on 127.0.0.1 (or `host`) port 0.
final class TestServer: Sendable {
    let channel: Channel
    var port: Int { channel.localAddress!.port! }

    private init(channel: Channel) {
        self.channel = channel
    }

    static func start(
        group: EventLoopGroup, host: String = "127.0.0.1", halfClosure: Bool = true,
        handler: @escaping @Sendable () -> ChannelHandler
    ) async throws -> TestServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Room for the concurrency test's burst of connects: an overflowing accept
            // queue on the test server would look like a proxy failure.
            .serverChannelOption(.backlog, value: 4096)
            .childChannelOption(.allowRemoteHalfClosure, value: halfClosure)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler())
                }
            }
            .bind(host: host, port: 0).get()
        return TestServer(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }
}

/// Writes back what it reads, holding reads while its own output is full (so a test that
/// checks the proxy's buffers is not confused by the test server's).
final class EchoHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    private var readHeld = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable { context.read() } else { readHeld = true }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, readHeld {
            readHeld = false
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            closeAfterPendingWrites(context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Sends `total` pattern bytes as fast as the connection takes them, then closes its output.
/// Reports when its output first becomes unwritable (its peer stopped reading).
final class PushHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let total: Int
    let blocked: EventLoopPromise<Void>?
    private var sent = 0

    init(total: Int, blocked: EventLoopPromise<Void>? = nil) {
        self.total = total
        self.blocked = blocked
    }

    func channelActive(context: ChannelHandlerContext) {
        push(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            push(context: context)
        } else {
            blocked?.succeed(())
        }
    }

    private func push(context: ChannelHandlerContext) {
        while sent < total, context.channel.isWritable {
            let count = min(65536, total - sent)
            context.write(NIOAny(Pattern.chunk(from: sent, count: count)), promise: nil)
            sent += count
            context.flush()
        }
        if sent == total {
            sent += 1  // only once
            closeAfterPendingWrites(context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {}

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Reads until the peer's FIN, then answers with the count of bytes it read as 8 bytes
/// followed by `replyBytes` pattern bytes, and closes. Tests half-close.
final class ReplyAfterEOFHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let replyBytes: Int
    private var received = 0

    init(replyBytes: Int) {
        self.replyBytes = replyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytes
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else { return }
        var header = context.channel.allocator.buffer(capacity: 8)
        header.writeInteger(UInt64(received))
        context.write(NIOAny(header), promise: nil)
        var offset = 0
        while offset < replyBytes {
            let count = min(65536, replyBytes - offset)
            context.write(NIOAny(Pattern.chunk(from: offset, count: count)), promise: nil)
            offset += count
        }
        closeAfterPendingWrites(context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Resets the connection (RST, not FIN) as soon as a byte arrives.
final class ResetOnReadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        (channel as! SocketOptionProvider).setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {}
}

/// NIO turns a half-close of a channel whose input is already closed into a full close that
/// drops pending writes: wait for everything queued to be written first.
func closeAfterPendingWrites(_ context: ChannelHandlerContext) {
    let channel = context.channel
    context.writeAndFlush(NIOAny(ByteBuffer())).whenComplete { _ in
        channel.close(mode: .output, promise: nil)
    }
}

/// A port on 127.0.0.1 where nothing listens: bound, then closed.
///
/// Taken from below the kernel's ephemeral range (`ip_local_port_range`): a port from inside it
/// that a test releases and binds again later (a listener that a reload removes and brings back)
/// can meanwhile become the source port of any outgoing connection of the tests running beside
/// it, and the rebind fails. Ports below the range are only ever taken by an explicit bind.
func unusedPort() throws -> Int {
    let (low, count) = portsBelowTheEphemeralRange
    for _ in 0..<count {
        let port = low + nextPortOffset.wrappingAdd(1, ordering: .relaxed).oldValue % count
        if bindAndRelease(port: port) != nil { return port }
    }
    guard let port = bindAndRelease(port: 0) else { throw IOError(errnoCode: errno, reason: "bind") }
    return port
}

/// The ports `unusedPort()` hands out: from 20000 up to the start of the ephemeral range.
private let portsBelowTheEphemeralRange: (low: Int, count: Int) = {
    let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    let ephemeralLow = text.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
    let low = 20000
    return ephemeralLow - low >= 1000 ? (low, ephemeralLow - low) : (1024, max(1, ephemeralLow - 1024))
}()

/// Consecutive calls walk the range from a random start, so that two tests never get the same
/// port in one run (the range has thousands; a run asks for a few hundred).
private let nextPortOffset = Atomic<Int>(Int.random(in: 0..<1_000_000))

/// Binds 127.0.0.1:`port` (0: any) and closes it again; the port bound, or nil if taken.
private func bindAndRelease(port: Int) -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { return nil }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Raises the soft descriptor limit to the hard one: the concurrency test holds thousands.
func raiseDescriptorLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// Answers every request (a head ending in an empty line) with `answer`, written in pieces of
/// `pieceSize` bytes, each flushed on its own: the proxy reads responses split anywhere.
final class ScriptedAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let answer: [UInt8]
    let pieceSize: Int
    private var received: [UInt8] = []

    init(answer: String, pieceSize: Int) {
        self.answer = Array(answer.utf8)
        self.pieceSize = pieceSize
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytesView
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while let index = received.indices.first(where: { received[$0...].starts(with: end) }) {
            received.removeFirst(index + end.count)
            var offset = 0
            while offset < answer.count {
                let count = min(pieceSize, answer.count - offset)
                context.writeAndFlush(NIOAny(ByteBuffer(bytes: answer[offset..<offset + count])), promise: nil)
                offset += count
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Answers every request (a head without a body) with a 200 whose body is the head's bytes as
/// they arrived: what the proxy sent upstream.
final class HeadEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var received: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytesView
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while let index = received.indices.first(where: { received[$0...].starts(with: end) }) {
            let head = received[..<(index + end.count)]
            received.removeFirst(index + end.count)
            var answer = ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: \(head.count)\r\n\r\n")
            answer.writeBytes(head)
            context.writeAndFlush(NIOAny(answer), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
