import Yams

/// Reads typed values out of a composed YAML tree and records every problem with the exact
/// line and column, instead of stopping at the first one. Shared by every part of the schema,
/// so that each error reads the same way whatever the key.
struct NodeReader {
    let file: String
    private(set) var errors: [RuleError] = []

    init(file: String) {
        self.file = file
    }

    func location(of node: Node) -> SourceLocation {
        let mark = node.mark
        return SourceLocation(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1)
    }

    mutating func report(_ message: String, at node: Node) {
        errors.append(RuleError(message, at: location(of: node)))
    }

    mutating func report(_ message: String, at location: SourceLocation) {
        errors.append(RuleError(message, at: location))
    }

    /// The entries of a mapping, with unknown keys reported (with a did-you-mean) and
    /// missing required keys reported at the mapping itself.
    mutating func fields(
        _ node: Node,
        path: String,
        allowed: [String],
        required: [String] = []
    ) -> Fields? {
        guard case let .mapping(mapping) = node else {
            report("\(path): expected a mapping of \(allowed.joined(separator: ", ")), found \(node.kindName)", at: node)
            return nil
        }
        var entries: [String: Fields.Entry] = [:]
        // `<<: *anchor` (YAML's merge key, as in Docker Compose files): the anchored mapping's
        // entries, or those of a list of them, fill in what the mapping does not say itself.
        var merged: [Node] = []
        for (keyNode, valueNode) in mapping {
            guard case let .scalar(scalar) = keyNode else {
                report("\(path): keys must be plain names", at: keyNode)
                continue
            }
            let key = scalar.string
            if key == "<<", scalar.style == .plain {
                var budget = Self.mergeBudget
                addMerge(valueNode, to: &merged, path: path, budget: &budget)
                continue
            }
            // Top-level `x-` keys hold anchors for the rest of the file, and are not rules.
            if path.isEmpty, key.hasPrefix("x-") { continue }
            if entries[key] != nil {
                report("\(path.isEmpty ? key : "\(path).\(key)"): key given twice", at: keyNode)
                continue
            }
            if let entry = entry(key: keyNode, named: key, value: valueNode, path: path, allowed: allowed) {
                entries[key] = entry
            }
        }
        // The first merged mapping that has a key gives it (YAML's merge order).
        for source in merged {
            guard case let .mapping(mapping) = source else { continue }
            for (keyNode, valueNode) in mapping {
                guard case let .scalar(scalar) = keyNode, scalar.string != "<<", entries[scalar.string] == nil else { continue }
                if let entry = entry(key: keyNode, named: scalar.string, value: valueNode, path: path, allowed: allowed) {
                    entries[scalar.string] = entry
                }
            }
        }
        for key in required where entries[key] == nil {
            let qualified = path.isEmpty ? key : "\(path).\(key)"
            report("\(qualified): required key is missing", at: node)
        }
        return Fields(node: node, entries: entries)
    }

    /// How many mappings one mapping may merge in, nested merges included: a file cannot make
    /// the reader walk the same anchors exponentially often ("billion laughs").
    static let mergeBudget = 64

    /// The mappings a merge key's value brings, in YAML's order: each mapping, then what it
    /// merges itself, so that its own keys come before those of its merges.
    private mutating func addMerge(_ value: Node, to merged: inout [Node], path: String, budget: inout Int) {
        let place = path.isEmpty ? "<<" : path + ".<<"
        let sources: [Node]
        switch value {
        case .mapping: sources = [value]
        case .sequence(let list) where list.allSatisfy({ $0.mapping != nil }): sources = Array(list)
        default:
            report("\(place): expected an alias of a mapping (<<: *name) or a list of them", at: value)
            return
        }
        for source in sources {
            guard budget > 0 else {
                report("\(place): more than \(Self.mergeBudget) mappings merged into one", at: value)
                return
            }
            budget -= 1
            merged.append(source)
            for (keyNode, nested) in source.mapping ?? [:] where keyNode.scalar?.string == "<<" {
                addMerge(nested, to: &merged, path: path, budget: &budget)
            }
        }
    }

    /// The entry of a known key; an unknown one is reported (with a did-you-mean) and is nil.
    private mutating func entry(key keyNode: Node, named key: String, value: Node, path: String, allowed: [String]) -> Fields.Entry? {
        let qualified = path.isEmpty ? key : "\(path).\(key)"
        guard allowed.contains(key) else {
            var message = "unknown key \"\(qualified)\""
            if let suggestion = Self.closest(to: key, in: allowed) {
                message += "; did you mean \"\(suggestion)\"?"
            } else if allowed.isEmpty {
                let owner = path.split(separator: ".").last.map(String.init) ?? "this"
                message += "; \(owner) takes no keys (write {})"
            } else {
                message += "; expected one of \(allowed.joined(separator: ", "))"
            }
            report(message, at: keyNode)
            return nil
        }
        return Fields.Entry(key: keyNode, value: value, path: qualified)
    }

    mutating func string(_ entry: Fields.Entry) -> String? {
        guard case let .scalar(scalar) = entry.value, scalar.style == .plain ? !scalar.isNullLike : true else {
            report("\(entry.path): expected a string, found \(entry.value.kindName)", at: entry.value)
            return nil
        }
        return scalar.string
    }

    mutating func sequence(_ entry: Fields.Entry) -> [Node]? {
        if case let .scalar(scalar) = entry.value, scalar.isNullLike { return [] }
        guard case let .sequence(sequence) = entry.value else {
            report("\(entry.path): expected a list, found \(entry.value.kindName)", at: entry.value)
            return nil
        }
        return Array(sequence)
    }

    mutating func duration(_ entry: Fields.Entry, minimum: Duration = .zero) -> Duration? {
        guard let text = string(entry) else { return nil }
        let value: Duration
        switch DurationText.read(text) {
        case .success(let duration):
            value = duration
        case .failure(.notADuration):
            report("\(entry.path): \"\(text)\" is not a duration (write it with a unit: 250ms, 1.5s, 2m)", at: entry.value)
            return nil
        case .failure(.tooLong):
            report("\(entry.path): \(text) is over the maximum of \(DurationText.format(DurationText.maximum))", at: entry.value)
            return nil
        }
        guard value >= minimum else {
            report("\(entry.path): \(text) is below the minimum of \(DurationText.format(minimum))", at: entry.value)
            return nil
        }
        return value
    }

    mutating func bool(_ entry: Fields.Entry) -> Bool? {
        guard let text = string(entry) else { return nil }
        switch text {
        case "true", "True", "TRUE", "yes", "on": return true
        case "false", "False", "FALSE", "no", "off": return false
        default:
            report("\(entry.path): expected true or false, found \"\(text)\"", at: entry.value)
            return nil
        }
    }

    /// A probability: a number from 0 to 1, or a percentage (`30%`).
    mutating func probability(_ entry: Fields.Entry) -> Double? {
        guard let text = string(entry) else { return nil }
        let value: Double?
        if text.hasSuffix("%") {
            value = Double(text.dropLast()).map { $0 / 100 }
        } else {
            value = Double(text)
        }
        guard let value, value.isFinite else {
            report("\(entry.path): \"\(text)\" is not a probability (a number from 0 to 1, or a percentage)", at: entry.value)
            return nil
        }
        guard (0...1).contains(value) else {
            report("\(entry.path): \(text) is outside 0 to 1", at: entry.value)
            return nil
        }
        return value
    }

    /// A byte count: `512`, `64KiB`, `1.5MiB`, `10KB`.
    mutating func size(_ entry: Fields.Entry, minimum: Int = 0) -> Int? {
        guard let text = string(entry) else { return nil }
        guard let value = ByteSizeText.parse(text) else {
            report("\(entry.path): \"\(text)\" is not a size (write 512, 64KiB, 1.5MiB or 10KB)", at: entry.value)
            return nil
        }
        guard value >= minimum else {
            report("\(entry.path): \(text) is below the minimum of \(minimum) \(minimum == 1 ? "byte" : "bytes")", at: entry.value)
            return nil
        }
        return value
    }

    /// A whole number of things (connections): `10000`, at least `minimum`.
    mutating func count(_ entry: Fields.Entry, minimum: Int = 0) -> Int? {
        guard let text = string(entry) else { return nil }
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")), value >= minimum else {
            report("\(entry.path): \"\(text)\" is not a whole number of at least \(minimum)", at: entry.value)
            return nil
        }
        return value
    }

    mutating func cidrList(_ entry: Fields.Entry) -> [CIDR]? {
        guard let items = sequence(entry) else { return nil }
        var blocks: [CIDR] = []
        for (index, item) in items.enumerated() {
            let path = "\(entry.path)[\(index)]"
            guard case let .scalar(scalar) = item, !scalar.isNullLike else {
                report("\(path): expected an address block such as 10.0.0.0/8, found \(item.kindName)", at: item)
                continue
            }
            guard let block = CIDR(scalar.string) else {
                report("\(path): \"\(scalar.string)\" is not an address block (10.0.0.0/8, 127.0.0.1, ::1/128)", at: item)
                continue
            }
            blocks.append(block)
        }
        return blocks
    }

    mutating func hostPort(_ entry: Fields.Entry, allowPortZero: Bool) -> HostPort? {
        guard let text = string(entry) else { return nil }
        switch HostPort.parse(text, allowPortZero: allowPortZero) {
        case .success(let value):
            return value
        case .failure(let reason):
            report("\(entry.path): \"\(text)\" is not host:port (it \(reason))", at: entry.value)
            return nil
        }
    }

    mutating func oneOf<T: RawRepresentable & CaseIterable>(_ entry: Fields.Entry, _ type: T.Type) -> T?
    where T.RawValue == String {
        guard let text = string(entry) else { return nil }
        guard let value = T(rawValue: text) else {
            let names = T.allCases.map(\.rawValue)
            var message = "\(entry.path): \"\(text)\" is not one of \(names.joined(separator: ", "))"
            if let suggestion = Self.closest(to: text, in: names) { message += "; did you mean \"\(suggestion)\"?" }
            report(message, at: entry.value)
            return nil
        }
        return value
    }

    /// A name used in metrics labels, logs and the control API: short and plain.
    mutating func name(_ entry: Fields.Entry) -> String? {
        guard let text = string(entry) else { return nil }
        let valid = !text.isEmpty && text.count <= 64
            && text.first!.isASCIILetterOrDigit
            && text.allSatisfy { $0.isASCIILetterOrDigit || $0 == "-" || $0 == "_" || $0 == "." }
        guard valid else {
            report("\(entry.path): \"\(text)\" is not a valid name (letters, digits, '-', '_', '.', at most 64)", at: entry.value)
            return nil
        }
        return text
    }

    /// The candidate nearest to `word` by edit distance, when it is near enough to be a typo.
    static func closest(to word: String, in candidates: [String]) -> String? {
        let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
        return best.1 <= max(2, word.count / 3) ? best.0 : nil
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// The checked entries of one mapping.
struct Fields {
    struct Entry {
        var key: Node
        var value: Node
        /// Dotted path for messages: `timeouts.connect`.
        var path: String
    }

    var node: Node
    var entries: [String: Entry]

    subscript(key: String) -> Entry? { entries[key] }
}

extension Node.Scalar {
    var isNullLike: Bool { style == .plain && ["", "~", "null", "Null", "NULL"].contains(string) }
}

extension Node {
    var kindName: String {
        switch self {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .scalar(let scalar): scalar.isNullLike ? "nothing" : "\"\(scalar.string)\""
        case .alias: "an alias"
        }
    }
}
