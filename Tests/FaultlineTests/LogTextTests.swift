import NIOCore
import Testing

@testable import Faultline

/// Start-up lines name addresses as a rule file writes them, not in NIO's debugging form.
@Suite struct LogTextTests {
    @Test func addressesReadAsHostPort() throws {
        #expect(try SocketAddress(ipAddress: "127.0.0.1", port: 8080).logText == "127.0.0.1:8080")
        #expect(try SocketAddress(ipAddress: "::1", port: 8081).logText == "[::1]:8081")
        #expect(try SocketAddress(ipAddress: "::", port: 0).logText == "[::]:0")
        #expect(try SocketAddress(unixDomainSocketPath: "/run/faultline/control.sock").logText == "/run/faultline/control.sock")
    }
}
