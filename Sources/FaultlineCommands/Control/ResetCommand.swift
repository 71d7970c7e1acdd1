import ArgumentParser

struct ResetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset", abstract: "Drop every runtime change at once: the rule files alone are in force again.")

    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.POST, "/v1/reset") { reply in
            let reset = reply["reset"] as? [String: Any] ?? [:]
            return "reset: \(reset["overrides"] ?? 0) overrides and \(reset["faults"] ?? 0) runtime faults dropped"
        }
    }
}

struct ReloadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reload", abstract: "Reload the rule files now.")

    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.POST, "/v1/reload") { reply in
            let reload = reply["reload"] as? [String: Any] ?? [:]
            return "reloaded: \(reload["rules"] ?? "")" + ((reload["unchanged"] as? Bool ?? false) ? " (unchanged)" : "")
        }
    }
}

struct RemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a runtime fault.")

    @Argument(help: "The runtime fault's name.") var name: String
    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.DELETE, "/v1/faults/\(name.addingPercentEncodingForPath)") { _ in "\(name) removed" }
    }
}
