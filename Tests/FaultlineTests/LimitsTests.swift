import Faultline
import FaultlineRules
import Foundation
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The daemon at its limits: a full listener turns new connections away at once and takes
/// them again when some end; out of file descriptors, it backs off instead of spinning, keeps
/// its open connections, and resumes by itself.
struct LimitsTests {
    @Test func fullListenerResetsNewConnectionsAndRecovers() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start(
            [TestDaemon.listener(upstreamPort: echo.port) { $0.maxConnections = 3 }], metrics: true)
        var clients: [LineClient] = []
        for index in 0..<3 {
            let client = try await LineClient.connect(port: daemon.port(), group: group)
            #expect(try await client.exchange("\(index)") == "\(index)")
            clients.append(client)
        }
        // The fourth is reset at accept; the three open ones carry on.
        #expect(await RawClient.run(port: daemon.port(), send: 10).end == .reset)
        #expect(await RawClient.run(port: daemon.port(), send: 10).end == .reset)
        #expect(try await clients[0].exchange("still") == "still")
        #expect(await daemon.metric(#"faultline_connections_rejected_total{listener="test",reason="max_connections"}"#) == 2)
        // One ends: a new one is taken again.
        try await clients.removeLast().close()
        var admitted = false
        let deadline = ContinuousClock.now + .seconds(5)
        while !admitted, ContinuousClock.now < deadline {
            admitted = await RawClient.run(port: daemon.port(), send: 10, halfClose: true).received == 10
            if !admitted { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(admitted)
        for client in clients { try await client.close() }
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }

    /// One listener's upstream accepts and never answers while hundreds of clients push into
    /// it; another listener on the same daemon carries on, and the stuck clients end at the
    /// idle timeout, as documented.
    @Test func aSilentUpstreamDoesNotDisturbOtherListeners() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let silent = try await TestServer.start(group: group) { SilentHandler() }
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let daemon = try await TestDaemon.start([
            TestDaemon.listener("stuck", upstreamPort: silent.port) { $0.idleTimeout = .seconds(2) },
            TestDaemon.listener("fine", upstreamPort: echo.port),
        ])
        let stuck = Task {
            await withTaskGroup(of: RawClient.Result.self) { tasks in
                for _ in 0..<200 {
                    tasks.addTask { await RawClient.run(port: daemon.port("stuck"), send: 64 * 1024, timeout: .seconds(20)) }
                }
                var results: [RawClient.Result] = []
                for await result in tasks { results.append(result) }
                return results
            }
        }
        let client = try await LineClient.connect(port: daemon.port("fine"), group: group)
        for index in 0..<100 {
            #expect(try await client.exchange("ping \(index)") == "ping \(index)")
        }
        try await client.close()
        let results = await stuck.value
        // Nothing came back; every stuck client was closed by the idle timeout, none ran
        // into its own 20 s timeout.
        #expect(results.allSatisfy { $0.received == 0 && $0.end == .eof })
        await daemon.shutdown()
        await silent.stop()
        await echo.stop()
        try await group.shutdownGracefully()
    }

    /// The built binary under a small descriptor limit (prlimit): clients beyond it wait in
    /// the listen backlog, the failure is logged once, the daemon does not spin, and everyone
    /// is served once descriptors come back.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit"), "prlimit (util-linux) is missing"))
    func outOfDescriptorsBacksOffAndResumes() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let metricsPort = try unusedPort()
        // 40 descriptors: the daemon's own (event loops, listeners, log pipes) take most.
        let daemon = try DaemonProcess(
            ["--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(echo.port)", "--metrics", "127.0.0.1:\(metricsPort)", "--event-loops", "1"],
            launcher: ["/usr/bin/prlimit", "--nofile=40:40", "--"])
        #expect(await daemon.waitForLog("started"))
        let first = try await LineClient.connect(port: port, group: group)
        #expect(try await first.exchange("first") == "first")
        // Clients until the daemon runs out; each proxied one costs it two descriptors.
        var clients: [LineClient] = []
        for _ in 0..<30 { clients.append(try await LineClient.connect(port: port, group: group)) }
        #expect(await daemon.waitForLog("cannot accept connections; backing off"))
        let cpuBefore = daemon.cpuSeconds
        try await Task.sleep(for: .seconds(2))
        let cpuUsed = daemon.cpuSeconds - cpuBefore
        #expect(cpuUsed < 0.5, "the daemon used \(cpuUsed) s of CPU in 2 s while out of descriptors")
        // The connection made before goes on.
        #expect(try await first.exchange("still") == "still")
        // Descriptors come back when clients leave: accepting resumes by itself.
        for client in clients { try await client.close() }
        #expect(await daemon.waitForLog("accepting connections again"))
        // The waiting clients that left are accepted and closed now, which takes descriptors
        // for a moment: a new client may need a second try.
        var served = false
        let deadline = ContinuousClock.now + .seconds(10)
        while !served, ContinuousClock.now < deadline {
            if let late = try? await LineClient.connect(port: port, group: group) {
                served = (try? await late.exchange("late")) == "late"
                try? await late.close()
            }
            if !served { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(served)
        #expect(try await first.exchange("still there") == "still there")
        // Logged when an episode starts, not per failed accept: between two "cannot accept"
        // lines there is always an "accepting again" (a connection accepted in between, as
        // descriptors come and go, ends one episode and the next failure starts another).
        var episodes = 0
        var inEpisode = false
        for line in daemon.standardError.split(separator: "\n") {
            if line.contains("cannot accept connections") {
                #expect(!inEpisode, "logged twice in one episode")
                inEpisode = true
                episodes += 1
            } else if line.contains("accepting connections again") {
                inEpisode = false
            }
        }
        #expect(episodes >= 1)
        let metrics = try await Curl.run(["http://127.0.0.1:\(metricsPort)/metrics"])
        let failures = metrics.text.split(separator: "\n")
            .first { $0.hasPrefix(#"faultline_accept_errors_total{listener="default"}"#) }
            .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        #expect(failures >= Double(episodes))
        try await first.close()
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
        await echo.stop()
        try await group.shutdownGracefully()
    }
}
