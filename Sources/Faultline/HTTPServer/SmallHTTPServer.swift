import NIOCore
import NIOHTTP1
import NIOPosix
import NIOConcurrencyHelpers

/// A whole HTTP request, body included (small control and metrics requests only).
public struct SmallHTTPRequest: Sendable {
    public var method: HTTPMethod
    public var uri: String
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    /// The path without the query string.
    public var path: String { String(uri.prefix { $0 != "?" }) }
}

public struct SmallHTTPResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func text(_ text: String, status: HTTPResponseStatus = .ok) -> SmallHTTPResponse {
        SmallHTTPResponse(
            status: status, headers: ["Content-Type": "text/plain; charset=utf-8"], body: ByteBuffer(string: text))
    }
}

/// The HTTP/1.1 server behind the metrics endpoint and the demo service: whole requests in,
/// whole responses out, keep-alive, one task per connection. Not the proxy's data path.
public final class SmallHTTPServer: Sendable {
    public typealias Handler = @Sendable (SmallHTTPRequest) async -> SmallHTTPResponse
    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Taken exactly once, by `run()` or else by `close()`, so that the channel's inbound
    /// stream ends while its event loop is alive (left to deinit, it would schedule on a loop
    /// already shut down).
    private let serverChannel: NIOLockedValueBox<NIOAsyncChannel<Connection, Never>?>
    private let channel: Channel
    private let handler: Handler
    private let maxBodyBytes: Int
    /// The answer to a request whose body is over `maxBodyBytes`.
    private let tooLargeResponse: @Sendable (Int) -> SmallHTTPResponse

    /// The address actually bound.
    public let localAddress: SocketAddress

    private init(
        serverChannel: NIOAsyncChannel<Connection, Never>, handler: @escaping Handler, maxBodyBytes: Int,
        tooLarge: @escaping @Sendable (Int) -> SmallHTTPResponse
    ) {
        self.tooLargeResponse = tooLarge
        self.serverChannel = NIOLockedValueBox(serverChannel)
        self.channel = serverChannel.channel
        self.handler = handler
        self.maxBodyBytes = maxBodyBytes
        self.localAddress = serverChannel.channel.localAddress!
    }

    public static func bind(
        to address: SocketAddress,
        group: EventLoopGroup,
        maxBodyBytes: Int = 1 << 20,
        tooLarge: @escaping @Sendable (Int) -> SmallHTTPResponse = SmallHTTPServer.tooLargeText,
        malformed: SmallHTTPResponse = SmallHTTPServer.malformedText,
        idleTimeout: TimeAmount = SmallHTTPServer.defaultIdleTimeout,
        handler: @escaping Handler
    ) async throws -> SmallHTTPServer {
        // Out of descriptors, accept(2) fails at once and again: pause accepting for a second
        // instead of spinning (see `AcceptBackoff`).
        var bootstrap = ServerBootstrap(group: group).serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(AcceptBackoff())
            }
        }
        if address.protocol != .unix {
            bootstrap = bootstrap.serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        }
        let channel = try await bootstrap.bind(to: address) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: false)
                try channel.pipeline.syncOperations.addHandler(MalformedRequestResponder(response: malformed))
                try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                try channel.pipeline.syncOperations.addHandler(IdleConnectionCloser())
                return try Connection(wrappingChannelSynchronously: channel)
            }
        }
        return SmallHTTPServer(serverChannel: channel, handler: handler, maxBodyBytes: maxBodyBytes, tooLarge: tooLarge)
    }

    /// How long a connection may stay without a byte either way before it is closed: ten
    /// minutes, longer than scrapers and API clients keep a connection idle between two
    /// requests, so that an ordinary keep-alive client never meets the close.
    public static let defaultIdleTimeout: TimeAmount = .minutes(10)

    public static let malformedText = SmallHTTPResponse.text("malformed HTTP request\n", status: .badRequest)

    @Sendable public static func tooLargeText(_ limit: Int) -> SmallHTTPResponse {
        .text("request body larger than \(limit) bytes\n", status: .payloadTooLarge)
    }

    /// Serves until `close()` is called or the task is cancelled; open connections are then
    /// cancelled too, so that a keep-alive scraper cannot hold shutdown up.
    ///
    /// Every connection the server accepts must be closed through its `NIOAsyncChannel`: NIO
    /// traps on one dropped unclosed. So the accept loop runs in a task the caller's
    /// cancellation does not reach (cancelled, the loop would leave accepted connections in the
    /// stream); cancellation closes the listening channel instead, the stream then ends after
    /// the connections it holds, and each of them is taken and closed by `serve`.
    public func run() async {
        guard let serverChannel = take() else { return }
        let accepting = Task {
            await withDiscardingTaskGroup { group in
                try? await serverChannel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection) }
                    }
                }
                group.cancelAll()
            }
        }
        await withTaskCancellationHandler {
            await accepting.value
        } onCancel: {
            serverChannel.channel.close(promise: nil)
        }
    }

    public func close() async {
        guard let serverChannel = take() else {
            try? await channel.close()
            return
        }
        // Never served: close the listening channel first, so that the stream ends after the
        // connections accepted meanwhile, and close each of those (see `run`).
        try? await serverChannel.channel.close()
        try? await serverChannel.executeThenClose { inbound in
            for try await connection in inbound {
                try? await connection.executeThenClose { _, _ in }
            }
        }
    }

    private func take() -> NIOAsyncChannel<Connection, Never>? {
        serverChannel.withLockedValue { channel in
            defer { channel = nil }
            return channel
        }
    }

    private func serve(_ connection: Connection) async {
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body = ByteBuffer()
            var tooLarge = false
            for try await part in inbound {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                    body.clear()
                    tooLarge = false
                    // A client that asks before sending its body gets the go-ahead.
                    if requestHead.headers.first(name: "expect")?.lowercased() == "100-continue" {
                        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: .continue)))
                    }
                case .body(var chunk):
                    if body.readableBytes + chunk.readableBytes > maxBodyBytes {
                        tooLarge = true
                    } else if !tooLarge {
                        body.writeBuffer(&chunk)
                    }
                case .end:
                    guard let requestHead = head else { continue }
                    var response: SmallHTTPResponse
                    if tooLarge {
                        response = tooLargeResponse(maxBodyBytes)
                    } else {
                        let request = SmallHTTPRequest(
                            method: requestHead.method, uri: requestHead.uri, headers: requestHead.headers, body: body)
                        response = await handler(request)
                    }
                    let keepAlive = requestHead.isKeepAlive && !tooLarge
                    response.headers.replaceOrAdd(name: "Content-Length", value: "\(response.body.readableBytes)")
                    response.headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                    let responseHead = HTTPResponseHead(
                        version: .http1_1, status: response.status, headers: response.headers)
                    try await outbound.write(.head(responseHead))
                    if requestHead.method != .HEAD, response.body.readableBytes > 0 {
                        try await outbound.write(.body(.byteBuffer(response.body)))
                    }
                    try await outbound.write(.end(nil))
                    if !keepAlive { return }
                    head = nil
                }
            }
        }
    }
}
