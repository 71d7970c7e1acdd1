import NIOCore
import NIOHTTP1

/// A small HTTP service to put Faultline in front of when there is no real service yet, so
/// that a first `curl` through the proxy shows something (and then shows the faults).
///
///   GET  /            a greeting                   (HEAD works wherever GET does)
///   GET  /bytes/N     N bytes (at most 64 MiB), for bandwidth and truncation faults
///   GET  /status/N    an empty response with status N
///   POST /echo        the request body back
enum DemoService {
    static let maxBytes = 64 << 20

    static let handler: SmallHTTPServer.Handler = { request in
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true)
        switch (request.method, parts.first, parts.count) {
        case (.GET, nil, _), (.HEAD, nil, _):
            return .text("hello from the Faultline demo service\n")
        case (.GET, "bytes", 2), (.HEAD, "bytes", 2):
            guard let count = Int(parts[1]), count >= 0, count <= maxBytes else {
                return .text("usage: /bytes/N with N at most \(maxBytes)\n", status: .badRequest)
            }
            var body = ByteBuffer()
            body.writeRepeatingByte(UInt8(ascii: "x"), count: count)
            return SmallHTTPResponse(status: .ok, headers: ["Content-Type": "application/octet-stream"], body: body)
        case (.GET, "status", 2), (.HEAD, "status", 2):
            guard let code = Int(parts[1]), (200...599).contains(code) else {
                return .text("usage: /status/N with N in 200...599\n", status: .badRequest)
            }
            return SmallHTTPResponse(status: HTTPResponseStatus(statusCode: code))
        case (.POST, "echo", 1), (.PUT, "echo", 1):
            return SmallHTTPResponse(
                status: .ok, headers: ["Content-Type": "application/octet-stream"], body: request.body)
        default:
            return .text("not found; try /, /bytes/N, /status/N or POST /echo\n", status: .notFound)
        }
    }
}
