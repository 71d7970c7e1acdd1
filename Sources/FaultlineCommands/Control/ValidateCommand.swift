import ArgumentParser
import FaultlineRules

struct ValidateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate", abstract: "Check a rule folder offline, with the daemon's own validator (exit 0 or 4).")

    @Argument(help: "The rule folder.") var directory: String

    func run() async throws {
        switch RuleLoader.load(directory: directory) {
        case .success(let rules):
            print("rules OK: \(rules.summary)")
        case .failure(let errors):
            printToStandardError(errors.description)
            printToStandardError("faultctl: \(errors.errors.count) error\(errors.errors.count == 1 ? "" : "s") in \(directory)")
            throw ExitCode(4)
        }
    }
}
