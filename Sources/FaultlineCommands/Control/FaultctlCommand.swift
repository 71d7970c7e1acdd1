import ArgumentParser
import Faultline

/// `faultctl`: the control client. Subcommands arrive with the control socket.
@available(macOS 15, *)
public struct FaultctlCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "faultctl",
        abstract: "Control a running faultlined: list, toggle and inject faults.",
        version: FaultlineVersion.current
    )

    public init() {}
}
