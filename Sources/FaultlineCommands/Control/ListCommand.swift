import ArgumentParser
import Foundation

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "Every fault: from the files and made at run time, shown apart.")

    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.GET, "/v1/faults") { reply in
            let faults = reply["faults"] as? [[String: Any]] ?? []
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
