import Faultline
import FaultlineRules
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// An upstream that is down, slow to accept, or resets: the client is closed promptly, the
/// failure is counted, and other clients carry on.
@Suite(.serialized)
struct UpstreamFailureTests {
    @Test func upstreamDownClosesClientAndCounts() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start(
            [
                TestDaemon.listener("down", upstreamPort: try unusedPort()),
                TestDaemon.listener("up", upstreamPort: echo.port),
            ], metrics: true)

        let start = ContinuousClock.now
        let refused = try await TestClient.transfer(port: daemon.port("down"), group: group, send: 10)
        #expect(refused.received == 0)
        #expect(ContinuousClock.now - start < .seconds(2))

        // The other listener (and the daemon) are untouched.
        let fine = try await TestClient.transfer(port: daemon.port("up"), group: group, send: 1000, halfClose: true)
        #expect(fine.received == 1000 && fine.mismatchAt == nil)

        let text = await daemon.metricsText()
        #expect(text.contains(#"faultline_upstream_connect_failures_total{listener="down",reason="refused"} 1"#))
        #expect(text.contains(#"faultline_connections_accepted_total{listener="up"} 1"#))

        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }

    @Test func upstreamPastConnectTimeoutClosesClient() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        // A listening socket whose accept queue is full and never drained: further SYNs are
        // dropped, so a connect to it hangs, on loopback, until the connect timeout.
        let (fd, port) = try fullBacklogSocket()
        defer { close(fd) }
        let daemon = try await TestDaemon.start(
            [TestDaemon.listener(upstreamPort: port) { $0.connectTimeout = .milliseconds(300) }], metrics: true)

        let start = ContinuousClock.now
        let result = try await TestClient.transfer(port: daemon.port(), group: group, send: 10)
        let elapsed = ContinuousClock.now - start
        #expect(result.received == 0)
        #expect(elapsed >= .milliseconds(300))
        #expect(elapsed < .seconds(3))
        let text = await daemon.metricsText()
        #expect(text.contains(#"faultline_upstream_connect_failures_total{listener="test",reason="timeout"} 1"#))

        await daemon.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func upstreamResetResetsTheClient() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let upstream = try await TestServer.start(group: group) { ResetOnReadHandler() }
        let daemon = try await TestDaemon.start([TestDaemon.listener(upstreamPort: upstream.port)])

        let result = await RawClient.run(port: daemon.port(), send: 100)
        #expect(result.end == .reset, "the client should see ECONNRESET, saw \(result)")

        await daemon.shutdown()
        await upstream.stop()
        try await group.shutdownGracefully()
    }

    @Test func portInUseNamesListenerAndAddress() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // A plain listener without SO_REUSEPORT holds the port.
        let holder = try await TestServer.start(group: group) { EchoHandler() }
        var rule = TestDaemon.listener("busy", upstreamPort: 9)
        rule.listen = HostPort(host: "127.0.0.1", port: holder.port)
        await #expect {
            try await TestDaemon.start([rule])
        } throws: { error in
            "\(error)" == "listener \"busy\" cannot listen on 127.0.0.1:\(holder.port): Address already in use"
        }
        await holder.stop()
        try await group.shutdownGracefully()
    }

    /// An upstream that stays down while clients keep coming: the first failure is logged in
    /// full, the rest are counted and logged about once a second per loop, and the counts add
    /// up to every client (the built binary, its log as an operator reads it).
    @Test func failuresAreLoggedAboutOnceASecond() async throws {
        let port = try unusedPort()
        let daemon = try DaemonProcess(["--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(try unusedPort())", "--no-metrics"])
        #expect(await daemon.waitForLog("started"))
        let clients = 300
        let start = ContinuousClock.now
        for _ in 0..<clients {
            #expect(await RawClient.run(port: port, send: 1, halfClose: true).received == 0)
        }
        // At most a full line and then a line a second per loop (two), however slow the
        // machine (a sanitizer) made the clients: one line per failure would be 300.
        let allowedLines = 2 * (Int((ContinuousClock.now - start).components.seconds) + 3)
        // The last summary comes within a second of the last failure: look until the counts
        // cover every client, for at most 10 s.
        var lines: [Substring] = []
        var logged = 0
        let deadline = ContinuousClock.now + .seconds(10)
        while logged < clients && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            lines = daemon.standardError.split(separator: "\n").filter { $0.contains("upstream") && $0.contains("warning") }
            logged = lines.reduce(0) { total, line in
                if line.contains("upstream connect failed; closing client") { return total + 1 }
                guard let range = line.range(of: #"\d+ more upstream failures"#, options: .regularExpression) else { return total }
                return total + (Int(line[range].split(separator: " ")[0]) ?? 0)
            }
        }
        #expect(logged == clients, "\(lines.joined(separator: "\n"))")
        #expect(lines.count <= allowedLines, "\(lines.joined(separator: "\n"))")
        #expect(lines.first?.contains("error=Connection refused") == true)
        #expect(lines.contains { $0.contains("reasons=refused=") })
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }
}

/// A listening socket with a backlog of 0 that already holds the connections its queue can
/// take; returns its descriptor and port.
func fullBacklogSocket() throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    listen(fd, 0)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    // Fill the accept queue with non-blocking connects that complete in the kernel.
    for _ in 0..<4 {
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
        }
        // Left open on purpose: they occupy the queue for the test's duration.
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
