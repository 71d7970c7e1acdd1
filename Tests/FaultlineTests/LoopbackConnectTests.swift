@testable import Faultline
import FaultlineRules
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The upstream dial for loopback addresses: connect(2) and a zero-timeout poll(2), and NIO
/// takes the connected socket; anything not done at once goes through the bootstrap.
@Suite struct LoopbackConnectTests {
    @Test func loopbackAddressesAreRecognised() throws {
        for host in ["127.0.0.1", "127.45.6.7", "::1"] {
            #expect(LoopbackConnect.isLoopback(try SocketAddress(ipAddress: host, port: 80)), "\(host)")
        }
        for host in ["10.0.0.1", "0.0.0.0", "128.0.0.1", "::", "::2", "fe80::1", "2001:db8::1"] {
            #expect(!LoopbackConnect.isLoopback(try SocketAddress(ipAddress: host, port: 80)), "\(host)")
        }
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func aListeningUpstreamIsConnectedAtOnce(host: String) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group, host: host) { EchoHandler() }
        let address = try SocketAddress(ipAddress: host, port: echo.port)
        guard case .connected(let socket) = LoopbackConnect.attempt(address) else {
            Issue.record("expected a connected socket")
            return
        }
        defer { close(socket) }
        // Connected to the echo server: what goes out comes back.
        var sent: [UInt8] = Array("ping".utf8)
        #expect(write(socket, &sent, sent.count) == sent.count)
        var pollDescriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pollDescriptor, 1, 5_000) == 1)
        var received = [UInt8](repeating: 0, count: 16)
        #expect(read(socket, &received, received.count) == sent.count)
        #expect(Array(received.prefix(sent.count)) == sent)
        await echo.stop()
        try await group.shutdownGracefully()
    }

    @Test func nothingListeningIsRefused() throws {
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: try unusedPort())
        guard case .failed(let error) = LoopbackConnect.attempt(address) else {
            Issue.record("expected a refused connect")
            return
        }
        #expect(error.errnoCode == ECONNREFUSED)
        #expect(UpstreamFailureReason(error) == .refused)
    }

    @Test func aFullAcceptQueueLeavesTheDialToTheBootstrap() throws {
        let (fd, port) = try fullBacklogSocket()
        defer { close(fd) }
        let outcome = LoopbackConnect.attempt(try SocketAddress(ipAddress: "127.0.0.1", port: port))
        guard case .pending = outcome else {
            Issue.record("expected the connect to be left pending, got \(outcome)")
            return
        }
    }

    @Test func aTCPListenerForwardsToAnIPv6LoopbackUpstream() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group, host: "::1") { EchoHandler() }
        let daemon = try await TestDaemon.start([
            TestDaemon.listener(upstreamPort: echo.port) { $0.upstream = HostPort(host: "::1", port: echo.port) }
        ])
        let result = try await TestClient.transfer(port: daemon.port(), group: group, send: 100_000, halfClose: true)
        #expect(result.received == 100_000 && result.mismatchAt == nil)
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }
}
