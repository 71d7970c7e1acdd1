import NIOCore
import NIOHTTP1

/// `GET /metrics` in Prometheus' text format; everything else is 404.
enum MetricsEndpoint {
    static func handler(metrics: FaultlineMetrics, collect: @escaping @Sendable () async -> Void) -> SmallHTTPServer.Handler {
        { request in
            guard request.path == "/metrics" else {
                return .text("not found; metrics are at /metrics\n", status: .notFound)
            }
            guard request.method == .GET || request.method == .HEAD else {
                return .text("method not allowed\n", status: .methodNotAllowed)
            }
            await collect()
            return SmallHTTPResponse(
                status: .ok,
                headers: ["Content-Type": "text/plain; version=0.0.4; charset=utf-8"],
                body: ByteBuffer(bytes: metrics.exposition()))
        }
    }
}
