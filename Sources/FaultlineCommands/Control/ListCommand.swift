import ArgumentParser
import Foundation

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "Every fault: from the files and made at run time, shown apart.",
        discussion: "With a NAME, only that fault (exit 3 when there is none): a probe for scripts.")

    @Argument(help: "Only this fault.") var name: String?
    @OptionGroup var control: ControlOptions

    func run() async throws {
        let path = name.map { "/v1/faults/\($0.addingPercentEncodingForPath)" } ?? "/v1/faults"
        try await control.call(.GET, path) { reply in
            let faults = (reply["fault"] as? [String: Any]).map { [$0] } ?? reply["faults"] as? [[String: Any]] ?? []
            return table(
                ["FAULT", "LISTENER", "KIND", "SOURCE", "ENABLED", "EXPIRES", "INJECTIONS"],
                faults.map { fault in
                    let expires = (fault["expires_in_seconds"] as? Double).map { String(format: "%.0fs", $0) } ?? "-"
                    return ["\(fault["name"] ?? "")", "\(fault["listener"] ?? "")", "\(fault["kind"] ?? "")",
                            StatusCommand.source(fault), (fault["enabled"] as? Bool ?? false) ? "yes" : "no", expires,
                            "\(fault["injections"] ?? 0)"]
                })
        }
    }
}
