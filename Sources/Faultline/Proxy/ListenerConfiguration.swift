import FaultlineRules
import Logging
import NIOCore
import NIOSSL
import Prometheus

/// What a connection needs to know about its listener, fixed when the connection is accepted
/// (a reload that changes the upstream applies to new connections only). A class: every
/// connection keeps it, and taking a reference is one retain where copying the struct was a
/// retain of each of the rule's strings and arrays.
final class ListenerConfiguration: Sendable {
    enum Upstream: Sendable {
        /// An IP literal, parsed once: no look-up per connection.
        case address(SocketAddress)
        /// An IP literal on loopback: connected without waiting for an event (see `connect`).
        case loopback(SocketAddress)
        /// A host name, resolved by NIO on each dial so that DNS changes are followed.
        case name(String, Int)
    }

    let rule: ListenerRule
    let upstream: Upstream
    let metrics: ListenerMetrics
    /// The fault rules for this listener, in file order.
    let faults: [FaultRule]
    /// `faultline_faults_injected_total` for each of them, made once.
    private let injectionCounters: [String: Counter]
    /// `http` listeners: the request metrics, and the injection counters of header-triggered
    /// faults (fault name `header`, by kind).
    let http: HTTPListenerMetrics?
    /// TLS listeners: the good certificate and one per certificate fault, minted for these rules.
    let tls: TLSContexts?
    /// `upstream_tls`: the client context towards the upstream, made once per rule set (the
    /// CA bundle is read here, not per connection), and the name it asks for and checks.
    let upstreamTLS: (context: NIOSSLContext, serverName: String?)?
    private let headerInjectionCounters: [String: Counter]
    /// The bytes of each abort rule's answer, made once: an abort that hits a share of the
    /// requests must cost less than the upstream work it saves.
    private let abortAnswers: [String: ByteBuffer]

    init(rule: ListenerRule, faults: [FaultRule], metrics: FaultlineMetrics, authorities: CertificateAuthorities) throws {
        tls = try rule.tls.map {
            try TLSContexts(settings: $0, faults: faults, authorities: authorities, listener: rule.name, metrics: metrics)
        }
        self.rule = rule
        self.faults = faults
        upstreamTLS = try rule.upstreamTLS.map { settings in
            var configuration = TLSConfiguration.makeClientConfiguration()
            if settings.insecure {
                configuration.certificateVerification = .none
            } else if let ca = settings.caFile {
                configuration.trustRoots = .file(ca)
            }
            do {
                let context = try NIOSSLContext(configuration: configuration)
                let name = settings.serverName ?? (rule.upstream.isIPLiteral ? nil : rule.upstream.host)
                return (context, name)
            } catch {
                throw CertificateAuthorityError(description: "upstream_tls: \(settings.caFile.map { "cannot use \($0): " } ?? "")\(error)")
            }
        }
        self.metrics = metrics.listener(rule.name)
        var counters: [String: Counter] = [:]
        for fault in faults {
            counters[fault.name] = metrics.faultInjections(
                listener: rule.name, fault: fault.name, kind: fault.action.kind, source: fault.origin)
        }
        self.injectionCounters = counters
        var answers: [String: ByteBuffer] = [:]
        for fault in faults {
            if case .abort(let abort) = fault.action {
                answers[fault.name] = HTTPResponseBytes.answer(
                    status: abort.status, headers: abort.headers.map { ($0.name, $0.value) }, body: abort.body, isHead: false)
            }
        }
        abortAnswers = answers
        if rule.protocol == .http {
            http = metrics.http(rule.name)
            headerInjectionCounters = rule.http.headerFaults.enabled
                ? Dictionary(uniqueKeysWithValues: ["latency", "abort"].map {
                    ($0, metrics.faultInjections(listener: rule.name, fault: "header", kind: $0, source: "header"))
                })
                : [:]
        } else {
            http = nil
            headerInjectionCounters = [:]
        }
        if rule.upstream.isIPLiteral {
            let address = try SocketAddress(ipAddress: rule.upstream.host, port: rule.upstream.port)
            upstream = LoopbackConnect.isLoopback(address) ? .loopback(address) : .address(address)
        } else {
            upstream = .name(rule.upstream.host, rule.upstream.port)
        }
    }

    /// The same listener with no fault rules: what a WebSocket tunnel of an http listener
    /// runs on (its faults are per request, and the tunnel has no requests).
    func withoutFaults() -> ListenerConfiguration {
        ListenerConfiguration(copying: self, faults: [])
    }

    private init(copying other: ListenerConfiguration, faults: [FaultRule]) {
        rule = other.rule
        upstream = other.upstream
        metrics = other.metrics
        self.faults = faults
        injectionCounters = other.injectionCounters
        http = other.http
        tls = other.tls
        upstreamTLS = other.upstreamTLS
        headerInjectionCounters = other.headerInjectionCounters
        abortAnswers = [:]
    }

    func injections(_ fault: FaultRule) -> Counter {
        injectionCounters[fault.name]!
    }

    /// The answer of an abort rule to a request that keeps its HTTP/1.1 connection and is not
    /// a HEAD (others get theirs made for them).
    func abortAnswer(_ fault: FaultRule) -> ByteBuffer? {
        abortAnswers[fault.name]
    }

    func headerInjections(kind: String) -> Counter? {
        headerInjectionCounters[kind]
    }
}
