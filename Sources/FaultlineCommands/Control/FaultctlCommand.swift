import ArgumentParser
import Faultline

/// `faultctl`: a thin client of the daemon's control socket, one file per subcommand.
@available(macOS 15, *)
public struct FaultctlCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "faultctl",
        abstract: "Control a running faultlined: list, toggle and inject faults.",
        discussion: """
            Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 invalid, 5 daemon unreachable.
            --json prints the daemon's reply (exactly one JSON object) for scripts.
            """,
        version: FaultlineVersion.current,
        subcommands: [
            StatusCommand.self, ListCommand.self, EnableCommand.self, DisableCommand.self, InjectCommand.self,
            RemoveCommand.self, ResetCommand.self, ReloadCommand.self, ValidateCommand.self, CtlCACommand.self,
        ]
    )

    public init() {}
}
