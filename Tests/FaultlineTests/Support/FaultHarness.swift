import Faultline
import FaultlineRules
import NIOCore
import NIOPosix

/// A daemon with one listener ("test") in front of a test upstream, with the given faults;
/// everything it started is stopped when `body` returns or throws.
func withFaultProxy<T>(
    upstream: @escaping @Sendable () -> ChannelHandler = { EchoHandler() },
    faults: [FaultRule],
    configure: (inout ListenerRule) -> Void = { _ in },
    _ body: (_ daemon: Daemon, _ port: Int, _ group: EventLoopGroup) async throws -> T
) async throws -> T {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let server = try await TestServer.start(group: group, handler: upstream)
    let daemon = try await TestDaemon.start(
        [TestDaemon.listener(upstreamPort: server.port, configure: configure)], faults: faults, metrics: true)
    do {
        let result = try await body(daemon, daemon.port(), group)
        await daemon.shutdown()
        await server.stop()
        try await group.shutdownGracefully()
        return result
    } catch {
        await daemon.shutdown()
        await server.stop()
        try? await group.shutdownGracefully()
        throw error
    }
}

extension Daemon {
    /// The value of `faultline_faults_injected_total` for a fault of the test listener.
    func injections(_ fault: String) async -> Int {
        let text = await metricsText()
        for line in text.split(separator: "\n") where line.hasPrefix("faultline_faults_injected_total{")
            && line.contains(#"fault="\#(fault)""#)
        {
            return Int(line.split(separator: " ").last ?? "") ?? -1
        }
        return 0
    }
}

/// Counts accepted connections (for "no upstream was dialed").
final class CountingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    static let accepted = ManagedCounter()

    func channelActive(context: ChannelHandlerContext) {
        Self.accepted.add()
    }
}

import Synchronization

final class ManagedCounter: Sendable {
    private let value = Atomic<Int>(0)
    func add() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}
