/// Which way a fault acts: on bytes from the client to the service (`upstream`), from the
/// service to the client (`downstream`), or both. Toxiproxy's `stream`, same words.
public enum FaultDirection: String, Sendable, Hashable, CaseIterable {
    case upstream
    case downstream
    case both

    public func includes(upstream isUpstream: Bool) -> Bool {
        self == .both || (self == .upstream) == isUpstream
    }
}

/// How latency jitter is spread around the delay.
public enum LatencyDistribution: String, Sendable, Hashable, CaseIterable {
    /// Evenly within `delay ± jitter`.
    case uniform
    /// Normal with mean `delay` and standard deviation `jitter` (never below 0).
    case normal
    /// At least `delay`, with a heavy tail whose mean excess is `jitter` (Pareto, shape 2.5).
    case pareto
}

/// When latency is added.
public enum LatencyPoint: String, Sendable, Hashable, CaseIterable {
    /// Once, before the upstream is dialed (the client's bytes wait too).
    case connect
    /// Once per direction, before its first byte is passed on.
    case first_byte
    /// Before each chunk read in the direction.
    case chunk
    /// HTTP listeners: before the request is forwarded (the default there).
    case request
    /// HTTP listeners: before the response's first byte reaches the client.
    case response

    public static let tcpPoints: [LatencyPoint] = [.connect, .first_byte, .chunk]
    public static let httpPoints: [LatencyPoint] = [.request, .response]
}

/// How a cut connection ends.
public enum CutMode: String, Sendable, Hashable, CaseIterable {
    /// An RST to both sides: the unplugged cable as applications usually see it.
    case reset
    /// A FIN to both sides.
    case fin
}

public struct LatencyFault: Sendable, Hashable {
    public var delay: Duration
    public var jitter: Duration
    public var distribution: LatencyDistribution
    /// nil: the listener's default, `chunk` for TCP and `request` for HTTP.
    public var point: LatencyPoint?

    public init(delay: Duration, jitter: Duration = .zero, distribution: LatencyDistribution = .uniform,
                point: LatencyPoint? = nil) {
        self.delay = delay
        self.jitter = jitter
        self.distribution = distribution
        self.point = point
    }
}

/// What a fault does. One action per fault rule.
public enum FaultAction: Sendable, Hashable {
    /// Delay (see `LatencyFault.point`).
    case latency(LatencyFault)
    /// At most `bytesPerSecond` per connection and direction.
    case bandwidth(bytesPerSecond: Int)
    /// Writes in slices of about `size` bytes (± `variation`), `delay` apart.
    case slicer(size: Int, variation: Int, delay: Duration)
    /// An RST to both sides after `after` (from when the fault reaches the connection), or once
    /// `afterBytes` have passed in the direction.
    case reset(after: Duration, afterBytes: Int?)
    /// The accepted connection is reset at once; no upstream is dialed.
    case refuse
    /// Bytes in the direction are read and dropped; nothing is answered. With `closeAfter`,
    /// the connection is closed after that long (Toxiproxy's `timeout`).
    case blackhole(closeAfter: Duration?)
    /// Exactly `bytes` pass in the direction, then the connection is closed (a truncated stream).
    case limit(bytes: Int)
    /// The connection is ended after `after` (from when the fault reaches it).
    case cut(after: Duration, mode: CutMode)
    /// The FIN in the direction is held back for `delay`.
    case slowClose(delay: Duration)
    /// HTTP listeners: answer with this response without contacting the upstream.
    case abort(HTTPAbort)
    /// TLS listeners: present a bad certificate (expired, wrong host, ...) to the connection.
    case certificate(CertificateFault)
    /// TLS listeners: disturb the handshake (close, delay, old protocol, client certificate).
    case handshake(HandshakeFault)

    /// The rule key and metric label of the action.
    public var kind: String {
        switch self {
        case .latency: "latency"
        case .bandwidth: "bandwidth"
        case .slicer: "slicer"
        case .reset: "reset"
        case .refuse: "refuse"
        case .blackhole: "blackhole"
        case .limit: "limit"
        case .cut: "cut"
        case .slowClose: "slow_close"
        case .abort: "abort"
        case .certificate: "certificate"
        case .handshake: "handshake"
        }
    }

    public static let kinds = [
        "latency", "bandwidth", "slicer", "reset", "refuse", "blackhole", "limit", "cut", "slow_close", "abort",
        "certificate", "handshake",
    ]
    /// What a fault on an `http` listener may do; each acts on one request.
    public static let httpKinds = ["latency", "abort", "reset", "limit", "blackhole", "bandwidth", "certificate", "handshake"]
    public static let tcpKinds = kinds.filter { $0 != "abort" }
}

/// One fault rule: what to do, to which listener's connections, how often, in which direction
/// and for which clients.
public struct FaultRule: Sendable, Hashable {
    public var name: String
    public var listener: String
    public var enabled: Bool
    /// Chance, drawn once per connection and kept for its life, that the fault acts on it.
    public var probability: Double
    public var direction: FaultDirection
    /// Only clients in these blocks; empty means every client.
    public var clients: [CIDR]
    /// HTTP listeners: which requests (empty matches every request).
    public var match: RequestMatch
    public var action: FaultAction
    public var source: SourceLocation

    public init(
        name: String, listener: String, enabled: Bool = true, probability: Double = 1, direction: FaultDirection = .both,
        clients: [CIDR] = [], match: RequestMatch = RequestMatch(), action: FaultAction,
        source: SourceLocation = SourceLocation(file: "<runtime>", line: 1, column: 1)
    ) {
        self.name = name
        self.listener = listener
        self.enabled = enabled
        self.probability = probability
        self.direction = direction
        self.clients = clients
        self.match = match
        self.action = action
        self.source = source
    }

    /// Where the rule came from, as the metrics label it: `file`, `control` (the control
    /// socket) or `toxiproxy` (the Toxiproxy-compatible API).
    public var origin: String {
        switch source.file {
        case Toxic.sourceFile: Toxic.origin
        case "request", "<runtime>": "control"
        default: "file"
        }
    }

    /// True when the client at `address` (4 or 16 bytes) is targeted.
    public func targets(clientAddress address: [UInt8]?) -> Bool {
        if clients.isEmpty { return true }
        guard let address else { return false }
        return clients.contains { $0.contains(address) }
    }
}
