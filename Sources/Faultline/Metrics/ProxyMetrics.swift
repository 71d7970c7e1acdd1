import Prometheus

/// The daemon's one metrics registry and the metric families it exports. Handles are made
/// once per listener and reused; no label ever carries a client address.
public final class FaultlineMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500),
        .seconds(1), .seconds(5), .seconds(30), .seconds(120), .seconds(600), .seconds(3600),
    ]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    /// The handles for one listener; asking again with the same name returns the same series.
    func listener(_ name: String) -> ListenerMetrics {
        let labels = [("listener", name)]
        return ListenerMetrics(
            accepted: registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "connections_accepted", unitName: "total",
                                  helpText: "Client connections accepted."),
                labels: labels),
            open: registry.makeGauge(
                descriptor: .init(namespace: "faultline", metricName: "connections", unitName: "open",
                                  helpText: "Client connections open now."),
                labels: labels),
            bytesUpstream: registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "forwarded_bytes", unitName: "total",
                                  helpText: "Bytes forwarded, by direction (upstream: client to service)."),
                labels: labels + [("direction", FlowDirection.upstream.rawValue)]),
            bytesDownstream: registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "forwarded_bytes", unitName: "total",
                                  helpText: "Bytes forwarded, by direction (upstream: client to service)."),
                labels: labels + [("direction", FlowDirection.downstream.rawValue)]),
            connectFailures: Dictionary(uniqueKeysWithValues: UpstreamFailureReason.allCases.map { reason in
                (reason, registry.makeCounter(
                    descriptor: .init(namespace: "faultline", metricName: "upstream_connect_failures", unitName: "total",
                                      helpText: "Upstream connection attempts that failed, by reason."),
                    labels: labels + [("reason", reason.rawValue)]))
            }),
            duration: registry.makeDurationHistogram(
                descriptor: .init(namespace: "faultline", metricName: "connection_duration", unitName: "seconds",
                                  helpText: "Lifetime of client connections, accept to close."),
                labels: labels,
                buckets: Self.durationBuckets)
        )
    }

    /// Counts each time a fault acts on a connection (once per connection and rule).
    func faultInjections(listener: String, fault: String, kind: String) -> Counter {
        registry.makeCounter(
            descriptor: .init(namespace: "faultline", metricName: "faults_injected", unitName: "total",
                              helpText: "Faults injected: each connection a fault acts on, by listener, fault rule and kind."),
            labels: [("listener", listener), ("fault", fault), ("kind", kind)])
    }

    /// Prometheus text exposition of everything registered.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(8192)
        registry.emit(into: &buffer)
        return buffer
    }
}

/// Metric handles of one listener, shared by every connection of it on every loop.
/// Each update is one atomic operation; nothing here locks.
struct ListenerMetrics: Sendable {
    let accepted: Counter
    let open: Gauge
    let bytesUpstream: Counter
    let bytesDownstream: Counter
    private let connectFailuresByReason: [UpstreamFailureReason: Counter]
    let duration: DurationHistogram

    init(accepted: Counter, open: Gauge, bytesUpstream: Counter, bytesDownstream: Counter,
         connectFailures: [UpstreamFailureReason: Counter], duration: DurationHistogram) {
        self.accepted = accepted
        self.open = open
        self.bytesUpstream = bytesUpstream
        self.bytesDownstream = bytesDownstream
        self.connectFailuresByReason = connectFailures
        self.duration = duration
    }

    func connectFailures(_ reason: UpstreamFailureReason) -> Counter {
        connectFailuresByReason[reason]!
    }
}
