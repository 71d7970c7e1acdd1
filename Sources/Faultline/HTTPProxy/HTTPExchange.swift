import FaultlineRules
import NIOCore
import NIOHTTP1

/// One request and its response on an `http` listener, from the request head to the end of
/// the response. Requests on a connection are handled one at a time (a pipelined request
/// waits in the connection's queue), so a connection has at most one exchange.
final class HTTPExchange {
    let startedAt = NIODeadline.now()
    let isHead: Bool
    var clientKeepAlive: Bool
    /// An HTTP/1.0 client keeps its connection only when the answer says so.
    var clientIsHTTP10 = false
    /// The head as sent upstream, kept to send it again if a reused upstream connection
    /// turns out to have been closed by the server (see `HTTPProxyConnection.retryStale`).
    var head: HTTPRequestHead?
    /// The head's bytes as the client sent them, when they go upstream so (nothing taken out).
    var headBytes: ByteBuffer?
    /// The request went on an upstream connection taken from the pool.
    var onReusedUpstream = false
    var retriedStale = false
    var bodyPartsSent = 0
    /// The fault decided for this request when its head arrived (it keeps it).
    var fault: RequestFault?

    /// Request parts not yet written upstream: while dialing, while a delay holds the request,
    /// or while the upstream is not writable. Reads stop meanwhile, so it stays one read burst.
    /// (Arrays: an empty one costs no allocation, and most requests never queue a part.)
    var requestQueue: [HTTPClientRequestPart] = []
    var requestHeld = false
    /// The request's end has been read: parts after it belong to the next (pipelined) request.
    var requestEnded = false
    var headSent = false
    var requestSent = false
    /// abort, blackhole and Faultline's own answers: the request is read and dropped.
    var dropRequest = false
    /// What to answer once the request has been read in full.
    var pendingReply: (status: Int, headers: [HTTPAbort.HeaderField], body: String)?
    /// The bytes of `pendingReply` as an HTTP/1.1 keep-alive answer, when the rule has them made.
    var pendingReplyBytes: ByteBuffer?

    /// Response parts not yet written to the client: while a delay holds the response, while
    /// throttling paces it, or while the client is not writable.
    var responseQueue: [HTTPResponseBytes] = []
    var responseHeld = false
    var responseHeadReceived = false
    var responseEndReceived = false
    var responseHeadSent = false
    var status = 0
    var bodySent = 0
    var upstreamKeepAlive = true
    var nextWriteAt = NIODeadline.uptimeNanoseconds(0)
    /// The delay of a request or response, the throttle's next slot, a blackhole's close.
    var timer: Scheduled<Void>?
    /// When the response head must have come (504 past it): set when the request has been
    /// sent, cleared by the response head. Watched by the connection's deadline timer.
    var responseDeadline: NIODeadline?
    var complete = false
    /// The request asked for `Upgrade` (WebSocket); after the upstream's `101` the connection
    /// becomes a byte tunnel.
    var upgradeRequested = false
    var upgrading = false

    init(isHead: Bool, clientKeepAlive: Bool) {
        self.isHead = isHead
        self.clientKeepAlive = clientKeepAlive
    }

    /// True when the fault acts on the response body, so that each part goes through the pump.
    var shapesResponse: Bool {
        switch fault {
        case .delayResponse, .truncate, .throttle, .reset(afterBodyBytes: .some): true
        default: false
        }
    }

    func cancelTimers() {
        timer?.cancel()
        timer = nil
        responseDeadline = nil
    }
}
