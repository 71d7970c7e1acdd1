import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the README promises a newcomer: the daemon with the demo service answers `curl`
/// through the listener, and `/metrics` counts it. Uses the real binary and the real curl.
@Suite(.serialized)
struct DemoAndMetricsTests {
    func curl(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let result = try ChildProcess.runBlocking("curl", ["-sS", "--max-time", "10"] + arguments, deadline: .seconds(30))
        return (result.status, result.text)
    }

    @Test func demoThroughTheProxyAndMetrics() async throws {
        let demoPort = try unusedPort()
        let listenPort = try unusedPort()
        let metricsPort = try unusedPort()
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:\(listenPort)", "--upstream", "127.0.0.1:\(demoPort)",
            "--demo", "127.0.0.1:\(demoPort)", "--metrics", "127.0.0.1:\(metricsPort)",
        ])
        #expect(await daemon.waitForLog("started"))

        let greeting = try curl(["http://127.0.0.1:\(listenPort)/"])
        #expect(greeting.status == 0)
        #expect(greeting.output == "hello from the Faultline demo service\n")

        let bytes = try curl(["http://127.0.0.1:\(listenPort)/bytes/100000"])
        #expect(bytes.output.utf8.count == 100_000)

        let echoed = try curl(["--data-binary", "ping", "http://127.0.0.1:\(listenPort)/echo"])
        #expect(echoed.output == "ping")

        let metrics = try curl(["http://127.0.0.1:\(metricsPort)/metrics"])
        #expect(metrics.status == 0)
        #expect(metrics.output.contains(#"faultline_connections_accepted_total{listener="default"} 3"#))
        #expect(metrics.output.contains(#"faultline_connections_open{listener="default"} 0"#))
        #expect(metrics.output.contains(#"faultline_forwarded_bytes_total{listener="default",direction="upstream"} "#))
        #expect(metrics.output.contains(#"faultline_connection_duration_seconds_count{listener="default"} 3"#))

        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }
}
