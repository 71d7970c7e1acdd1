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
        let (status, output) = try await offThePool { () -> (Int32, String) in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [script, buildDirectory]
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let data = pipe.fileHandleForReading.readAllRetryingInterrupts()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: data, as: UTF8.self))
        }
        #expect(status == 0, "\(output)")
        #expect(output.contains("chaos journal: deviated True"))
        #expect(output.contains("rollback succeeded"))
    }
}
