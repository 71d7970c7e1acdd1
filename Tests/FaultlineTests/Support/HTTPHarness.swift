import Faultline
import FaultlineRules
import Logging
import NIOCore
import NIOPosix

/// An `http` listener in front of the built-in demo service (or another upstream), both in
/// process on ephemeral ports.
func withHTTPProxy<T>(
    faults: [FaultRule] = [],
    upstreamPort: Int? = nil,
    eventLoops: Int = 2,
    configure: (inout ListenerRule) -> Void = { _ in },
    _ body: (_ daemon: Daemon, _ port: Int, _ group: EventLoopGroup) async throws -> T
) async throws -> T {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    var demoOptions = DaemonOptions()
    demoOptions.metricsAddress = nil
    demoOptions.demoAddress = HostPort(host: "127.0.0.1", port: 0)
    demoOptions.eventLoops = 1
    var logger = Logger(label: "faultline.test")
    logger.logLevel = .critical
    let demo = try await Daemon.start(rules: RuleSet(), options: demoOptions, logger: logger)
    let serving = Task { await demo.demoServer!.run() }
    // The demo server stops serving before its loops go away.
    func stopDemo() async {
        await demo.demoServer!.close()
        _ = await serving.result
        await demo.shutdown()
    }
    let listener = TestDaemon.listener(upstreamPort: upstreamPort ?? demo.demoServer!.localAddress.port!) { rule in
        rule.protocol = .http
        configure(&rule)
    }
    let daemon = try await TestDaemon.start([listener], faults: faults, metrics: true, eventLoops: eventLoops)
    do {
        let result = try await body(daemon, daemon.port(), group)
        await daemon.shutdown()
        await stopDemo()
        try await group.shutdownGracefully()
        return result
    } catch {
        await daemon.shutdown()
        await stopDemo()
        try? await group.shutdownGracefully()
        throw error
    }
}

extension Daemon {
    /// One sample of the metrics text, for a series given with its labels.
    func metric(_ series: String) async -> Double? {
        let text = await metricsText()
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }
}
