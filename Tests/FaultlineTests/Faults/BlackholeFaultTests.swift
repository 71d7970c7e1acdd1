import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Blackhole: accepted, never answered; the client runs into its own timeout, and what it
/// sends is read and dropped, so the proxy holds nothing.
@Suite struct BlackholeFaultTests {
    @Test func clientTimesOutWithNoByte() async throws {
        try await withFaultProxy(faults: [.on("void", .blackhole(closeAfter: nil))]) { daemon, port, group in
            let result = try await TestClient.transfer(
                port: port, group: group, send: 4 << 20, verifyFrom: nil, timeout: .milliseconds(500))
            #expect(result.timedOut)
            #expect(result.received == 0)
            #expect(!result.reset)
            #expect(await daemon.proxy.listener(named: "test")!.bufferedBytes() == 0)
            #expect(await daemon.injections("void") == 1)
        }
    }

    @Test func blackholeHoldsClientsEvenWhenTheServiceIsDown() async throws {
        let group = MultiThreadedEventLoopGroupForTests.make()
        let daemon = try await TestDaemon.start(
            [TestDaemon.listener(upstreamPort: try unusedPort())], faults: [.on("void", .blackhole(closeAfter: nil))])
        let result = try await TestClient.transfer(port: daemon.port(), group: group, send: 100, timeout: .milliseconds(300))
        #expect(result.timedOut)
        await daemon.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func closeAfterEndsTheConnection() async throws {
        try await withFaultProxy(faults: [.on("void", .blackhole(closeAfter: .milliseconds(300)))]) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: 100, timeout: .seconds(5))
            #expect(!result.timedOut)
            #expect(result.received == 0)
            #expect(result.closedAfter >= .milliseconds(300))
        }
    }

    @Test func downstreamOnlyBlackholeStillDeliversUpstream() async throws {
        let reply = 1000
        try await withFaultProxy(
            upstream: { ReplyAfterEOFHandler(replyBytes: reply) },
            faults: [.on("void", .blackhole(closeAfter: nil), direction: .downstream)]
        ) { _, port, group in
            let result = try await TestClient.transfer(
                port: port, group: group, send: 10, halfClose: true, verifyFrom: nil, timeout: .milliseconds(500))
            #expect(result.received == 0)
            #expect(result.timedOut)
        }
    }
}

import NIOPosix

enum MultiThreadedEventLoopGroupForTests {
    static func make() -> MultiThreadedEventLoopGroup { MultiThreadedEventLoopGroup(numberOfThreads: 1) }
}
