import Faultline
import FaultlineRules
import Logging
import NIOCore
import NIOPosix

/// Builds the daemon in-process on ephemeral ports, as the executable would, and tears it down.
enum TestDaemon {
    static func listener(_ name: String = "test", upstreamPort: Int, configure: (inout ListenerRule) -> Void = { _ in }) -> ListenerRule {
        var rule = ListenerRule(
            name: name,
            listen: HostPort(host: "127.0.0.1", port: 0),
            upstream: HostPort(host: "127.0.0.1", port: upstreamPort))
        configure(&rule)
        return rule
    }

    static func start(
        _ listeners: [ListenerRule], faults: [FaultRule] = [], metrics: Bool = false, eventLoops: Int = 2, seed: UInt64 = 42
    ) async throws -> Daemon {
        var options = DaemonOptions()
        options.seed = seed
        options.metricsAddress = metrics ? HostPort(host: "127.0.0.1", port: 0) : nil
        options.eventLoops = eventLoops
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .error
        return try await Daemon.start(rules: RuleSet(listeners: listeners, faults: faults), options: options, logger: logger)
    }
}

extension Daemon {
    func port(_ listener: String = "test") -> Int {
        proxy.listener(named: listener)!.boundAddress.port!
    }
}

extension FaultRule {
    /// A fault on the test listener.
    static func on(_ name: String, _ action: FaultAction, listener: String = "test",
                   direction: FaultDirection = .both, probability: Double = 1) -> FaultRule {
        FaultRule(name: name, listener: listener, probability: probability, direction: direction, action: action)
    }
}
