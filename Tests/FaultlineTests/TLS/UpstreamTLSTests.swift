import Faultline
import FaultlineRules
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `upstream_tls`: Faultline speaks TLS to its upstream (here, a TLS listener of a second
/// daemon in front of the demo service), trusting a given CA, or nothing when told to be
/// insecure, and refusing an upstream it cannot verify.
@Suite struct UpstreamTLSTests {
    @Test(arguments: [ListenerProtocol.http, .tcp])
    func plainClientsReachATLSUpstream(_ proto: ListenerProtocol) async throws {
        try await withHTTPProxy(configure: { $0.tls = TLSSettings(names: ["localhost", "127.0.0.1"]) }) { back, backPort, _ in
            let caFile = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ca-\(UUID().uuidString).pem").path
            try back.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: caFile) }
            func front(_ settings: UpstreamTLSSettings, _ name: String) -> ListenerRule {
                TestDaemon.listener(name, upstreamPort: backPort) {
                    $0.protocol = proto
                    $0.upstreamTLS = settings
                }
            }
            let daemon = try await TestDaemon.start([
                front(UpstreamTLSSettings(caFile: caFile, serverName: "localhost"), "trusting"),
                front(UpstreamTLSSettings(insecure: true), "insecure"),
                front(UpstreamTLSSettings(), "system-roots"),
            ])
            for name in ["trusting", "insecure"] {
                let result = try await Curl.run(["http://127.0.0.1:\(daemon.port(name))/"])
                #expect(result.status == 0, "\(name): \(result.log)")
                #expect(result.text == "hello from the Faultline demo service\n", "\(name)")
            }
            // The system's roots do not include Faultline's CA: no answer from the upstream, and
            // a failed handshake is said to be one (not "the upstream closed the connection").
            let refused = try await Curl.run(["-i", "http://127.0.0.1:\(daemon.port("system-roots"))/"])
            if proto == .http {
                #expect(refused.text.hasPrefix("HTTP/1.1 502 Bad Gateway"), "\(refused.text)")
                #expect(refused.text.hasSuffix("failed (certificate verify failed)\n"), "\(refused.text)")
                #expect(await daemon.metric(#"faultline_http_upstream_errors_total{listener="system-roots",kind="connect_tls"}"#) == 1)
            } else {
                #expect(refused.status != 0 && refused.body.isEmpty, "\(refused.log)")
            }
            #expect(await daemon.metric(#"faultline_upstream_connect_failures_total{listener="system-roots",reason="tls"}"#) == 1)
            await daemon.shutdown()
        }
    }

    @Test func unreadableCABundleIsAStartError() async throws {
        let rule = TestDaemon.listener("x", upstreamPort: 1) { $0.upstreamTLS = UpstreamTLSSettings(caFile: "/nonexistent/ca.pem") }
        await #expect(throws: (any Error).self) { _ = try await TestDaemon.start([rule]) }
    }
}
