import Faultline
import NIOCore
import NIOPosix
import Testing

/// A connection silent in both directions for the idle timeout is closed; one that keeps
/// talking is not.
struct IdleTimeoutTests {
    @Test func silentConnectionIsClosedAfterTheIdleTimeout() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start(
            [TestDaemon.listener(upstreamPort: echo.port) { $0.idleTimeout = .seconds(1) }])

        let client = try await LineClient.connect(port: daemon.port(), group: group)
        // (A second of idle timeout: a slow machine, or a sanitizer build, must not take that
        // long between the connect and the first exchange.)
        // Timed on the client's own thread: a busy test run must not shorten what is measured.
        let silent = try await offThePool {
            guard try client.exchangeBlocking("hi") == "hi" else { return Duration.zero }
            let lastByte = ContinuousClock.now
            try client.closedBlocking()
            return ContinuousClock.now - lastByte
        }
        // The proxy closes at least one idle period after its own last read; the client saw
        // the echo a little after that read, so its measure may come out a few ms short.
        #expect(silent >= .milliseconds(950))
        #expect(silent < .seconds(3))

        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }

    @Test func talkingConnectionOutlivesTheIdleTimeout() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start(
            [TestDaemon.listener(upstreamPort: echo.port) { $0.idleTimeout = .seconds(2) }])

        let client = try await LineClient.connect(port: daemon.port(), group: group)
        let start = ContinuousClock.now
        // An exchange every 50 ms for 6.5 s: over three idle periods, never idle. (The gaps
        // stay far below the timeout even on a busy machine with a sanitizer build; every
        // exchange must succeed.)
        var exchanges = 0
        while ContinuousClock.now - start < .milliseconds(6500) {
            #expect(try await client.exchange("tick \(exchanges)") == "tick \(exchanges)")
            exchanges += 1
            try await Task.sleep(for: .milliseconds(50))
        }

        try await client.close()
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }
}
