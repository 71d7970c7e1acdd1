import Foundation
import Testing

/// The real toxiproxy-python client (CI installs it from PyPI) drives the built faultlined
/// through a whole session: Tests/ToxiproxyClient/client-session.py. Skipped, and reported as
/// skipped, where the client is not installed.
struct ToxiproxyClientTests {
    static var clientInstalled: Bool {
        (try? ChildProcess.runBlocking("python3", ["-c", "import toxiproxy"], deadline: .seconds(20)).status) == 0
    }

    @Test(.enabled(if: clientInstalled, "python3 cannot import toxiproxy (pip install toxiproxy-python)"))
    func pythonClientSessionAgainstTheDaemon() async throws {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("ToxiproxyClient/client-session.py").path
        let apiPort = try unusedPort()
        let demoPort = try unusedPort()
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:\(demoPort)", "--demo", "127.0.0.1:\(demoPort)",
            "--metrics", "127.0.0.1:0", "--toxiproxy-api", "127.0.0.1:\(apiPort)",
        ])
        #expect(await daemon.waitForLog("Toxiproxy-compatible API listening"))
        let session = try await ChildProcess.run(
            "python3", [script, "\(apiPort)", "\(demoPort)"], mergeError: true, deadline: .seconds(120))
        #expect(session.status == 0, "\(session.text)")
        #expect(session.text.contains("toxiproxy client session: passed"))
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }
}
