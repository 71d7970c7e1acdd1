/// What a listener speaks: bytes (`tcp`) or HTTP/1.1 requests (`http`), which faults can
/// then target one by one.
public enum ListenerProtocol: String, Sendable, Hashable, CaseIterable {
    case tcp
    case http
}

/// One listener as the rule files declare it: where Faultline listens and where it forwards.
public struct ListenerRule: Sendable, Hashable {
    public static let defaultConnectTimeout: Duration = .seconds(5)
    public static let defaultIdleTimeout: Duration = .seconds(3600)
    /// Each open connection holds two descriptors and at most about 200 KiB of buffers;
    /// 10,000 fits the systemd unit's LimitNOFILE=65536 with room for every other listener.
    public static let defaultMaxConnections = 10_000

    public var name: String
    public var listen: HostPort
    public var upstream: HostPort
    public var `protocol`: ListenerProtocol
    /// How long dialing the upstream may take before the client is closed.
    public var connectTimeout: Duration
    /// A connection with no byte in either direction for this long is closed.
    public var idleTimeout: Duration
    /// Open connections beyond this many are closed (reset) as soon as they are accepted.
    public var maxConnections: Int
    /// `http` listeners only.
    public var http: HTTPSettings
    /// TLS termination with Faultline's CA; nil for plain TCP/HTTP.
    public var tls: TLSSettings?
    /// TLS towards the upstream; nil for plain TCP to it.
    public var upstreamTLS: UpstreamTLSSettings?
    /// Where the listener was declared, for messages that point back at the file.
    public var source: SourceLocation

    public init(
        name: String,
        listen: HostPort,
        upstream: HostPort,
        protocol: ListenerProtocol = .tcp,
        connectTimeout: Duration = ListenerRule.defaultConnectTimeout,
        idleTimeout: Duration = ListenerRule.defaultIdleTimeout,
        maxConnections: Int = ListenerRule.defaultMaxConnections,
        http: HTTPSettings = HTTPSettings(),
        tls: TLSSettings? = nil,
        upstreamTLS: UpstreamTLSSettings? = nil,
        source: SourceLocation = SourceLocation(file: "<command line>", line: 1, column: 1)
    ) {
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.protocol = `protocol`
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.http = http
        self.tls = tls
        self.upstreamTLS = upstreamTLS
        self.source = source
    }

    /// True when a running listener can take this rule without rebinding its socket.
    public func sameSocket(as other: ListenerRule) -> Bool {
        name == other.name && listen == other.listen && `protocol` == other.protocol
    }
}

/// How Faultline speaks TLS to the upstream (`upstream_tls:`): which CAs it trusts, or none
/// at all when told to be insecure, and the name it asks for and checks.
public struct UpstreamTLSSettings: Sendable, Hashable {
    /// A PEM bundle of CAs to trust instead of the system's.
    public var caFile: String?
    /// No verification at all (a test service with a throwaway certificate).
    public var insecure: Bool
    /// SNI and the name checked; default: the upstream's host when it is a name.
    public var serverName: String?

    public init(caFile: String? = nil, insecure: Bool = false, serverName: String? = nil) {
        self.caFile = caFile
        self.insecure = insecure
        self.serverName = serverName
    }
}
