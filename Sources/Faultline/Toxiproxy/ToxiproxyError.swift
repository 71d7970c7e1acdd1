import NIOCore
import NIOHTTP1

/// An error as Toxiproxy answers it: `{"error":"<message>","status":<code>}` and a newline,
/// written by Go's `http.Error`, so with a `text/plain` content type (clients read the JSON
/// regardless). Messages are Toxiproxy's where it has one, because clients match on them.
struct ToxiproxyError: Error {
    var status: HTTPResponseStatus
    var message: String
    /// `/populate` failing part-way also lists the proxies made so far.
    var proxies: [ToxiproxyProxyView]?

    init(_ status: HTTPResponseStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    static func badBody(_ detail: String) -> ToxiproxyError { ToxiproxyError(.badRequest, "bad request body: \(detail)") }
    static let proxyNotFound = ToxiproxyError(.notFound, "proxy not found")
    static let proxyExists = ToxiproxyError(.conflict, "proxy already exists")
    static let toxicNotFound = ToxiproxyError(.notFound, "toxic not found")
    static let toxicExists = ToxiproxyError(.conflict, "toxic already exists")
    /// gorilla/mux's answer to a known path with another method: no body at all.
    static let methodNotAllowed = ToxiproxyError(.methodNotAllowed, "")
    static func missingField(_ name: String, at index: Int? = nil) -> ToxiproxyError {
        ToxiproxyError(.badRequest, "missing required field: \(name)" + (index.map { " at proxy \($0 + 1)" } ?? ""))
    }

    private struct Body: Encodable {
        var error: String
        var status: Int
        var proxies: [ToxiproxyProxyView]?
    }

    var response: SmallHTTPResponse {
        if status == .methodNotAllowed { return SmallHTTPResponse(status: status) }
        var body = ByteBuffer()
        let encoded = ToxiproxyAPI.encode(Body(error: message, status: Int(status.code), proxies: proxies))
        body.writeBytes(encoded)
        body.writeString("\n")
        return SmallHTTPResponse(
            status: status,
            headers: ["Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"],
            body: body)
    }
}
