import FaultlineRules
import Logging
import NIOCore

/// What a connection needs to know about its listener, fixed when the connection is accepted
/// (a reload that changes the upstream applies to new connections only).
struct ListenerConfiguration: Sendable {
    enum Upstream: Sendable {
        /// An IP literal, parsed once: no look-up per connection.
        case address(SocketAddress)
        /// A host name, resolved by NIO on each dial so that DNS changes are followed.
        case name(String, Int)
    }

    let rule: ListenerRule
    let upstream: Upstream
    let metrics: ListenerMetrics

    init(rule: ListenerRule, metrics: ListenerMetrics) throws {
        self.rule = rule
        self.metrics = metrics
        if rule.upstream.isIPLiteral {
            upstream = .address(try SocketAddress(ipAddress: rule.upstream.host, port: rule.upstream.port))
        } else {
            upstream = .name(rule.upstream.host, rule.upstream.port)
        }
    }
}
