import ArgumentParser
import Faultline

/// `faultctl`: a thin client of the daemon's control socket, one file per subcommand.
@available(macOS 15, *)
public struct FaultctlCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "faultctl",
        abstract: "Control a running faultlined: list, toggle and inject faults.",
        discussion: """
            Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 invalid, 5 daemon unreachable, silent for --timeout or its answer broken off.
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

@available(macOS 15, *)
extension FaultctlCommand {
    /// Runs the command line with the exit codes the help promises: a usage error (an unknown
    /// option, a missing argument) exits 2, where the argument parser's own is 64 (EX_USAGE),
    /// so that a script can tell a mistyped command from a fault that was not found (3).
    public static func runWithDocumentedExitCodes() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                printToStandardError(fullMessage(for: error))
                exit(withError: ExitCode(2))
            }
            exit(withError: error)
        }
    }
}
