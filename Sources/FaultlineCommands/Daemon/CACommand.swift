import ArgumentParser
import Faultline
import Foundation

/// `faultlined ca export`: the CA certificate in PEM, for clients to trust.
struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Faultline's certificate authority.", subcommands: [CAExportCommand.self])
}

struct CAExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Print the CA certificate (PEM); it is created in the state folder if missing.")

    @Option(name: .long, help: "The state folder (as for faultlined).")
    var stateDir: String?

    func run() async throws {
        let folder = StateDirectory.resolve(stateDir)
        do {
            print(try CertificateAuthority.loadOrCreate(in: folder).pem)
        } catch {
            printToStandardError("faultlined: \(error)")
            throw ExitCode(1)
        }
    }
}

/// Where the CA lives when nobody says.
enum StateDirectory {
    static func resolve(_ given: String?) -> String {
        if let given, !given.isEmpty { return given }
        let environment = ProcessInfo.processInfo.environment
        if let state = environment["STATE_DIRECTORY"], !state.isEmpty { return state }
        if getuid() == 0 { return "/var/lib/faultline" }
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty { return state + "/faultline" }
        return (environment["HOME"] ?? "/tmp") + "/.local/state/faultline"
    }
}
