/// What operators changed at run time on top of the rule files: faults switched on or off
/// (optionally until an instant), faults created through the control socket, and listeners
/// and faults created through the Toxiproxy-compatible API. It never
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

    /// A listener made at run time (a Toxiproxy proxy). A disabled one does not listen.
    public struct RuntimeListener: Sendable, Equatable {
        public var rule: ListenerRule
        public var enabled: Bool
        public var origin: String

        public init(rule: ListenerRule, enabled: Bool, origin: String) {
            self.rule = rule
            self.enabled = enabled
            self.origin = origin
        }
    }

    /// Overrides of file faults, by name.
    public private(set) var overrides: [String: Override] = [:]
    /// Faults created at run time, in the order they were made (after the file faults).
    public private(set) var faults: [RuntimeFault] = []
    /// Listeners made at run time, in the order they were made (after the file listeners).
    public private(set) var listeners: [RuntimeListener] = []

    public init() {}

    public var isEmpty: Bool { overrides.isEmpty && faults.isEmpty && listeners.isEmpty }

    public enum ChangeError: Error, Equatable, CustomStringConvertible {
        case notFound(String)
        case invalid(field: String?, message: String)
        case listenerNotFound(String)
        case listenerExists(String)
        /// The daemon stopped taking changes: it is shutting down.
        case shuttingDown

        public var description: String {
            switch self {
            case .shuttingDown: "the daemon is shutting down"
            case .notFound(let name): "no fault named \"\(name)\""
            case .invalid(_, let message): message
            case .listenerNotFound(let name): "no runtime listener named \"\(name)\""
            case .listenerExists(let name): "a listener named \"\(name)\" exists already"
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
        try candidate.validate(files)
        self = candidate
    }

    /// Replaces a runtime fault in place (same name, same place in the order), so that open
    /// connections keep their draw and the fault keeps its rank.
    public mutating func replace(_ rule: FaultRule, in files: RuleSet) throws(ChangeError) {
        guard let index = faults.firstIndex(where: { $0.rule.name == rule.name }) else { throw .notFound(rule.name) }
        var candidate = self
        candidate.faults[index].rule = rule
        try candidate.validate(files)
        self = candidate
    }

    /// Adds a listener made at run time; its name and address must be free.
    public mutating func addListener(_ listener: RuntimeListener, in files: RuleSet) throws(ChangeError) {
        if files.listener(named: listener.rule.name) != nil || listeners.contains(where: { $0.rule.name == listener.rule.name }) {
            throw .listenerExists(listener.rule.name)
        }
        var candidate = self
        candidate.listeners.append(listener)
        try candidate.validate(files)
        self = candidate
    }

    /// Changes a runtime listener (address, upstream, enabled); its faults stay.
    public mutating func updateListener(_ listener: RuntimeListener, in files: RuleSet) throws(ChangeError) {
        guard let index = listeners.firstIndex(where: { $0.rule.name == listener.rule.name }) else {
            throw .listenerNotFound(listener.rule.name)
        }
        var candidate = self
        candidate.listeners[index] = listener
        try candidate.validate(files)
        self = candidate
    }

    /// Removes a runtime listener and every runtime fault on it.
    public mutating func removeListener(_ name: String) throws(ChangeError) {
        guard listeners.contains(where: { $0.rule.name == name }) else { throw .listenerNotFound(name) }
        listeners.removeAll { $0.rule.name == name }
        faults.removeAll { $0.rule.listener == name }
    }

    /// Drops the runtime faults of one origin (and, with `listeners`, its listeners too):
    /// the Toxiproxy API's `/reset` touches only what came through it.
    public mutating func removeFaults(origin: String, where predicate: (FaultRule) -> Bool = { _ in true }) {
        faults.removeAll { $0.origin == origin && predicate($0.rule) }
    }

    /// The panic button: every override and runtime fault is dropped and every runtime
    /// listener listens again (a disabled Toxiproxy proxy is a fault too); the listeners
    /// themselves stay, since clients hold their addresses.
    public mutating func dropFaultChanges() {
        overrides = [:]
        faults = []
        for index in listeners.indices { listeners[index].enabled = true }
    }

    /// Every listener in force: the files', then the enabled runtime ones.
    func effectiveListeners(_ files: RuleSet) -> [ListenerRule] {
        files.listeners + listeners.filter(\.enabled).map(\.rule)
    }

    /// The whole result must be valid as if it had been written in the files.
    private func validate(_ files: RuleSet) throws(ChangeError) {
        let all = files.listeners + listeners.map(\.rule)
        if let first = RuleLoader.crossFileErrors(all).first {
            throw .invalid(field: "listen", message: first.message)
        }
        let errors = RuleLoader.faultErrors(effective(files).faults, listeners: all)
        if let first = errors.first {
            throw .invalid(field: nil, message: first.message)
        }
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
        listeners = listeners.filter { listener in
            let fits = files.listener(named: listener.rule.name) == nil
                && RuleLoader.crossFileErrors(files.listeners + [listener.rule]).isEmpty
            if !fits { dropped.append(listener.rule.name) }
            return fits
        }
        let all = files.listeners + listeners.map(\.rule)
        faults = faults.filter { fault in
            let fits = all.contains(where: { $0.name == fault.rule.listener })
                && !files.faults.contains { $0.name == fault.rule.name }
                && RuleLoader.faultErrors([fault.rule], listeners: all).isEmpty
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
        set.listeners = effectiveListeners(files)
        let disabled = Set(listeners.filter { !$0.enabled }.map(\.rule.name))
        set.faults += faults.map(\.rule).filter { !disabled.contains($0.listener) }
        return set
    }
}
