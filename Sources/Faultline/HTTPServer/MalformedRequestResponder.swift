import NIOCore
import NIOHTTP1

/// Answers a request the HTTP parser rejects with the server's own error body, then closes:
/// NIO's `HTTPServerProtocolErrorHandler` would send an empty 400, and the control and
/// Toxiproxy APIs promise their error shapes for every bad request. A response already under
/// way is cut instead, since a second head cannot follow half a response.
final class MalformedRequestResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let response: SmallHTTPResponse
    private var responseUnderWay = false

    init(response: SmallHTTPResponse) {
        self.response = response
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if !responseUnderWay {
            var headers = response.headers
            headers.replaceOrAdd(name: "Content-Length", value: "\(response.body.readableBytes)")
            headers.replaceOrAdd(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
            responseUnderWay = true
        } else {
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200:
            responseUnderWay = true
        case .end:
            responseUnderWay = false
        default:
            break
        }
        context.write(data, promise: promise)
    }
}
