import ArgumentParser

struct EnableCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enable", abstract: "Switch a fault on (optionally for a while, then it reverts).")

    @Argument(help: "The fault's name.") var name: String
    @Option(name: .customLong("for"), help: "Revert after this long (60s, 5m).") var duration: String?
    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await toggle(name, enabled: true, duration: duration, control: control)
    }
}

struct DisableCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disable", abstract: "Switch a fault off (optionally for a while, then it reverts).")

    @Argument(help: "The fault's name.") var name: String
    @Option(name: .customLong("for"), help: "Revert after this long (60s, 5m).") var duration: String?
    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await toggle(name, enabled: false, duration: duration, control: control)
    }
}

func toggle(_ name: String, enabled: Bool, duration: String?, control: ControlOptions) async throws {
    let path = "/v1/faults/\(name.addingPercentEncodingForPath)/\(enabled ? "enable" : "disable")"
    try await control.call(.POST, path, body: duration.map { ["for": $0] } ?? [:]) { _ in
        "\(name) \(enabled ? "enabled" : "disabled")" + (duration.map { " for \($0)" } ?? "")
    }
}

extension String {
    var addingPercentEncodingForPath: String {
        addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? self
    }
}
