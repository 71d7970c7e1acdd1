import Faultline
import Foundation
import NIOCore
import NIOPosix
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

/// The small HTTP servers (metrics, control, Toxiproxy API, demo) close a connection that has
/// been silent both ways for their idle timeout, and keep one that goes on asking.
@Suite struct SmallServerIdleTests {
    @Test func silentConnectionsAreClosedBusyOnesKept() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await SmallHTTPServer.bind(
            to: try SocketAddress(ipAddress: "127.0.0.1", port: 0), group: group, idleTimeout: .seconds(1)
        ) { _ in .text("ok\n") }
        let serving = Task { await server.run() }
        let port = server.localAddress.port!

        // Silent from the start: closed after the timeout (not at once, not never).
        let silent = await RawClient.run(port: port, timeout: .seconds(10))
        #expect(silent.end == .eof)
        #expect(silent.elapsed >= .seconds(1) && silent.elapsed < .seconds(8), "\(silent.elapsed)")

        // A request every 100 ms for 2 s, twice the timeout: all answered on one connection
        // (a gap between two requests would have to reach the whole second to break it).
        let busy = try await offThePool { () throws -> Int in
            guard let fd = RawClient.connectedSocket(port: port, timeout: .seconds(10)) else { return 0 }
            defer { close(fd) }
            var answered = 0
            var buffer = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<20 {
                let request = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
                guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { break }
                guard recv(fd, &buffer, buffer.count, 0) > 0 else { break }
                answered += 1
                usleep(100_000)
            }
            return answered
        }
        #expect(busy == 20)

        await server.close()
        await serving.value
        try await group.shutdownGracefully()
    }
}

/// A connection accepted by a small HTTP server that is closed before it serves it (a scrape
/// that arrives as the daemon stops) is closed with it; NIO traps on an accepted connection
/// that is dropped unclosed, which would end the daemon with a crash instead of exit 0.
@Suite struct SmallServerCloseTests {
    @Test func closingWithAcceptedConnectionsWaiting() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await SmallHTTPServer.bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0), group: group) { _ in
            .text("ok\n")
        }
        let port = server.localAddress.port!
        // Never served (`run()` not called): the connections wait in the server's stream.
        let clients = (0..<3).compactMap { _ in RawClient.connectedSocket(port: port, timeout: .seconds(5)) }
        #expect(clients.count == 3)
        // The loop accepts within microseconds of the connect; there is no event to wait for
        // from outside, so give it a moment (bounded).
        try await Task.sleep(for: .milliseconds(200))
        await server.close()
        for fd in clients {
            var byte: UInt8 = 0
            #expect(recv(fd, &byte, 1, 0) <= 0)  // closed (EOF or reset), within the socket's 5 s timeout
            close(fd)
        }
        try await group.shutdownGracefully()
    }

    /// Cancelling `run()` (a service group that cancels instead of shutting down gracefully)
    /// ends it and closes the connections it had, idle or waiting to be served.
    @Test(.timeLimit(.minutes(1))) func cancellingRunClosesItsConnections() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await SmallHTTPServer.bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0), group: group) { _ in
            .text("ok\n")
        }
        let serving = Task { await server.run() }
        let clients = (0..<3).compactMap { _ in RawClient.connectedSocket(port: server.localAddress.port!, timeout: .seconds(5)) }
        #expect(clients.count == 3)
        try await Task.sleep(for: .milliseconds(200))  // accepted, as above
        serving.cancel()
        await serving.value
        for fd in clients {
            var byte: UInt8 = 0
            #expect(recv(fd, &byte, 1, 0) <= 0)
            close(fd)
        }
        try await group.shutdownGracefully()
    }
}
