import Foundation
import ArgumentParser

/// `faultctl ca export`: the running daemon's CA certificate in PEM, for clients to trust.
struct CtlCACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "The daemon's certificate authority.", subcommands: [CtlCAExportCommand.self])
}

struct CtlCAExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Print the CA certificate (PEM) that TLS listeners' certificates chain to.")

    @OptionGroup var control: ControlOptions

    func run() async throws {
        try await control.call(.GET, "/v1/ca") { reply in
            (reply["certificate"] as? String ?? "").trimmingCharacters(in: .newlines)
        }
    }
}
