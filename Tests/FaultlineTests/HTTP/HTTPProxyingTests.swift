import Faultline
import FaultlineRules
import Foundation
import NIOCore
import NIOPosix
import Testing

/// HTTP/1.1 through an `http` listener with curl as the client and the demo service (or a
/// misbehaving server) as the upstream.
@Suite struct HTTPProxyingTests {
    @Test func keepAliveIsReusedAcrossTwoURLs() async throws {
        try await withHTTPProxy { daemon, port, _ in
            let result = try await Curl.run([
                "-v", "http://127.0.0.1:\(port)/", "http://127.0.0.1:\(port)/bytes/5",
            ])
            #expect(result.status == 0)
            #expect(result.text == "hello from the Faultline demo service\nxxxxx")
            #expect(result.log.contains("Re-using existing connection"))
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="2xx"}"#) == 2)
            #expect(await daemon.metric(#"faultline_connections_accepted_total{listener="test"}"#) == 1)
        }
    }

    @Test func chunkedAndFixedLengthUploadsComeBackByteExact() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("fl-upload-\(UUID().uuidString)").path
        let bytes = (0..<900_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 9)) }
        #expect(FileManager.default.createFile(atPath: file, contents: Data(bytes)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        try await withHTTPProxy { _, port, _ in
            let chunked = try await Curl.run([
                "-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "@\(file)", "http://127.0.0.1:\(port)/echo",
            ])
            #expect(chunked.status == 0)
            #expect(chunked.body == bytes)
            let fixed = try await Curl.run(["-X", "PUT", "--data-binary", "@\(file)", "http://127.0.0.1:\(port)/echo"])
            #expect(fixed.body == bytes)
        }
    }

    @Test func headAndExpectContinue() async throws {
        try await withHTTPProxy { _, port, _ in
            let head = try await Curl.run(["-I", "http://127.0.0.1:\(port)/bytes/1234"])
            #expect(head.status == 0)
            #expect(head.text.contains("Content-Length: 1234"))
            #expect(head.text.hasSuffix("\r\n\r\n"))  // a head and nothing after it
            // The upstream's 100 Continue reaches curl, which sends the body at once.
            let upload = try await Curl.run([
                "-v", "-X", "PUT", "-H", "Expect: 100-continue", "--data-binary", "hello", "http://127.0.0.1:\(port)/echo",
            ])
            #expect(upload.log.contains("HTTP/1.1 100 Continue"))
            #expect(upload.text == "hello")
        }
    }

    /// Responses pass through as the upstream wrote them (HTTPResponseFramer): a chunked body
    /// with an extension and trailers, written 3 bytes at a time, reaches the client byte for
    /// byte, and the connection is kept for the next request.
    @Test func chunkedAnswersInSmallPiecesPassThroughUnchanged() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n"
        let body = "5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 12\r\n\r\n"
        let server = try await TestServer.start(group: group) { ScriptedAnswerHandler(answer: head + "\r\n" + body, pieceSize: 3) }
        try await withHTTPProxy(upstreamPort: server.port) { daemon, port, _ in
            let result = try await Curl.run(["-v", "http://127.0.0.1:\(port)/a", "http://127.0.0.1:\(port)/b"])
            #expect(result.status == 0)
            #expect(result.text == "hello, worldhello, world")
            #expect(result.log.contains("Re-using existing connection"))
            // A client that asked to close hears so; the rest is the upstream's bytes.
            let raw = await RawClient.exchange(
                port: port, Array("GET /c HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".utf8), timeout: .seconds(5))
            #expect(raw.status == 200)
            #expect(raw.body == body)
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="2xx"}"#) == 3)
        }
        await server.stop()
        try await group.shutdownGracefully()
    }

    /// A head goes upstream as the client wrote it, unless Faultline takes a header out: the
    /// fault headers, and `Connection` with what it names.
    @Test func headsGoUpstreamAsSentUnlessAHeaderIsTakenOut() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await TestServer.start(group: group) { HeadEchoHandler() }
        try await withHTTPProxy(upstreamPort: server.port, configure: { $0.http.headerFaults = HeaderFaults(enabled: true) }) {
            _, port, _ in
            let asSent = "GET /c?q=1 HTTP/1.1\r\nHost: test\r\nX-Keep:  as sent \r\nx-other:1\r\n\r\n"
            let tagged = "GET /a HTTP/1.1\r\nHost: test\r\nx-faultline-delay: 1ms\r\nX-Keep:  as sent \r\n\r\n"
            let hops = "GET /b HTTP/1.1\r\nHost: test\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\r\n"
            let reply = await RawClient.exchange(port: port, Array((asSent + tagged + hops).utf8), timeout: .seconds(5))
            #expect(reply.status == 200)
            #expect(reply.body.hasPrefix(asSent))
            #expect(reply.body.contains("GET /a HTTP/1.1\r\nHost: test\r\nX-Keep: as sent\r\n\r\n"))
            #expect(reply.body.hasSuffix("GET /b HTTP/1.1\r\nHost: test\r\n\r\n"))
            #expect(!reply.body.contains("faultline") && !reply.body.contains("X-Hop"))
        }
        await server.stop()
        try await group.shutdownGracefully()
    }

    /// A malformed answer from the upstream: a `502` while nothing of it has reached the
    /// client; once a good head has gone out (a bad body in the same read), the response is
    /// cut short instead (curl: 18, partial file), never left empty.
    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nhello", Int32(0), "HTTP/1.1 502 Bad Gateway"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n", Int32(18), "HTTP/1.1 200 OK"),
    ])
    func malformedAnswer(_ answer: String, _ curlStatus: Int32, _ head: String) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await TestServer.start(group: group) { ScriptedAnswerHandler(answer: answer, pieceSize: 64) }
        try await withHTTPProxy(upstreamPort: server.port) { daemon, port, _ in
            let result = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            #expect(result.status == curlStatus, "curl: \(result.log)")
            #expect(result.text.hasPrefix(head))
            if curlStatus == 0 {
                #expect(result.text.contains("faultline: the upstream sent a malformed response"))
            }
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="bad_response"}"#) == 1)
        }
        await server.stop()
        try await group.shutdownGracefully()
    }

    @Test func upstreamDownGives502() async throws {
        try await withHTTPProxy(upstreamPort: try unusedPort()) { daemon, port, _ in
            let result = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            #expect(result.text.hasPrefix("HTTP/1.1 502 Bad Gateway"))
            #expect(result.text.contains("faultline: cannot connect to the upstream 127.0.0.1:"))
            #expect(result.text.contains("(Connection refused)"))
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="connect_refused"}"#) == 1)
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="5xx"}"#) == 1)
        }
    }

    /// A name that does not resolve says so in the 502, without NIO's error type in the text.
    /// (`.invalid` never resolves, RFC 6761; a resolver that cannot be reached fails the look-up
    /// too, after its own timeout, which the long connect timeout leaves room for.)
    @Test func unresolvableUpstreamGives502SayingSo() async throws {
        try await withHTTPProxy(configure: { rule in
            rule.upstream = HostPort(host: "nosuchhost.invalid", port: 80)
            rule.connectTimeout = .seconds(60)
        }) { daemon, port, _ in
            let result = try await Curl.run(["-i", "-m", "90", "http://127.0.0.1:\(port)/"])
            #expect(result.text.hasPrefix("HTTP/1.1 502 Bad Gateway"))
            #expect(result.text.contains("faultline: cannot connect to the upstream nosuchhost.invalid:80 (cannot resolve nosuchhost.invalid: "), "\(result.text)")
            #expect(!result.text.contains("SocketAddressError"))
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="connect_resolve"}"#) == 1)
        }
    }

    @Test func upstreamResetBeforeAnsweringGives502() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let resetting = try await TestServer.start(group: group) { ResetOnReadHandler() }
        try await withHTTPProxy(upstreamPort: resetting.port) { daemon, port, _ in
            let result = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            #expect(result.text.hasPrefix("HTTP/1.1 502 Bad Gateway"))
            #expect(result.text.contains("reset the connection before answering"))
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="reset"}"#) == 1)
        }
        await resetting.stop()
        try await group.shutdownGracefully()
    }

    @Test func silentUpstreamGives504AfterTheResponseTimeout() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let silent = try await TestServer.start(group: group) { SilentHandler() }
        try await withHTTPProxy(upstreamPort: silent.port, configure: { $0.http.responseTimeout = .milliseconds(300) }) {
            daemon, port, _ in
            let start = ContinuousClock.now
            let result = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            #expect(ContinuousClock.now - start >= .milliseconds(300))
            #expect(result.text.hasPrefix("HTTP/1.1 504 Gateway Timeout"))
            #expect(result.text.contains("did not answer within 300ms"))
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="response_timeout"}"#) == 1)
        }
        await silent.stop()
        try await group.shutdownGracefully()
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await withHTTPProxy { _, port, _ in
            let raw = "GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
                + "GET /bytes/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            let answer = try await RawHTTP.exchange(port: port, raw)
            #expect(answer.components(separatedBy: "HTTP/1.1 200 OK").count == 4)
            #expect(answer.contains("xxx") && answer.contains("hello from") && answer.hasSuffix("xx"))
            #expect(answer.range(of: "xxx")!.lowerBound < answer.range(of: "hello from")!.lowerBound)
        }
    }

    /// A client that pipelines requests and then shuts its write side still gets every answer,
    /// in order, and then the connection closes.
    @Test func pipelinedRequestsBeforeAHalfCloseAreAllAnswered() async throws {
        try await withHTTPProxy { _, port, _ in
            let raw = "GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                + "GET /bytes/2 HTTP/1.1\r\nHost: a\r\n\r\n"
            let answer = try await RawHTTP.exchange(port: port, raw, halfClose: true)
            #expect(answer.components(separatedBy: "HTTP/1.1 200 OK").count == 4)
            let bodies = answer.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.prefix { $0 == "x" }.count }
            #expect(bodies == [3, 1, 2])
        }
    }

    @Test func badRequestsGet400And431And408() async throws {
        try await withHTTPProxy(configure: {
            $0.http.headTimeout = .milliseconds(300)
            $0.http.maxHeadBytes = 1024
        }) { daemon, port, _ in
            let garbage = try await RawHTTP.exchange(port: port, "NOT HTTP AT ALL\r\n\r\n")
            #expect(garbage.hasPrefix("HTTP/1.1 400 Bad Request"))
            let big = try await RawHTTP.exchange(
                port: port, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: \(String(repeating: "a", count: 2000))\r\n\r\n")
            #expect(big.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large"))
            let start = ContinuousClock.now
            let slow = try await RawHTTP.exchange(port: port, "GET / HTTP/1.1\r\nHost: a\r\n")
            #expect(slow.hasPrefix("HTTP/1.1 408 Request Timeout"))
            #expect(ContinuousClock.now - start >= .milliseconds(300))
            // Other clients never noticed.
            let fine = try await Curl.run(["http://127.0.0.1:\(port)/bytes/4"])
            #expect(fine.text == "xxxx")
            let rejected = await daemon.metric(#"faultline_http_requests_total{listener="test",code="4xx"}"#)
            #expect(rejected == 3)
        }
    }

    /// A TLS client on a listener without `tls:` (https:// to a plain port) is told at once, as
    /// nginx and HAProxy do, instead of waiting out the head timeout for a line end that a
    /// ClientHello never sends.
    @Test func tlsClientOnAPlainListenerFailsAtOnce() async throws {
        try await withHTTPProxy(configure: { $0.http.headTimeout = .seconds(60) }) { daemon, port, _ in
            let start = ContinuousClock.now
            let curl = try await Curl.run(["https://127.0.0.1:\(port)/"], maxTime: 30)
            #expect(curl.status == 35, "curl: \(curl.log)")   // SSL connect error: a plain-text answer
            #expect(ContinuousClock.now - start < .seconds(20), "waited for the head timeout")
            let clientHello = String(decoding: [0x16, 0x03, 0x01, 0x00, 0xa0, 0x01, 0x00, 0x00, 0x9c, 0x03, 0x03], as: UTF8.self)
            let answer = try await RawHTTP.exchange(port: port, clientHello)
            #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request"))
            #expect(answer.contains("a TLS handshake; this listener has no tls: block"))
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="4xx"}"#) == 2)
        }
    }

    /// After the upstream's 101 the connection is a byte tunnel both ways, and what the
    /// upstream sent right behind its 101 is not lost.
    @Test func webSocketUpgradeBecomesATunnel() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let upstream = try await TestServer.start(group: group) { UpgradeEchoHandler() }
        try await withHTTPProxy(upstreamPort: upstream.port) { daemon, port, _ in
            let conversation = try await offThePool { () -> [String] in
                let client = try LineClient.connectBlocking(port: port)
                defer { close(client.fd) }
                let request = Array("GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".utf8)
                _ = send(client.fd, request, request.count, Int32(MSG_NOSIGNAL))
                // The 101 head, then the greeting the service sent right behind it.
                var received: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 4096)
                while !received.ends(with: Array("hello from the tunnel\n".utf8)) {
                    let count = recv(client.fd, &chunk, chunk.count, 0)
                    guard count > 0 else { throw IOError(errnoCode: errno, reason: "recv") }
                    received += chunk[0..<count]
                }
                let greeting = String(decoding: received.dropLast(), as: UTF8.self)
                let echoed = try client.exchangeBlocking("ping 1")
                let again = try client.exchangeBlocking("ping 2")
                return [greeting, echoed, again]
            }
            #expect(conversation.count == 3)
            #expect(conversation[0].hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
            #expect(conversation[0].hasSuffix("\r\n\r\nhello from the tunnel"))
            #expect(conversation[1] == "ping 1")
            #expect(conversation[2] == "ping 2")
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="1xx"}"#) == 1)
            #expect(await daemon.metric(#"faultline_connections_accepted_total{listener="test"}"#) == 1)
        }
        await upstream.stop()
        try await group.shutdownGracefully()
    }

    /// A 256 MiB response to a client that does not read: the proxy holds a bounded amount,
    /// then everything arrives byte-exact once the client reads.
    @Test func slowReaderOfAHugeResponseKeepsProxyMemoryBounded() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let blocked = group.next().makePromise(of: Void.self)
        let total = 256 << 20
        let upstream = try await TestServer.start(group: group) { HTTPPushHandler(bodyBytes: total, blocked: blocked) }
        try await withHTTPProxy(upstreamPort: upstream.port) { daemon, port, _ in
            let loop = group.next()
            let client = try await ClientBootstrap(group: loop)
                .channelOption(.autoRead, value: false)
                .channelOption(.socketOption(.so_rcvbuf), value: 65536)
                .connect(host: "127.0.0.1", port: port).get()
            try await client.writeAndFlush(ByteBuffer(string: "GET /big HTTP/1.1\r\nHost: a\r\n\r\n"))
            try await blocked.futureResult.get()
            let held = await daemon.proxy.listener(named: "test")!.bufferedBytes()
            #expect(held <= 512 * 1024, "proxy holds \(held) bytes for a reader that reads nothing")
            let done = loop.makePromise(of: Int.self)
            try await loop.submit {
                try client.pipeline.syncOperations.addHandler(HTTPBodyCheck(expected: total, done: done))
                client.setOption(.autoRead, value: true).whenComplete { _ in client.read() }
            }.get()
            #expect(try await done.futureResult.get() == total)
            try await client.close()
        }
        await upstream.stop()
        try await group.shutdownGracefully()
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}

/// Answers an HTTP request with 101 and a greeting line in the same write, then echoes bytes.
final class UpgradeEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var head: [UInt8] = []
    private var upgraded = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if upgraded {
            context.writeAndFlush(NIOAny(buffer), promise: nil)
            return
        }
        head += buffer.readBytes(length: buffer.readableBytes) ?? []
        guard head.count >= 4, head.suffix(4) == Array("\r\n\r\n".utf8) else { return }
        upgraded = true
        let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello from the tunnel\n"
        context.writeAndFlush(NIOAny(ByteBuffer(string: answer)), promise: nil)
    }
}

/// Reads and ignores everything, never answers.
final class SilentHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// An HTTP upstream that answers any request with `bodyBytes` of the test pattern, written as
/// fast as the connection takes them; `blocked` is fulfilled when the connection backs up.
final class HTTPPushHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let bodyBytes: Int
    let blocked: EventLoopPromise<Void>?
    private var sent = -1

    init(bodyBytes: Int, blocked: EventLoopPromise<Void>?) {
        self.bodyBytes = bodyBytes
        self.blocked = blocked
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard sent < 0 else { return }
        sent = 0
        context.write(NIOAny(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: \(bodyBytes)\r\n\r\n")), promise: nil)
        push(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard sent >= 0 else { return }
        if context.channel.isWritable {
            push(context: context)
        } else {
            blocked?.succeed(())
        }
    }

    private func push(context: ChannelHandlerContext) {
        while sent < bodyBytes, context.channel.isWritable {
            let count = min(65536, bodyBytes - sent)
            context.write(NIOAny(Pattern.chunk(from: sent, count: count)), promise: nil)
            sent += count
            context.flush()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Skips the response head, then checks the body against the pattern and reports its length
/// once `expected` bytes have arrived (or the connection ends).
final class HTTPBodyCheck: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let expected: Int
    let done: EventLoopPromise<Int>
    private var head: [UInt8] = []
    private var inBody = false
    private var received = 0
    private var bad = false

    init(expected: Int, done: EventLoopPromise<Int>) {
        self.expected = expected
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if !inBody {
            while let byte = buffer.readInteger(as: UInt8.self) {
                head.append(byte)
                if head.count >= 4, head.suffix(4) == [13, 10, 13, 10] {
                    inBody = true
                    break
                }
            }
        }
        guard inBody, buffer.readableBytes > 0 else { return }
        if Pattern.firstMismatch(in: buffer, at: received) != nil { bad = true }
        received += buffer.readableBytes
        if received >= expected { done.succeed(bad ? -1 : received) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.succeed(bad ? -1 : received)
    }
}

/// One raw exchange: sends `text`, returns everything until the server closes (5 s bound).
enum RawHTTP {
    /// With `halfClose`, the client shuts its write side after sending.
    static func exchange(port: Int, _ text: String, halfClose: Bool = false) async throws -> String {
        try await offThePool {
            guard let fd = RawClient.connectedSocket(port: port, timeout: .seconds(5)) else {
                throw IOError(errnoCode: errno, reason: "connect")
            }
            defer { close(fd) }
            let bytes = Array(text.utf8)
            _ = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL))
            if halfClose { shutdown(fd, Int32(SHUT_WR)) }
            var received: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = recv(fd, &chunk, chunk.count, 0)
                if count <= 0 { break }
                received += chunk[0..<count]
            }
            return String(decoding: received, as: UTF8.self)
        }
    }
}
