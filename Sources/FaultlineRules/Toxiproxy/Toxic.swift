/// A Toxiproxy toxic, in Toxiproxy's words and units (milliseconds, KB/s, microseconds for the
/// slicer's delay), and its translation to and from a Faultline fault rule. The units are
/// converted here and nowhere else: a toxic read back gives the numbers it was made with.
public struct Toxic: Sendable, Equatable {
    /// The origin of the runtime listeners and faults made through the Toxiproxy API.
    public static let origin = "toxiproxy"
    /// The `file` of the source location of what this API makes.
    public static let sourceFile = "<toxiproxy>"

    public var name: String
    public var type: String
    /// `upstream` (client to service) or `downstream` (service to client).
    public var stream: FaultDirection
    public var toxicity: Double
    /// Integer attributes by their Toxiproxy name.
    public var attributes: [String: Int]

    public init(name: String, type: String, stream: FaultDirection, toxicity: Double, attributes: [String: Int]) {
        self.name = name
        self.type = type
        self.stream = stream
        self.toxicity = toxicity
        self.attributes = attributes
    }

    /// The attributes of each type Faultline serves, as Toxiproxy names them.
    public static let attributeNames: [String: [String]] = [
        "latency": ["latency", "jitter"],
        "bandwidth": ["rate"],
        "slow_close": ["delay"],
        "timeout": ["timeout"],
        "reset_peer": ["timeout"],
        "slicer": ["average_size", "size_variation", "delay"],
        "limit_data": ["bytes"],
    ]

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case invalidType
        case invalidStream
        case invalidAttribute(String)

        /// Toxiproxy's own messages where it has one.
        public var description: String {
            switch self {
            case .invalidType: "invalid toxic type"
            case .invalidStream: "stream was invalid, can be either upstream or downstream"
            case .invalidAttribute(let message): "bad request body: \(message)"
            }
        }
    }

    /// The Faultline fault's name: toxic names are unique per proxy, fault names per daemon.
    /// `:` cannot occur in a rule-file name, so these never clash with file faults.
    public static func faultName(proxy: String, toxic: String) -> String { "\(proxy):\(toxic)" }

    /// The fault rule that does what this toxic does, on the proxy's listener.
    public func faultRule(proxy: String) throws(Problem) -> FaultRule {
        guard stream == .upstream || stream == .downstream else { throw .invalidStream }
        guard let names = Self.attributeNames[type] else { throw .invalidType }
        guard toxicity >= 0, toxicity <= 1 else { throw .invalidAttribute("toxicity must be between 0 and 1") }
        for name in names where (attributes[name] ?? 0) < 0 {
            throw .invalidAttribute("\(type) attribute \(name) must not be negative")
        }
        func value(_ name: String) -> Int { attributes[name] ?? 0 }
        let action: FaultAction
        switch type {
        case "latency":
            action = .latency(LatencyFault(
                delay: .milliseconds(value("latency")), jitter: .milliseconds(value("jitter")),
                distribution: .uniform, point: .chunk))
        case "bandwidth":
            // Toxiproxy's KB is 1000 bytes (it sleeps len/(rate*1000) seconds per chunk).
            guard value("rate") > 0 else { throw .invalidAttribute("bandwidth attribute rate must be at least 1 (KB/s)") }
            action = .bandwidth(bytesPerSecond: value("rate") * 1000)
        case "slow_close":
            action = .slowClose(delay: .milliseconds(value("delay")))
        case "timeout":
            action = .blackhole(closeAfter: value("timeout") == 0 ? nil : .milliseconds(value("timeout")))
        case "reset_peer":
            action = .reset(after: .milliseconds(value("timeout")), afterBytes: nil)
        case "slicer":
            guard value("average_size") > 0 else { throw .invalidAttribute("slicer attribute average_size must be at least 1") }
            guard value("size_variation") < value("average_size") else {
                throw .invalidAttribute("slicer attribute size_variation must be smaller than average_size")
            }
            action = .slicer(size: value("average_size"), variation: value("size_variation"), delay: .microseconds(value("delay")))
        case "limit_data":
            action = .limit(bytes: value("bytes"))
        default:
            throw .invalidType
        }
        return FaultRule(
            name: Self.faultName(proxy: proxy, toxic: name), listener: proxy, probability: toxicity, direction: stream,
            action: action, source: SourceLocation(file: Self.sourceFile, line: 1, column: 1))
    }

    /// The toxic a fault made by `faultRule(proxy:)` came from.
    public init?(fault: FaultRule) {
        let prefix = fault.listener + ":"
        guard fault.name.hasPrefix(prefix) else { return nil }
        let name = String(fault.name.dropFirst(prefix.count))
        func ms(_ duration: Duration) -> Int { Int(duration.nanoseconds / 1_000_000) }
        let type: String
        let attributes: [String: Int]
        switch fault.action {
        case .latency(let latency):
            (type, attributes) = ("latency", ["latency": ms(latency.delay), "jitter": ms(latency.jitter)])
        case .bandwidth(let bytesPerSecond):
            (type, attributes) = ("bandwidth", ["rate": bytesPerSecond / 1000])
        case .slowClose(let delay):
            (type, attributes) = ("slow_close", ["delay": ms(delay)])
        case .blackhole(let closeAfter):
            (type, attributes) = ("timeout", ["timeout": closeAfter.map(ms) ?? 0])
        case .reset(let after, nil):
            (type, attributes) = ("reset_peer", ["timeout": ms(after)])
        case .slicer(let size, let variation, let delay):
            (type, attributes) = ("slicer", ["average_size": size, "size_variation": variation, "delay": Int(delay.nanoseconds / 1000)])
        case .limit(let bytes):
            (type, attributes) = ("limit_data", ["bytes": bytes])
        default:
            return nil
        }
        self.init(name: name, type: type, stream: fault.direction, toxicity: fault.probability, attributes: attributes)
    }
}
