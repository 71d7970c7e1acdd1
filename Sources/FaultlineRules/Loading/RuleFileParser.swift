import Yams

/// Parses the text of one rule file into its listeners, collecting every error. Checks that
/// need the whole folder (duplicate names, two listeners on one address) are `RuleLoader`'s.
public struct RuleFileParser {
    static let topLevelKeys = ["listeners", "faults"]
    static let listenerKeys = ["name", "listen", "upstream", "protocol", "timeouts", "http", "tls", "upstream_tls", "max_connections"]
    static let timeoutKeys = ["connect", "idle"]

    public struct Result: Sendable {
        public var listeners: [ListenerRule]
        public var faults: [FaultRule] = []
        public var errors: [RuleError]
        /// Every listener and fault declared with a usable name, valid or not, in file order:
        /// a name declared twice is an error even when one of the two has errors of its own,
        /// and a fault naming a listener that has errors is not reported again as naming an
        /// undeclared one.
        public var declaredListeners: [Declaration] = []
        public var declaredFaults: [Declaration] = []
    }

    /// A name as declared, and where; for a listener also what the checks between listeners
    /// and faults need, each when that much of the declaration is right.
    public struct Declaration: Sendable {
        public var name: String
        public var source: SourceLocation
        public var listen: HostPort?
        public var `protocol`: ListenerProtocol?
        /// Whether the listener has a `tls:` block (right or not: a certificate fault on it is
        /// not also reported as needing one).
        public var hasTLS = false
        /// For a fault: the listener it names, when that much is right.
        public var listener: String?

        init(
            name: String, source: SourceLocation, listen: HostPort? = nil, protocol: ListenerProtocol? = nil,
            hasTLS: Bool = false, listener: String? = nil
        ) {
            self.name = name
            self.source = source
            self.listen = listen
            self.protocol = `protocol`
            self.hasTLS = hasTLS
            self.listener = listener
        }

        init(_ listener: ListenerRule) {
            self.init(
                name: listener.name, source: listener.source, listen: listener.listen, protocol: listener.protocol,
                hasTLS: listener.tls != nil)
        }
    }

    public static func parse(_ text: String, file: String) -> Result {
        var reader = NodeReader(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            return Result(listeners: [], errors: [Self.syntaxError(error, file: file)])
        } catch {
            let location = SourceLocation(file: file, line: 1, column: 1)
            return Result(listeners: [], errors: [RuleError("cannot parse YAML: \(error)", at: location)])
        }
        // A file of comments only is an empty rule file, not an error: it is how a rule is
        // switched off by commenting it out.
        guard let root, !(root.scalar?.isNullLike ?? false) else {
            return Result(listeners: [], errors: [])
        }
        var listeners: [ListenerRule] = []
        var faults: [FaultRule] = []
        var declaredListeners: [Declaration] = []
        var declaredFaults: [Declaration] = []
        if let top = reader.fields(root, path: "", allowed: topLevelKeys) {
            if let entry = top["faults"], let items = reader.sequence(entry) {
                for (index, item) in items.enumerated() {
                    var declaration: Declaration?
                    if let fault = FaultRuleParser.parse(item, path: "faults[\(index)]", reader: &reader, declaration: &declaration) {
                        faults.append(fault)
                    }
                    if let declaration { declaredFaults.append(declaration) }
                }
            }
            if let entry = top["listeners"], let items = reader.sequence(entry) {
                for (index, item) in items.enumerated() {
                    var declaration: Declaration?
                    if let listener = parseListener(item, path: "listeners[\(index)]", reader: &reader, declaration: &declaration) {
                        listeners.append(listener)
                    }
                    if let declaration { declaredListeners.append(declaration) }
                }
            }
        }
        return Result(
            listeners: listeners, faults: faults, errors: reader.errors,
            declaredListeners: declaredListeners, declaredFaults: declaredFaults)
    }

    /// The listener, or nil with its errors reported; `declaration` is what is right of it when
    /// at least its name is.
    static func parseListener(
        _ node: Node, path: String, reader: inout NodeReader, declaration: inout Declaration?
    ) -> ListenerRule? {
        guard
            let fields = reader.fields(node, path: path, allowed: listenerKeys, required: ["name", "listen", "upstream"])
        else { return nil }
        let errorsBefore = reader.errors.count
        let name = fields["name"].flatMap { reader.name($0) }
        var listen = fields["listen"].flatMap { reader.hostPort($0, allowPortZero: true) }
        if let address = listen, let entry = fields["listen"], !address.isIPLiteral, address.host != "localhost" {
            reader.report("\(entry.path): \"\(address)\" must listen on an IP address or localhost", at: entry.value)
            listen = nil
        }
        // localhost binds as 127.0.0.1, and clashes as it too.
        listen = listen.map { $0.host == "localhost" ? HostPort(host: "127.0.0.1", port: $0.port) : $0 }
        let upstream = fields["upstream"].flatMap { reader.hostPort($0, allowPortZero: false) }
        var proto = ListenerProtocol.tcp
        var protoIsKnown = true
        if let entry = fields["protocol"] {
            if let value = reader.oneOf(entry, ListenerProtocol.self) { proto = value } else { protoIsKnown = false }
        }
        if let name {
            declaration = Declaration(
                name: name, source: reader.location(of: node), listen: listen, protocol: protoIsKnown ? proto : nil,
                hasTLS: fields["tls"] != nil)
        }
        var http = HTTPSettings()
        if let entry = fields["http"] {
            if proto != .http {
                reader.report("\(entry.path): only for listeners with protocol: http", at: entry.key)
            } else if let settings = HTTPRuleParser.settings(entry, reader: &reader) {
                http = settings
            }
        }
        var tls: TLSSettings?
        if let entry = fields["tls"] {
            if case .scalar(let scalar) = entry.value, scalar.isNullLike {
                tls = TLSSettings.fromSNI
            } else if let t = reader.fields(entry.value, path: entry.path, allowed: ["names", "certificate", "key", "handshake_timeout"]) {
                var settings = TLSSettings.fromSNI
                if let e = t["handshake_timeout"], let value = reader.duration(e, minimum: .milliseconds(1)) {
                    settings.handshakeTimeout = value
                }
                if let certificate = t["certificate"] { settings.certificateFile = reader.string(certificate) }
                if let key = t["key"] { settings.keyFile = reader.string(key) }
                if (settings.certificateFile == nil) != (settings.keyFile == nil) {
                    reader.report("\(entry.path): certificate and key go together", at: (t["certificate"] ?? t["key"])!.key)
                }
                if let names = t["names"], let items = reader.sequence(names) {
                    settings.names = items.compactMap { item in
                        guard case .scalar(let scalar) = item, !scalar.string.isEmpty, !scalar.isNullLike else {
                            reader.report("\(names.path): expected host names or IP addresses, found \(item.kindName)", at: item)
                            return nil
                        }
                        return scalar.string
                    }
                    if settings.names.isEmpty { reader.report("\(names.path): give at least one name", at: names.value) }
                    settings.namesFromSNI = false
                }
                tls = settings
            }
        }
        var upstreamTLS: UpstreamTLSSettings?
        if let entry = fields["upstream_tls"] {
            if case .scalar(let scalar) = entry.value, scalar.isNullLike {
                upstreamTLS = UpstreamTLSSettings()
            } else if let t = reader.fields(entry.value, path: entry.path, allowed: ["ca", "insecure", "server_name"]) {
                var settings = UpstreamTLSSettings()
                if let ca = t["ca"] { settings.caFile = reader.string(ca) }
                if let insecure = t["insecure"], let value = reader.bool(insecure) { settings.insecure = value }
                if let name = t["server_name"] { settings.serverName = reader.string(name) }
                if settings.insecure, settings.caFile != nil, let ca = t["ca"] {
                    reader.report("\(entry.path): ca and insecure: true exclude each other", at: ca.key)
                }
                upstreamTLS = settings
            }
        }
        var connectTimeout = ListenerRule.defaultConnectTimeout
        var idleTimeout = ListenerRule.defaultIdleTimeout
        if let entry = fields["timeouts"],
            let timeouts = reader.fields(entry.value, path: entry.path, allowed: timeoutKeys)
        {
            if let connect = timeouts["connect"], let value = reader.duration(connect, minimum: .milliseconds(1)) {
                connectTimeout = value
            }
            if let idle = timeouts["idle"], let value = reader.duration(idle, minimum: .milliseconds(1)) {
                idleTimeout = value
            }
        }
        var maxConnections = ListenerRule.defaultMaxConnections
        if let entry = fields["max_connections"], let value = reader.count(entry, minimum: 1) {
            maxConnections = value
        }
        guard reader.errors.count == errorsBefore, let name, let listen, let upstream else { return nil }
        return ListenerRule(
            name: name,
            listen: listen,
            upstream: upstream,
            protocol: proto,
            connectTimeout: connectTimeout,
            idleTimeout: idleTimeout,
            maxConnections: maxConnections,
            http: http,
            tls: tls,
            upstreamTLS: upstreamTLS,
            source: reader.location(of: node)
        )
    }

    static func syntaxError(_ error: YamlError, file: String) -> RuleError {
        switch error {
        case let .scanner(context, problem, mark, _),
            let .parser(context, problem, mark, _),
            let .composer(context, problem, mark, _):
            var message = "invalid YAML: \(problem)"
            if let context { message += " (\(context.text) at \(context.mark.line):\(context.mark.column))" }
            return RuleError(message, at: SourceLocation(file: file, line: mark.line, column: mark.column))
        case let .duplicatedKeysInMapping(duplicates, context):
            return RuleError(
                "invalid YAML: duplicate key \(duplicates.map { "\"\($0)\"" }.joined(separator: ", "))",
                at: SourceLocation(file: file, line: context.mark.line, column: context.mark.column)
            )
        case let .reader(problem, _, _, _):
            return RuleError("invalid file: \(problem)", at: SourceLocation(file: file, line: 1, column: 1))
        default:
            return RuleError("invalid YAML: \(error)", at: SourceLocation(file: file, line: 1, column: 1))
        }
    }
}
