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
                "runtime changes: \(runtime["overrides"] ?? 0) overrides, \(runtime["faults"] ?? 0) faults",
                "",
            ]
            let listeners = status["listeners"] as? [[String: Any]] ?? []
            lines.append(table(
                ["LISTENER", "PROTOCOL", "LISTEN", "UPSTREAM", "OPEN"],
                listeners.map { ["\($0["name"] ?? "")", "\($0["protocol"] ?? "")", "\($0["listen"] ?? "")", "\($0["upstream"] ?? "")", "\($0["connections_open"] ?? 0)"] }))
            return lines.joined(separator: "\n")
        }
    }
}
