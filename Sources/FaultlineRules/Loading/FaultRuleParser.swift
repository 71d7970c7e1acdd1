import Yams

/// Parses one entry of `faults:`. Each fault names its listener and carries exactly one action
/// key (`latency:`, `bandwidth:`, ...) whose mapping holds that action's settings.
enum FaultRuleParser {
    static let commonKeys = ["name", "listener", "enabled", "probability", "direction", "clients", "match"]
    static let allKeys = commonKeys + FaultAction.kinds

    /// The fault, or nil with its errors reported; `declaration` is its name when that much is
    /// right.
    static func parse(
        _ node: Node, path: String, reader: inout NodeReader, declaration: inout RuleFileParser.Declaration?
    ) -> FaultRule? {
        guard let fields = reader.fields(node, path: path, allowed: allKeys, required: ["name", "listener"]) else {
            return nil
        }
        let errorsBefore = reader.errors.count
        let name = fields["name"].flatMap { reader.name($0) }
        let listener = fields["listener"].flatMap { reader.name($0) }
        if let name { declaration = .init(name: name, source: reader.location(of: node), listener: listener) }
        let enabled = fields["enabled"].flatMap { reader.bool($0) } ?? true
        let probability = fields["probability"].flatMap { reader.probability($0) } ?? 1
        let direction = fields["direction"].flatMap { reader.oneOf($0, FaultDirection.self) } ?? .both
        let clients = fields["clients"].flatMap { reader.cidrList($0) } ?? []
        let match = fields["match"].flatMap { HTTPRuleParser.match($0, reader: &reader) } ?? RequestMatch()

        let actionEntries = FaultAction.kinds.compactMap { fields[$0] }
        var action: FaultAction?
        switch actionEntries.count {
        case 0:
            reader.report("\(path): a fault needs one action: \(FaultAction.kinds.joined(separator: ", "))", at: node)
        case 1:
            action = parseAction(actionEntries[0], reader: &reader)
        default:
            let names = actionEntries.map { $0.path.split(separator: ".").last.map(String.init) ?? "" }
            reader.report(
                "\(path): one action per fault, found \(names.joined(separator: " and ")); write two faults",
                at: actionEntries[1].key)
        }
        guard reader.errors.count == errorsBefore, let name, let listener, let action else { return nil }
        return FaultRule(
            name: name, listener: listener, enabled: enabled, probability: probability, direction: direction,
            clients: clients, match: match, action: action, source: reader.location(of: node))
    }

    static func parseAction(_ entry: Fields.Entry, reader: inout NodeReader) -> FaultAction? {
        let kind = String(entry.path.split(separator: ".").last ?? "")
        // `refuse:` and `refuse: {}` both mean "refuse"; so do bare `blackhole:` and `slow_close:`
        // with their defaults where they have them.
        let value: Node
        if case let .scalar(scalar) = entry.value, scalar.isNullLike {
            value = Node([(Node, Node)]())
        } else {
            value = entry.value
        }
        switch kind {
        case "latency":
            guard let f = reader.fields(value, path: entry.path, allowed: ["delay", "jitter", "distribution", "apply"],
                                        required: ["delay"]) else { return nil }
            guard let delay = f["delay"].flatMap({ reader.duration($0) }) else { return nil }
            let jitter = f["jitter"].flatMap { reader.duration($0) } ?? .zero
            let distribution = f["distribution"].flatMap { reader.oneOf($0, LatencyDistribution.self) } ?? .uniform
            let point = f["apply"].flatMap { reader.oneOf($0, LatencyPoint.self) }
            return .latency(LatencyFault(delay: delay, jitter: jitter, distribution: distribution, point: point))
        case "bandwidth":
            guard let f = reader.fields(value, path: entry.path, allowed: ["rate"], required: ["rate"]),
                let rate = f["rate"].flatMap({ reader.size($0, minimum: 1) })
            else { return nil }
            return .bandwidth(bytesPerSecond: rate)
        case "slicer":
            guard let f = reader.fields(value, path: entry.path, allowed: ["size", "variation", "delay"],
                                        required: ["size", "delay"]) else { return nil }
            guard let size = f["size"].flatMap({ reader.size($0, minimum: 1) }),
                let delay = f["delay"].flatMap({ reader.duration($0) })
            else { return nil }
            let variation = f["variation"].flatMap { reader.size($0) } ?? 0
            if variation >= size, let entry = f["variation"] {
                reader.report("\(entry.path): must be smaller than size (\(size))", at: entry.value)
                return nil
            }
            return .slicer(size: size, variation: variation, delay: delay)
        case "reset":
            guard let f = reader.fields(value, path: entry.path, allowed: ["after", "after_bytes"]) else { return nil }
            let after = f["after"].flatMap { reader.duration($0) } ?? .zero
            let afterBytes = f["after_bytes"].flatMap { reader.size($0) }
            if f["after"] != nil, f["after_bytes"] != nil {
                reader.report("\(entry.path): give after or after_bytes, not both", at: entry.value)
                return nil
            }
            return .reset(after: after, afterBytes: afterBytes)
        case "refuse":
            guard reader.fields(value, path: entry.path, allowed: []) != nil else { return nil }
            return .refuse
        case "blackhole":
            guard let f = reader.fields(value, path: entry.path, allowed: ["close_after"]) else { return nil }
            return .blackhole(closeAfter: f["close_after"].flatMap { reader.duration($0, minimum: .milliseconds(1)) })
        case "limit":
            guard let f = reader.fields(value, path: entry.path, allowed: ["bytes"], required: ["bytes"]),
                let bytes = f["bytes"].flatMap({ reader.size($0) })
            else { return nil }
            return .limit(bytes: bytes)
        case "cut":
            guard let f = reader.fields(value, path: entry.path, allowed: ["after", "mode"], required: ["after"]),
                let after = f["after"].flatMap({ reader.duration($0) })
            else { return nil }
            let mode = f["mode"].flatMap { reader.oneOf($0, CutMode.self) } ?? .reset
            return .cut(after: after, mode: mode)
        case "certificate":
            guard let f = reader.fields(value, path: entry.path, allowed: ["kind", "within"], required: ["kind"]),
                let kind = f["kind"].flatMap({ reader.oneOf($0, CertificateFaultKind.self) })
            else { return nil }
            var fault = CertificateFault(kind: kind)
            if let within = f["within"] {
                guard kind == .expiring_soon else {
                    reader.report("\(within.path): only for kind: expiring_soon", at: within.key)
                    return nil
                }
                guard let value = reader.duration(within, minimum: .seconds(1)) else { return nil }
                fault.within = value
            }
            return .certificate(fault)
        case "handshake":
            guard let f = reader.fields(value, path: entry.path, allowed: ["kind", "delay"], required: ["kind"]),
                let kind = f["kind"].flatMap({ reader.oneOf($0, HandshakeFaultKind.self) })
            else { return nil }
            var fault = HandshakeFault(kind: kind)
            if kind == .delay {
                guard let entry = f["delay"] else {
                    reader.report("\(entry.path).delay: required for kind: delay", at: value)
                    return nil
                }
                guard let delay = reader.duration(entry, minimum: .milliseconds(1)) else { return nil }
                fault.delay = delay
            } else if let delay = f["delay"] {
                reader.report("\(delay.path): only for kind: delay", at: delay.key)
                return nil
            }
            return .handshake(fault)
        case "abort":
            return HTTPRuleParser.abort(value, path: entry.path, reader: &reader).map { .abort($0) }
        case "slow_close":
            guard let f = reader.fields(value, path: entry.path, allowed: ["delay"], required: ["delay"]),
                let delay = f["delay"].flatMap({ reader.duration($0) })
            else { return nil }
            return .slowClose(delay: delay)
        default:
            return nil
        }
    }
}
