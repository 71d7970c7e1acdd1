import Faultline
import Foundation
import NIOCore
import NIOPosix
import Testing

/// Upstream connections kept between clients (README, Upstream connections): a client that
/// leaves between requests hands its upstream connection to the next client of its loop.
@Suite
struct UpstreamPoolTests {
    /// An http listener on one event loop (every client lands where the idle connection
    /// waits) in front of a `CountingAnswerHandler` server.
    func withCountingUpstream(
        answersPerConnection: Int? = nil,
        _ body: (_ daemon: Daemon, _ port: Int, _ dialed: ManagedCounter, _ connectionHeaders: ManagedCounter) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let dialed = ManagedCounter()
        let connectionHeaders = ManagedCounter()
        let upstream = try await TestServer.start(group: group) {
            CountingAnswerHandler(dialed: dialed, answersPerConnection: answersPerConnection, connectionHeaders: connectionHeaders)
        }
        do {
            try await withHTTPProxy(upstreamPort: upstream.port, eventLoops: 1) { daemon, port, _ in
                try await body(daemon, port, dialed, connectionHeaders)
            }
        } catch {
            Issue.record(error)
        }
        await upstream.stop()
        try await group.shutdownGracefully()
    }

    @Test func sequentialClientsShareOneUpstreamConnection() async throws {
        try await withCountingUpstream { _, port, dialed, connectionHeaders in
            for _ in 0..<2 {
                // A curl process per request: a new client connection each time.
                let result = try await Curl.run(["http://127.0.0.1:\(port)/"])
                #expect(result.text == "ok")
                // A client's Connection: close ends its own connection, not the upstream's.
                let closing = try await Curl.run(["-i", "-H", "Connection: close, X-Hop", "-H", "X-Hop: 1", "http://127.0.0.1:\(port)/"])
                #expect(closing.text.hasPrefix("HTTP/1.1 200 OK"))
                // ... and the upstream's "Connection: keep-alive" is not passed on to it.
                #expect(closing.text.lowercased().contains("connection: close\r\n"))
                #expect(!closing.text.lowercased().contains("keep-alive"))
            }
            #expect(dialed.count == 1)
            // Neither Connection nor the header it named reached the upstream.
            #expect(connectionHeaders.count == 0)
        }
    }

    /// An HTTP/1.0 client that asks to keep its connection is told it is kept, and one that
    /// does not ask is told it closes, whatever the upstream said about its own connection.
    @Test func http10ClientsHearAboutTheirOwnConnection() async throws {
        try await withCountingUpstream { _, port, dialed, _ in
            let answer = try await RawHTTP.exchange(
                port: port, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
            let heads = answer.lowercased().components(separatedBy: "http/1.1 200 ok").dropFirst()
            #expect(heads.count == 2)
            #expect(heads.first?.contains("connection: keep-alive") == true)
            #expect(heads.last?.contains("connection: close") == true)
            #expect(dialed.count == 1)
        }
    }

    /// The server answers one request per connection and closes on the next without
    /// answering: what a server closing an idle connection looks like to a request that was
    /// sent just then.
    @Test func reusedConnectionClosedByTheServerIsRetriedOnlyWhenThatIsSafe() async throws {
        try await withCountingUpstream(answersPerConnection: 1) { daemon, port, dialed, _ in
            #expect(try await Curl.run(["http://127.0.0.1:\(port)/a"]).text == "ok")
            // Goes on the pooled connection, which closes; sent again on a new one.
            #expect(try await Curl.run(["http://127.0.0.1:\(port)/b"]).text == "ok")
            #expect(dialed.count == 2)
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="stale_retried"}"#) == 1)
            // A POST with a body is not sent twice: the client gets the 502.
            let post = try await Curl.run(["-i", "--data-binary", "x=1", "http://127.0.0.1:\(port)/c"])
            #expect(post.text.hasPrefix("HTTP/1.1 502 Bad Gateway"))
            #expect(post.text.contains("closed the connection before answering"))
            #expect(dialed.count == 2)
            #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="test",kind="closed"}"#) == 1)
        }
    }
}

/// A keep-alive HTTP server (saying so, as nginx does) that answers `ok` to every request, counts the connections made
/// to it, and with `answersPerConnection` closes a connection without answering once that
/// many requests have been answered on it. `connectionHeaders` counts requests that carried
/// `Connection` or `X-Hop`.
final class CountingAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let dialed: ManagedCounter
    private let answersPerConnection: Int?
    private let connectionHeaders: ManagedCounter?
    private var received: [UInt8] = []
    private var answered = 0

    init(dialed: ManagedCounter, answersPerConnection: Int? = nil, connectionHeaders: ManagedCounter? = nil) {
        self.dialed = dialed
        self.connectionHeaders = connectionHeaders
        self.answersPerConnection = answersPerConnection
    }

    func channelActive(context: ChannelHandlerContext) {
        dialed.add()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received += buffer.readBytes(length: buffer.readableBytes) ?? []
        // Whole requests only: a head, and as many body bytes as its Content-Length says.
        let headEnd: [UInt8] = Array("\r\n\r\n".utf8)
        while let end = received.indices.dropLast(3).first(where: { received[$0..<$0 + 4].elementsEqual(headEnd) }) {
            let head = String(decoding: received[..<end], as: UTF8.self).lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            if head.contains("\r\nconnection:") || head.contains("\r\nx-hop:") { connectionHeaders?.add() }
            let total = end + 4 + length
            guard received.count >= total else { return }
            received.removeFirst(total)
            if let limit = answersPerConnection, answered >= limit {
                context.close(promise: nil)
                return
            }
            answered += 1
            context.writeAndFlush(
                wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")), promise: nil)
        }
    }
}
