import Faultline
import FaultlineRules
import NIOCore
import NIOPosix
import Testing

/// The data path with real sockets: bytes arrive exactly, half-close is forwarded, back-pressure
/// bounds what the proxy holds, and many connections at once all come through intact.
@Suite(.serialized)
struct ProxyTransferTests {
    @Test func transfers64MiBEachWayByteExact() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: echo.port)])

        let size = 64 << 20
        let result = try await TestClient.transfer(
            port: daemon.port(), group: group, send: size, halfClose: true)

        #expect(result.received == size)
        #expect(result.mismatchAt == nil)
        #expect(result.sawEOF)
        #expect(!result.reset)

        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }

    @Test func halfCloseStillDeliversTheWholeAnswer() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        // The upstream answers only after the client's FIN: without half-close forwarding
        // it would never answer, or its answer would be cut.
        let reply = 3 << 20
        let upstream = try await TestServer.start(group: group) { ReplyAfterEOFHandler(replyBytes: reply) }
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: upstream.port)])

        let request = 100_000
        let result = try await TestClient.transfer(
            port: daemon.port(), group: group, send: request, halfClose: true, verifyFrom: nil)

        #expect(result.sawEOF)
        #expect(result.received == 8 + reply)
        var head = result.head
        #expect(head.readInteger(as: UInt64.self) == UInt64(request))

        await daemon.shutdown()
        await upstream.stop()
        try await group.shutdownGracefully()
    }

    @Test func slowReaderDoesNotMakeTheProxyBuffer() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let upstreamBlocked = group.next().makePromise(of: Void.self)
        let total = 64 << 20
        let upstream = try await TestServer.start(group: group) {
            PushHandler(total: total, blocked: upstreamBlocked)
        }
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: upstream.port)])

        // A client that does not read at all.
        let loop = group.next()
        let client = try await ClientBootstrap(group: loop)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.so_rcvbuf), value: 65536)
            .connect(host: "127.0.0.1", port: daemon.port()).get()

        // The upstream can only become unwritable once the whole path is full: the client's
        // kernel buffer, the proxy's outbound buffer, and the proxy's kernel buffers towards
        // the upstream. If the proxy kept reading into memory, this would take the full 64 MiB.
        try await upstreamBlocked.futureResult.get()
        let held = await daemon.proxy.listener(named: "test")!.bufferedBytes()
        // NIO's high watermark (64 KiB) plus one read burst (4 reads of at most 64 KiB).
        #expect(held <= 320 * 1024, "proxy holds \(held) bytes for a reader that reads nothing")
        #expect(held > 0)

        // Now read everything: still byte-exact and complete.
        let done = loop.makePromise(of: TransferResult.self)
        try await loop.submit {
            let handler = TransferHandler(sendBytes: 0, halfCloseAfterSend: false, verifyFrom: 0, closeAfter: nil, done: done)
            try client.pipeline.syncOperations.addHandler(handler)
            client.setOption(.autoRead, value: true).whenComplete { _ in client.read() }
        }.get()
        let result = try await done.futureResult.get()
        #expect(result.received == total)
        #expect(result.mismatchAt == nil)

        await daemon.shutdown()
        await upstream.stop()
        try await group.shutdownGracefully()
    }

    @Test func thousandConcurrentConnectionsAllByteExact() async throws {
        raiseDescriptorLimit()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: echo.port)])
        let port = daemon.port()

        let results = try await withThrowingTaskGroup(of: TransferResult.self) { tasks in
            for _ in 0..<1000 {
                tasks.addTask {
                    try await TestClient.transfer(port: port, group: group, send: 16 * 1024, halfClose: true)
                }
            }
            var all: [TransferResult] = []
            for try await result in tasks { all.append(result) }
            return all
        }
        #expect(results.count == 1000)
        let bad = results.filter { !($0.received == 16 * 1024 && $0.mismatchAt == nil && $0.sawEOF) }
        #expect(bad.isEmpty, "\(bad.count) connections failed, first: \(String(describing: bad.first))")
        #expect(await daemon.proxy.listener(named: "test")!.openConnections() == 0)

        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }
}
