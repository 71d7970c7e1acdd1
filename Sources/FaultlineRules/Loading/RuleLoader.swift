import Yams
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Turns a rule folder into one validated `RuleSet`, or every error found in it.
public enum RuleLoader {
    /// The rule files of a folder, sorted by name so that "file order" means one thing.
    /// Hidden files and editors' scratch files are not rules.
    public static func ruleFiles(in directory: String) throws(RuleErrors) -> [String] {
        guard let dir = opendir(directory) else {
            let reason = String(cString: strerror(errno))
            throw RuleErrors([RuleError("cannot read rule folder: \(reason)", at: SourceLocation(file: directory, line: 1, column: 1))])
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard !name.hasPrefix("."), name.hasSuffix(".yaml") || name.hasSuffix(".yml") else { continue }
            names.append(name)
        }
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        return names.sorted().map { base + $0 }
    }

    /// Reads and validates the whole folder. Either every file is good and the result is the
    /// one snapshot they make together, or nothing is returned but the errors.
    public static func load(directory: String) -> Result<RuleSet, RuleErrors> {
        let files: [String]
        do {
            files = try ruleFiles(in: directory)
        } catch {
            return .failure(error)
        }
        var sources: [(file: String, text: String)] = []
        var errors: [RuleError] = []
        for file in files {
            switch readText(file) {
            case .success(let text): sources.append((file, text))
            case .failure(let error): errors.append(error)
            }
        }
        switch load(sources: sources) {
        case .success(let set):
            return errors.isEmpty ? .success(set) : .failure(RuleErrors(errors))
        case .failure(let more):
            return .failure(RuleErrors(errors + more.errors))
        }
    }

    /// Validates rule texts given with their file names (the folder loader and tests use it).
    public static func load(sources: [(file: String, text: String)]) -> Result<RuleSet, RuleErrors> {
        var errors: [RuleError] = []
        var listeners: [ListenerRule] = []
        var faults: [FaultRule] = []
        var declaredListeners: [RuleFileParser.Declaration] = []
        var declaredFaults: [RuleFileParser.Declaration] = []
        for source in sources {
            let parsed = RuleFileParser.parse(source.text, file: source.file)
            errors += parsed.errors
            listeners += parsed.listeners
            faults += parsed.faults
            declaredListeners += parsed.declaredListeners
            declaredFaults += parsed.declaredFaults
        }
        // Names are checked over every declaration, so that a name used twice is reported in
        // the same run as the other errors of either declaration.
        errors += listenerErrors(declaredListeners)
        errors += duplicateNameErrors(declaredFaults, kind: "fault")
        errors += faultErrors(faults, listeners: declaredListeners, checkingNames: false)
        // A fault with errors of its own is not a rule, but the listener it names is checked
        // too, so that a wrong listener name is not reported only once the rest is fixed.
        let parsed = Set(faults.map(\.source))
        let listenerNames = declaredListeners.map(\.name)
        for fault in declaredFaults where !parsed.contains(fault.source) {
            if let listener = fault.listener, let error = undeclaredListenerError(
                fault: fault.name, listener: listener, at: fault.source, listenerNames: listenerNames) {
                errors.append(error)
            }
        }
        if !errors.isEmpty { return .failure(RuleErrors(errors)) }
        return .success(RuleSet(listeners: listeners, faults: faults, files: sources.map(\.file)))
    }

    /// Every declaration of a name after its first, as an error.
    static func duplicateNameErrors(_ declarations: [RuleFileParser.Declaration], kind: String) -> [RuleError] {
        var first: [String: SourceLocation] = [:]
        var errors: [RuleError] = []
        for declaration in declarations {
            if let earlier = first[declaration.name] {
                errors.append(RuleError(
                    "\(kind) \"\(declaration.name)\" is already declared at \(earlier)", at: declaration.source))
            } else {
                first[declaration.name] = declaration.source
            }
        }
        return errors
    }

    /// Checks between listeners, wherever they were declared: unique names, one listener per
    /// address.
    static func crossFileErrors(_ listeners: [ListenerRule]) -> [RuleError] {
        listenerErrors(listeners.map(RuleFileParser.Declaration.init))
    }

    /// The same over declarations, valid or not, so that these errors come in the same run as
    /// the declarations' own.
    static func listenerErrors(_ listeners: [RuleFileParser.Declaration]) -> [RuleError] {
        var errors = duplicateNameErrors(listeners, kind: "listener")
        var byAddress: [HostPort: RuleFileParser.Declaration] = [:]
        for listener in listeners {
            guard let listen = listener.listen, listen.port != 0 else { continue }
            let wildcard = listen.host == "0.0.0.0" || listen.host == "::"
            let clash = byAddress[listen]
                ?? byAddress.first { (address, _) in
                    address.port == listen.port
                        && (wildcard || address.host == "0.0.0.0" || address.host == "::")
                        && address.isIPv6Literal == listen.isIPv6Literal
                }?.value
            if let clash {
                errors.append(RuleError(
                    "listener \"\(listener.name)\" listens on \(listen), as does \"\(clash.name)\" (\(clash.source))",
                    at: listener.source))
            } else {
                byAddress[listen] = listener
            }
        }
        return errors
    }

    /// Checks between faults and listeners: unique fault names, known listeners, and what each
    /// listener's protocol and TLS allow.
    public static func faultErrors(_ faults: [FaultRule], listeners: [ListenerRule]) -> [RuleError] {
        faultErrors(faults, listeners: listeners.map(RuleFileParser.Declaration.init))
    }

    /// The same against listener declarations, valid or not (a listener with errors of its own
    /// still has a name, and maybe a protocol, that its faults are checked against); names are
    /// checked only `checkingNames`.
    static func faultErrors(
        _ faults: [FaultRule], listeners: [RuleFileParser.Declaration], checkingNames: Bool = true
    ) -> [RuleError] {
        var errors = checkingNames
            ? duplicateNameErrors(faults.map { .init(name: $0.name, source: $0.source) }, kind: "fault") : []
        let listenerNames = listeners.map(\.name)
        let listenersByName = Dictionary(listeners.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for fault in faults {
            if let listener = listenersByName[fault.listener] {
                if let listenerProtocol = listener.protocol {
                    errors += protocolErrors(fault, listenerProtocol: listenerProtocol)
                }
                switch fault.action {
                case .certificate, .handshake:
                    if !listener.hasTLS {
                        errors.append(RuleError(
                            "fault \"\(fault.name)\": \(fault.action.kind) needs a listener with a tls: block", at: fault.source))
                    }
                default:
                    break
                }
            }
            if let error = undeclaredListenerError(
                fault: fault.name, listener: fault.listener, at: fault.source, listenerNames: listenerNames) {
                errors.append(error)
            }
        }
        return errors
    }

    /// A fault naming a listener that is not declared, with the closest declared name.
    static func undeclaredListenerError(
        fault: String, listener: String, at source: SourceLocation, listenerNames: [String]
    ) -> RuleError? {
        guard !listenerNames.contains(listener) else { return nil }
        var message = "fault \"\(fault)\" names listener \"\(listener)\", which is not declared"
        if let suggestion = NodeReader.closest(to: listener, in: listenerNames) {
            message += "; did you mean \"\(suggestion)\"?"
        }
        return RuleError(message, at: source)
    }

    /// What a fault may do depends on what its listener speaks: per connection on `tcp`, per
    /// request on `http`.
    static func protocolErrors(_ fault: FaultRule, listenerProtocol: ListenerProtocol) -> [RuleError] {
        var errors: [RuleError] = []
        let kind = fault.action.kind
        let at = fault.source
        switch listenerProtocol {
        case .tcp:
            if kind == "abort" {
                errors.append(RuleError("fault \"\(fault.name)\": abort needs a listener with protocol: http", at: at))
            }
            if !fault.match.isEmpty {
                errors.append(RuleError("fault \"\(fault.name)\": match needs a listener with protocol: http", at: at))
            }
            if case .latency(let latency) = fault.action, let point = latency.point, !LatencyPoint.tcpPoints.contains(point) {
                errors.append(RuleError(
                    "fault \"\(fault.name)\": latency.apply: \(point.rawValue) needs a listener with protocol: http", at: at))
            }
        case .http:
            guard FaultAction.httpKinds.contains(kind) else {
                errors.append(RuleError(
                    "fault \"\(fault.name)\": \(kind) acts on TCP listeners; on an http listener use one of \(FaultAction.httpKinds.joined(separator: ", "))",
                    at: at))
                return errors
            }
            if fault.direction != .both {
                errors.append(RuleError(
                    "fault \"\(fault.name)\": direction is for TCP listeners; on an http listener faults act on the request or its response",
                    at: at))
            }
            switch fault.action {
            case .latency(let latency):
                if let point = latency.point, !LatencyPoint.httpPoints.contains(point) {
                    errors.append(RuleError(
                        "fault \"\(fault.name)\": latency.apply on an http listener is request or response, not \(point.rawValue)",
                        at: at))
                }
            case .reset(let after, _):
                if after != .zero {
                    errors.append(RuleError(
                        "fault \"\(fault.name)\": reset.after is for TCP listeners; on an http listener reset at once or after_bytes of the response body",
                        at: at))
                }
            default:
                break
            }
        }
        return errors
    }

    static func readText(_ path: String) -> Result<String, RuleError> {
        let location = SourceLocation(file: path, line: 1, column: 1)
        guard let file = fopen(path, "rb") else {
            return .failure(RuleError("cannot read file: \(String(cString: strerror(errno)))", at: location))
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count > 0 { bytes += chunk[0..<count] }
            if count < chunk.count { break }
            // A rule file is small; a huge one is a mistake (a log written into the folder).
            if bytes.count > 4 << 20 {
                return .failure(RuleError("file is larger than 4 MiB", at: location))
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return .failure(RuleError("file is not valid UTF-8", at: location))
        }
        return .success(text)
    }
}

extension RuleLoader {
    /// One fault rule from text (YAML, or JSON, which is YAML too): what the control socket
    /// accepts for a runtime fault, read by the same parser as the files.
    public static func parseFault(_ text: String, source: String) -> Result<FaultRule, RuleErrors> {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            return .failure(RuleErrors([RuleFileParser.syntaxError(error, file: source)]))
        } catch {
            return .failure(RuleErrors([RuleError("cannot parse: \(error)", at: SourceLocation(file: source, line: 1, column: 1))]))
        }
        guard let node else {
            return .failure(RuleErrors([RuleError("expected a fault rule, found nothing", at: SourceLocation(file: source, line: 1, column: 1))]))
        }
        var reader = NodeReader(file: source)
        var declaration: RuleFileParser.Declaration?
        let fault = FaultRuleParser.parse(node, path: "", reader: &reader, declaration: &declaration)
        if let fault, reader.errors.isEmpty { return .success(fault) }
        return .failure(RuleErrors(reader.errors))
    }
}
