/// Everything the rule folder says, validated as a whole. Immutable and `Sendable`: a reload
/// builds a new one and swaps it in; nobody edits one in place.
public struct RuleSet: Sendable, Hashable {
    public var listeners: [ListenerRule]
    /// Fault rules in file order (files by name, then as written).
    public var faults: [FaultRule]
    /// The files this set was read from, in the order they were read.
    public var files: [String]

    public init(listeners: [ListenerRule] = [], faults: [FaultRule] = [], files: [String] = []) {
        self.listeners = listeners
        self.faults = faults
        self.files = files
    }

    public func faults(forListener name: String) -> [FaultRule] {
        faults.filter { $0.listener == name }
    }

    public func listener(named name: String) -> ListenerRule? {
        listeners.first { $0.name == name }
    }

    /// How many listeners the summary names: it is one log line at every start and reload.
    public static let summaryListenerLimit = 20

    /// One line for logs and `--check`: what would run (the first listeners by name and address;
    /// `faultctl status` lists them all).
    public var summary: String {
        var names = listeners.prefix(Self.summaryListenerLimit).map { "\($0.name) \($0.listen) -> \($0.upstream)" }
        if listeners.count > Self.summaryListenerLimit {
            names.append("and \(listeners.count - Self.summaryListenerLimit) more")
        }
        let filesPart = "\(files.count) file\(files.count == 1 ? "" : "s")"
        var listenersPart = "\(listeners.count) listener\(listeners.count == 1 ? "" : "s")"
        if !faults.isEmpty {
            listenersPart = "\(faults.count) fault\(faults.count == 1 ? "" : "s"), " + listenersPart
        }
        return names.isEmpty
            ? "\(filesPart), \(listenersPart)"
            : "\(filesPart), \(listenersPart): \(names.joined(separator: ", "))"
    }
}
