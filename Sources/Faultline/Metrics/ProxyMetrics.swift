import Prometheus

/// The daemon's one metrics registry and the metric families it exports. Handles are made
/// once per listener and reused; no label ever carries a client address.
public final class FaultlineMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500),
        .seconds(1), .seconds(5), .seconds(30), .seconds(120), .seconds(600), .seconds(3600),
    ]

    /// The series of listeners and faults that have left the rules go after a while.
    let retirement: SeriesRetirement

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), retiredSeriesRetention: Duration = .seconds(600)) {
        self.registry = registry
        retirement = SeriesRetirement(registry: registry, retention: retiredSeriesRetention)
    }

    /// The handles for one listener; asking again with the same name returns the same series.
    func listener(_ name: String) -> ListenerMetrics {
        retirement.inForce(["listener", name]) {
            let metrics = makeListener(name)
            return (metrics, metrics.handles)
        }
    }

    private func makeListener(_ name: String) -> ListenerMetrics {
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
                buckets: Self.durationBuckets),
            rejectedOverLimit: registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "connections_rejected", unitName: "total",
                                  helpText: "Connections closed at accept, by reason (max_connections: the listener was full)."),
                labels: labels + [("reason", "max_connections")]),
            acceptErrors: registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "accept_errors", unitName: "total",
                                  helpText: "accept(2) failures, such as running out of file descriptors; accepting backs off and resumes."),
                labels: labels)
        )
    }

    static let requestDurationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5),
        .seconds(10), .seconds(30), .seconds(60),
    ]

    /// The golden signals of an `http` listener.
    func http(_ name: String) -> HTTPListenerMetrics {
        retirement.inForce(["http", name]) {
            let metrics = makeHTTP(name)
            return (metrics, metrics.handles)
        }
    }

    private func makeHTTP(_ name: String) -> HTTPListenerMetrics {
        let labels = [("listener", name)]
        let requests = MetricNameDescriptor(
            namespace: "faultline", metricName: "http_requests", unitName: "total",
            helpText: "HTTP requests answered, by status class (faults and Faultline's own answers included).")
        let errors = MetricNameDescriptor(
            namespace: "faultline", metricName: "http_upstream_errors", unitName: "total",
            helpText: "Requests that failed at the upstream, by kind.")
        return HTTPListenerMetrics(
            requests: (1...5).map { registry.makeCounter(descriptor: requests, labels: labels + [("code", "\($0)xx")]) },
            duration: registry.makeDurationHistogram(
                descriptor: .init(namespace: "faultline", metricName: "http_request_duration", unitName: "seconds",
                                  helpText: "From the request head in to the response end out."),
                labels: labels, buckets: Self.requestDurationBuckets),
            inFlight: registry.makeGauge(
                descriptor: .init(namespace: "faultline", metricName: "http_requests_in", unitName: "flight",
                                  helpText: "Requests received and not yet answered in full."),
                labels: labels),
            upstreamErrors: Dictionary(uniqueKeysWithValues: HTTPUpstreamError.allCases.map {
                ($0, registry.makeCounter(descriptor: errors, labels: labels + [("kind", $0.rawValue)]))
            }))
    }

    /// `faultline_tls_handshakes_total{listener, result}` for a TLS listener.
    func tlsHandshakes(_ name: String) -> [HandshakeResult: Counter] {
        retirement.inForce(["tls", name]) {
            let counters = makeTLSHandshakes(name)
            return (counters, counters.values.map { .counter($0) })
        }
    }

    private func makeTLSHandshakes(_ name: String) -> [HandshakeResult: Counter] {
        Dictionary(uniqueKeysWithValues: HandshakeResult.allCases.map { result in
            (result, registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "tls_handshakes", unitName: "total",
                                  helpText: "TLS handshakes by how they ended: ok, client_rejected (the client broke off after the certificate), protocol_mismatch, client_certificate, not_tls, closed, timeout (no end within tls.handshake_timeout), other."),
                labels: [("listener", name), ("result", result.rawValue)]))
        })
    }

    /// Leaf certificates minted by Faultline's CA (each cached for its rules' life).
    var certificatesMinted: Counter {
        registry.makeCounter(
            descriptor: .init(namespace: "faultline", metricName: "tls_certificates_minted", unitName: "total",
                              helpText: "Leaf certificates minted by Faultline's CA."))
    }

    /// Seconds until Faultline's CA certificate expires (negative once it has).
    var caExpiry: Gauge {
        registry.makeGauge(
            descriptor: .init(namespace: "faultline", metricName: "tls_ca_expiry", unitName: "seconds",
                              helpText: "Seconds until Faultline's CA certificate expires."))
    }

    /// Counts each time a fault acts on a connection (once per connection and rule).
    /// `source` says where the rule came from: `file`, `control`, `toxiproxy` or `header`.
    func faultInjections(listener: String, fault: String, kind: String, source: String) -> Counter {
        retirement.inForce(["fault", listener, fault, kind, source]) {
            let counter = registry.makeCounter(
                descriptor: .init(namespace: "faultline", metricName: "faults_injected", unitName: "total",
                                  helpText: "Faults injected: each connection a fault acts on, by listener, fault rule, kind and where the rule came from."),
                labels: [("listener", listener), ("fault", fault), ("kind", kind), ("source", source)])
            return (counter, [.counter(counter)])
        }
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
    let rejectedOverLimit: Counter
    let acceptErrors: Counter

    init(accepted: Counter, open: Gauge, bytesUpstream: Counter, bytesDownstream: Counter,
         connectFailures: [UpstreamFailureReason: Counter], duration: DurationHistogram,
         rejectedOverLimit: Counter, acceptErrors: Counter) {
        self.rejectedOverLimit = rejectedOverLimit
        self.acceptErrors = acceptErrors
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

    /// Every series here, for `SeriesRetirement`.
    var handles: [SeriesHandle] {
        [accepted, bytesUpstream, bytesDownstream, rejectedOverLimit, acceptErrors].map { .counter($0) }
            + connectFailuresByReason.values.map { .counter($0) } + [.gauge(open), .histogram(duration)]
    }
}

/// Why a request failed at the upstream (the `kind` label).
enum HTTPUpstreamError: String, CaseIterable, Sendable {
    case connectRefused = "connect_refused"
    case connectUnreachable = "connect_unreachable"
    case connectTimeout = "connect_timeout"
    case connectResolve = "connect_resolve"
    case connectTLS = "connect_tls"
    case connectOther = "connect_other"
    /// The upstream reset the connection before the response was complete.
    case reset
    /// The upstream closed the connection before the response was complete.
    case closed
    /// No response head within the listener's response timeout.
    case responseTimeout = "response_timeout"
    /// The upstream's response could not be parsed.
    case badResponse = "bad_response"
    /// A reused idle upstream connection closed before answering, and the request (safe to
    /// send twice) went again on a new connection; the client saw no error.
    case staleRetried = "stale_retried"

    init(connectFailure reason: UpstreamFailureReason) {
        switch reason {
        case .refused: self = .connectRefused
        case .unreachable: self = .connectUnreachable
        case .timeout: self = .connectTimeout
        case .resolve: self = .connectResolve
        case .tls: self = .connectTLS
        case .other: self = .connectOther
        }
    }
}

/// Metric handles of one `http` listener.
struct HTTPListenerMetrics: Sendable {
    /// 1xx to 5xx.
    let requests: [Counter]
    let duration: DurationHistogram
    let inFlight: Gauge
    let upstreamErrors: [HTTPUpstreamError: Counter]

    /// Every series here, for `SeriesRetirement`.
    var handles: [SeriesHandle] {
        (requests + upstreamErrors.values).map { .counter($0) } + [.histogram(duration), .gauge(inFlight)]
    }
}
