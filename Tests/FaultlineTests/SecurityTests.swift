import Foundation
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the daemon refuses or keeps to itself: a control socket where others could replace
/// it, and secrets in requests (even at the most verbose log level).
struct SecurityTests {
    @Test func worldWritableControlSocketFolderStopsTheStart() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-open-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        chmod(folder, 0o777)
        // Port 0: a port picked in advance could be taken by a test running beside this one
        // between the two starts.
        let result = try await DaemonProcess.run([
            "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--no-metrics",
            "--control-socket", folder + "/control.sock",
        ])
        #expect(result.status != 0)
        #expect(result.stderr.contains("control socket folder \(folder) is world-writable"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/control.sock"))
        // The same folder made private is fine.
        chmod(folder, 0o700)
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--no-metrics",
            "--control-socket", folder + "/control.sock",
        ])
        #expect(await daemon.waitForLog("started"))
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }

    /// Authorization, Cookie and bodies never reach the log, even at trace level and when the
    /// request is malformed.
    @Test func secretsStayOutOfTheLogs() async throws {
        let demoPort = try unusedPort()
        let port = try unusedPort()
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(demoPort)", "--protocol", "http",
            "--demo", "127.0.0.1:\(demoPort)", "--no-metrics", "--log-level", "trace",
        ])
        #expect(await daemon.waitForLog("started"))
        let answered = try await Curl.run([
            "-H", "Authorization: Bearer s3cr3t-t0ken", "-H", "Cookie: session=c00kie-value",
            "--data-binary", "b0dy-secret", "http://127.0.0.1:\(port)/echo",
        ])
        #expect(answered.text == "b0dy-secret")
        // A request whose head breaks after the secret, and one that is far too large.
        _ = await RawClient.send(port: port, "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic s3cr3t-t0ken\r\nBroken header\r\n\r\n")
        _ = await RawClient.send(
            port: port, "GET / HTTP/1.1\r\nCookie: c00kie-value" + String(repeating: "x", count: 70_000) + "\r\n\r\n")
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
        let log = daemon.standardError + daemon.standardOutput
        #expect(log.contains(" debug "))  // the log was verbose
        for secret in ["s3cr3t", "c00kie", "b0dy-secret"] {
            #expect(!log.contains(secret), "\(secret) is in the log")
        }
    }
}
