import ArgumentParser
import Foundation

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "The daemon: version, uptime, listeners, rules.")

    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.GET, "/v1/status") { status in
            let rules = status["rules"] as? [String: Any] ?? [:]
            let runtime = status["runtime"] as? [String: Any] ?? [:]
            let reload = rules["last_reload"] as? [String: Any]
            var lines = [
                "faultlined \(status["version"] ?? "?"), up \(Int(status["uptime_seconds"] as? Double ?? 0))s",
                "rules: \(rules["directory"] as? String ?? "(command line)"), \((rules["files"] as? [Any])?.count ?? 0) files, \(rules["faults"] ?? 0) faults; "
                    + "last reload: \(reload.map { ($0["succeeded"] as? Bool ?? false) ? "ok" : "FAILED: \(($0["errors"] as? [String] ?? []).joined(separator: "; "))" } ?? "none")",
                "runtime changes: \(runtime["overrides"] ?? 0) overrides, \(runtime["faults"] ?? 0) faults, \(runtime["listeners"] ?? 0) listeners",
                "",
            ]
            let listeners = status["listeners"] as? [[String: Any]] ?? []
            lines.append(table(
                ["LISTENER", "PROTOCOL", "LISTEN", "UPSTREAM", "OPEN", "SOURCE"],
                listeners.map {
                    ["\($0["name"] ?? "")", "\($0["protocol"] ?? "")", "\($0["listen"] ?? "")", "\($0["upstream"] ?? "")",
                     "\($0["connections_open"] ?? 0)", Self.source($0)]
                }))
            return lines.joined(separator: "\n")
        }
    }

    /// `file`, or `runtime (toxiproxy)` for what was made at run time and by whom.
    static func source(_ item: [String: Any]) -> String {
        let source = item["source"] as? String ?? ""
        guard source == "runtime", let origin = item["origin"] as? String else { return source }
        return "runtime (\(origin.split(separator: " ").first ?? ""))"
    }
}
