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
        self.source = source
    }

    /// True when a running listener can take this rule without rebinding its socket.
    public func sameSocket(as other: ListenerRule) -> Bool {
        name == other.name && listen == other.listen && `protocol` == other.protocol
    }
}
