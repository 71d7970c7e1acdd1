import Yams

/// The HTTP parts of the schema: a listener's `http:` block, a fault's `match:` and `abort:`.
enum HTTPRuleParser {
    static let settingsKeys = ["response_timeout", "head_timeout", "max_head_size", "header_faults"]
    static let headerFaultKeys = ["enabled", "clients"]
    static let matchKeys = ["method", "path", "headers"]
    static let pathKeys = ["exact", "prefix", "glob"]
    static let headerTestKeys = ["present", "equals", "glob"]
    static let abortKeys = ["status", "headers", "body"]

    static func settings(_ entry: Fields.Entry, reader: inout NodeReader) -> HTTPSettings? {
        guard let f = reader.fields(entry.value, path: entry.path, allowed: settingsKeys) else { return nil }
        var settings = HTTPSettings()
        if let e = f["response_timeout"], let value = reader.duration(e, minimum: .milliseconds(1)) {
            settings.responseTimeout = value
        }
        if let e = f["head_timeout"], let value = reader.duration(e, minimum: .milliseconds(1)) {
            settings.headTimeout = value
        }
        if let e = f["max_head_size"], let value = reader.size(e, minimum: 256) {
            if value > HTTPSettings.parserMaxHeadBytes {
                reader.report("\(e.path): at most \(HTTPSettings.parserMaxHeadBytes / 1024)KiB", at: e.value)
            } else {
                settings.maxHeadBytes = value
            }
        }
        if let e = f["header_faults"], let h = reader.fields(e.value, path: e.path, allowed: headerFaultKeys) {
            settings.headerFaults.enabled = h["enabled"].flatMap { reader.bool($0) } ?? true
            settings.headerFaults.clients = h["clients"].flatMap { reader.cidrList($0) } ?? []
        }
        return settings
    }

    static func match(_ entry: Fields.Entry, reader: inout NodeReader) -> RequestMatch? {
        guard let f = reader.fields(entry.value, path: entry.path, allowed: matchKeys) else { return nil }
        var match = RequestMatch()
        if let e = f["method"] {
            let nodes: [(Node, String)]
            if case .sequence(let items) = e.value {
                nodes = items.enumerated().map { ($1, "\(e.path)[\($0)]") }
            } else {
                nodes = [(e.value, e.path)]
            }
            for (node, path) in nodes {
                guard case .scalar(let scalar) = node, !scalar.isNullLike,
                    !scalar.string.isEmpty, scalar.string.allSatisfy({ $0.isLetter && $0.isASCII })
                else {
                    reader.report("\(path): expected an HTTP method such as GET, found \(node.kindName)", at: node)
                    continue
                }
                match.methods.append(scalar.string.uppercased())
            }
        }
        if let e = f["path"] {
            if case .scalar = e.value {
                if let text = reader.string(e) { match.path = checkedPath(.exact(text), text, e, reader: &reader) }
            } else if let p = reader.fields(e.value, path: e.path, allowed: pathKeys) {
                let given = pathKeys.compactMap { key in p[key].map { (key, $0) } }
                if given.count != 1 {
                    reader.report("\(e.path): give one of exact, prefix, glob", at: e.value)
                } else if let text = reader.string(given[0].1) {
                    let path: PathMatch = switch given[0].0 {
                    case "exact": .exact(text)
                    case "prefix": .prefix(text)
                    default: .glob(text)
                    }
                    match.path = checkedPath(path, text, given[0].1, reader: &reader)
                }
            }
        }
        if let e = f["headers"] {
            guard case .mapping(let mapping) = e.value else {
                reader.report("\(e.path): expected a mapping of header names, found \(e.value.kindName)", at: e.value)
                return nil
            }
            for (keyNode, valueNode) in mapping {
                guard case .scalar(let key) = keyNode, isToken(key.string) else {
                    reader.report("\(e.path): \(keyNode.kindName) is not a header name", at: keyNode)
                    continue
                }
                let path = "\(e.path).\(key.string)"
                let item = Fields.Entry(key: keyNode, value: valueNode, path: path)
                if case .scalar = valueNode {
                    if let text = reader.string(item) { match.headers.append(HeaderMatch(name: key.string, test: .equals(text))) }
                    continue
                }
                guard let t = reader.fields(valueNode, path: path, allowed: headerTestKeys) else { continue }
                let given = headerTestKeys.compactMap { name in t[name].map { (name, $0) } }
                guard given.count == 1 else {
                    reader.report("\(path): give one of present, equals, glob", at: valueNode)
                    continue
                }
                switch given[0].0 {
                case "present":
                    if let present = reader.bool(given[0].1) {
                        if present {
                            match.headers.append(HeaderMatch(name: key.string, test: .present))
                        } else {
                            reader.report("\(given[0].1.path): only present: true is supported", at: given[0].1.value)
                        }
                    }
                case "equals":
                    if let text = reader.string(given[0].1) { match.headers.append(HeaderMatch(name: key.string, test: .equals(text))) }
                default:
                    if let text = reader.string(given[0].1) { match.headers.append(HeaderMatch(name: key.string, test: .glob(text))) }
                }
            }
        }
        return match
    }

    private static func checkedPath(_ path: PathMatch, _ text: String, _ entry: Fields.Entry, reader: inout NodeReader) -> PathMatch? {
        guard text.hasPrefix("/") || text.hasPrefix("*") else {
            reader.report("\(entry.path): \"\(text)\" is not a path (it must start with /)", at: entry.value)
            return nil
        }
        return path
    }

    static func abort(_ value: Node, path: String, reader: inout NodeReader) -> HTTPAbort? {
        guard let f = reader.fields(value, path: path, allowed: abortKeys, required: ["status"]) else { return nil }
        guard let e = f["status"], let text = reader.string(e) else { return nil }
        guard let status = Int(text), (200...599).contains(status) else {
            reader.report("\(e.path): \"\(text)\" is not a status from 200 to 599", at: e.value)
            return nil
        }
        var abort = HTTPAbort(status: status)
        if let e = f["headers"] {
            guard case .mapping(let mapping) = e.value else {
                reader.report("\(e.path): expected a mapping of header names to values, found \(e.value.kindName)", at: e.value)
                return nil
            }
            for (keyNode, valueNode) in mapping {
                guard case .scalar(let key) = keyNode, isToken(key.string) else {
                    reader.report("\(e.path): \(keyNode.kindName) is not a header name", at: keyNode)
                    continue
                }
                let item = Fields.Entry(key: keyNode, value: valueNode, path: "\(e.path).\(key.string)")
                guard let value = reader.string(item) else { continue }
                if value.contains(where: { $0 == "\r" || $0 == "\n" }) {
                    reader.report("\(item.path): a header value cannot hold a line break", at: valueNode)
                    continue
                }
                if key.string.lowercased() == "content-length" || key.string.lowercased() == "transfer-encoding" {
                    reader.report("\(item.path): set by Faultline from the body", at: keyNode)
                    continue
                }
                abort.headers.append(.init(name: key.string, value: value))
            }
        }
        if let e = f["body"], let body = reader.string(e) { abort.body = body }
        return abort
    }

    /// An HTTP token (RFC 9110): what a header name may be made of.
    static func isToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}
