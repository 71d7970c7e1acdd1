/// What operators changed at run time on top of the rule files: faults switched on or off
/// (optionally until an instant), and faults created through the control socket. It never
/// writes to the files, survives reloads, and is always shown apart from the file rules.
/// Pure value: the daemon keeps one, changes a copy, validates the result and swaps it in.
public struct RuntimeOverlay: Sendable, Equatable {
    public struct Override: Sendable, Equatable {
        public var enabled: Bool
        /// Monotonic deadline in nanoseconds; nil for "until reset".
        public var expiresAt: Int64?
    }

    public struct RuntimeFault: Sendable, Equatable {
        public var rule: FaultRule
        public var expiresAt: Int64?
        /// Where it came from: `control` or `toxiproxy`.
        public var origin: String
    }

    /// Overrides of file faults, by name.
    public private(set) var overrides: [String: Override] = [:]
    /// Faults created at run time, in the order they were made (after the file faults).
    public private(set) var faults: [RuntimeFault] = []

    public init() {}

    public var isEmpty: Bool { overrides.isEmpty && faults.isEmpty }

    public enum ChangeError: Error, Equatable, CustomStringConvertible {
        case notFound(String)
        case invalid(field: String?, message: String)

        public var description: String {
            switch self {
            case .notFound(let name): "no fault named \"\(name)\""
            case .invalid(_, let message): message
            }
        }
    }

    /// Switches a fault on or off, file or runtime, until `expiresAt` (then it reverts).
    public mutating func setEnabled(_ name: String, _ enabled: Bool, expiresAt: Int64?, in files: RuleSet) throws(ChangeError) {
        if let index = faults.firstIndex(where: { $0.rule.name == name }) {
            faults[index].rule.enabled = enabled
            if let expiresAt { faults[index].expiresAt = expiresAt }
            return
        }
        guard files.faults.contains(where: { $0.name == name }) else { throw .notFound(name) }
        overrides[name] = Override(enabled: enabled, expiresAt: expiresAt)
    }

    /// Adds a fault made at run time; it must fit the rules as a file fault would.
    public mutating func add(_ rule: FaultRule, expiresAt: Int64?, origin: String, in files: RuleSet) throws(ChangeError) {
        var candidate = self
        candidate.faults.append(RuntimeFault(rule: rule, expiresAt: expiresAt, origin: origin))
        let errors = RuleLoader.faultErrors(candidate.effective(files).faults, listeners: files.listeners)
        if let first = errors.first {
            throw .invalid(field: nil, message: first.message)
        }
        self = candidate
    }

    public mutating func remove(_ name: String, in files: RuleSet) throws(ChangeError) {
        guard let index = faults.firstIndex(where: { $0.rule.name == name }) else {
            if files.faults.contains(where: { $0.name == name }) {
                throw .invalid(field: "name", message: "\"\(name)\" is a file rule: disable it, or remove it from the file")
            }
            throw .notFound(name)
        }
        faults.remove(at: index)
    }

    /// Drops what has expired at `now`; true if anything changed.
    public mutating func expire(now: Int64) -> Bool {
        let before = (overrides.count, faults.count)
        overrides = overrides.filter { $0.value.expiresAt.map { $0 > now } ?? true }
        faults = faults.filter { $0.expiresAt.map { $0 > now } ?? true }
        return before != (overrides.count, faults.count)
    }

    /// The earliest expiry, if any.
    public var nextExpiry: Int64? {
        (overrides.values.compactMap(\.expiresAt) + faults.compactMap(\.expiresAt)).min()
    }

    /// Forgets what no longer fits new file rules (an override of a fault that is gone, a
    /// runtime fault whose listener is gone or whose name a file now uses); returns the names.
    public mutating func reconcile(with files: RuleSet) -> [String] {
        var dropped: [String] = []
        for name in overrides.keys where !files.faults.contains(where: { $0.name == name }) {
            overrides[name] = nil
            dropped.append(name)
        }
        faults = faults.filter { fault in
            let fits = files.listener(named: fault.rule.listener) != nil
                && !files.faults.contains { $0.name == fault.rule.name }
                && RuleLoader.faultErrors([fault.rule], listeners: files.listeners).isEmpty
            if !fits { dropped.append(fault.rule.name) }
            return fits
        }
        return dropped.sorted()
    }

    /// The rules in force: the file rules with the overrides applied, then the runtime faults.
    public func effective(_ files: RuleSet) -> RuleSet {
        guard !isEmpty else { return files }
        var set = files
        for index in set.faults.indices {
            if let override = overrides[set.faults[index].name] { set.faults[index].enabled = override.enabled }
        }
        set.faults += faults.map(\.rule)
        return set
    }
}
