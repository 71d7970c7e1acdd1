import Foundation
import Testing

/// The Chaos Toolkit experiment under Tests/Chaos, run with the real `chaos` (CI installs it
/// from PyPI) against the built binaries. Skipped, and reported as skipped, where `chaos` is
/// not installed.
struct ChaosExperimentTests {
    static var chaosInstalled: Bool {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        return path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/chaos") }
    }

    @Test(.enabled(if: chaosInstalled, "chaos (chaostoolkit) is not on PATH"))
    func latencyExperimentDeviatesAndRollsBack() async throws {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Chaos/run-experiment.sh").path
        let buildDirectory = DaemonProcess.binary.deletingLastPathComponent().path
        let result = try await ChildProcess.run("/bin/bash", [script, buildDirectory], mergeError: true, deadline: .seconds(300))
        let (status, output) = (result.status, result.text)
        #expect(status == 0, "\(output)")
        #expect(output.contains("chaos journal: deviated True"))
        #expect(output.contains("rollback succeeded"))
    }
}
