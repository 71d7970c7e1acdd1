import FaultlineRules
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import NIOConcurrencyHelpers
import UnixSignals

/// How the daemon runs, apart from the rules.
public struct DaemonOptions: Sendable {
    public static let defaultMetricsAddress = HostPort(host: "127.0.0.1", port: 9464)

    /// Where `/metrics` is served; nil for no metrics endpoint.
    public var metricsAddress: HostPort? = DaemonOptions.defaultMetricsAddress
    /// Where the built-in demo service listens; nil for none.
    public var demoAddress: HostPort?
    /// How long open connections may finish after SIGTERM before they are closed.
    public var gracePeriod: Duration = .seconds(10)
    /// Event loops (threads) for the data path.
    public var eventLoops: Int = System.coreCount
    /// Seed of the fault decisions' random source; nil for a random one. With a seed, the same
    /// connections in the same order on one loop get the same draws and delays.
    public var seed: UInt64?
    /// The control socket (HTTP/1.1 + JSON on a UNIX socket); nil for none.
    public var controlSocket: String?
    /// The control API on a loopback TCP address too (for Chaos Toolkit's HTTP provider, which
    /// cannot reach a UNIX socket); nil for none (the default).
    public var controlAddress: HostPort?
    /// Where the Toxiproxy-compatible API listens; nil for none (the default).
    public var toxiproxyAddress: HostPort?
    /// The socket file's mode: 0600 (owner only) unless a group is given access (0660).
    public var controlSocketMode: mode_t = 0o600
    /// Where Faultline keeps its CA (`ca.pem`, `ca-key.pem`); nil for a CA in memory only.
    public var stateDirectory: String?
    /// The rule folder the rules came from: watched and reloaded on change and on SIGHUP.
    /// nil for the one-off form (SIGHUP then reloads nothing).
    public var rulesDirectory: String?
    /// How long `/metrics` keeps the series of a listener or fault that has left the rules.
    public var retiredSeriesRetention: Duration = .seconds(600)

    public init() {}
}

/// The whole daemon, built from a rule set and options. Tests build one on port 0 and read the
/// bound ports back; the executable builds one and runs it under a `ServiceGroup`.
public final class Daemon: Sendable {
    public let group: MultiThreadedEventLoopGroup
    public let metrics: FaultlineMetrics
    public let proxy: ProxyService
    public let metricsServer: SmallHTTPServer?
    public let demoServer: SmallHTTPServer?
    public let reloader: RuleReloader
    private let logger: Logger
    private let control = NIOLockedValueBox<(server: SmallHTTPServer, path: String)?>(nil)
    private let controlTCP = NIOLockedValueBox<SmallHTTPServer?>(nil)
    private let toxiproxy = NIOLockedValueBox<SmallHTTPServer?>(nil)
    public let startedAt = ContinuousClock.now

    private init(group: MultiThreadedEventLoopGroup, metrics: FaultlineMetrics, proxy: ProxyService,
                 reloader: RuleReloader, metricsServer: SmallHTTPServer?, demoServer: SmallHTTPServer?, logger: Logger) {
        self.group = group
        self.metrics = metrics
        self.proxy = proxy
        self.reloader = reloader
        self.metricsServer = metricsServer
        self.demoServer = demoServer
        self.logger = logger
    }

    /// Binds everything; either the whole daemon is up or nothing is left running.
    public static func start(rules: RuleSet, options: DaemonOptions, logger: Logger) async throws -> Daemon {
        let steering = AcceptSteering(logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, options.eventLoops), metricsDelegate: steering)
        let metrics = FaultlineMetrics(retiredSeriesRetention: options.retiredSeriesRetention)
        let proxy = ProxyService(
            group: group, metrics: metrics, gracePeriod: options.gracePeriod,
            seed: options.seed ?? FaultRandom.randomSeed(),
            authorities: CertificateAuthorities(folder: options.stateDirectory), steering: steering, logger: logger)
        var demo: SmallHTTPServer?
        var metricsServer: SmallHTTPServer?
        do {
            if let address = options.demoAddress {
                demo = try await bindServer("demo service", address, group: group, handler: DemoService.handler)
                logger.info("demo service listening", metadata: ["address": "\(demo!.localAddress.logText)"])
            }
            try await proxy.start(rules)
            if let address = options.metricsAddress {
                metricsServer = try await bindServer(
                    "metrics", address, group: group, handler: MetricsEndpoint.handler(metrics: metrics) { await proxy.collectMetrics() })
                logger.info("metrics listening", metadata: ["address": "\(metricsServer!.localAddress.logText)"])
            }
        } catch {
            await proxy.drain(gracePeriod: .zero)
            await demo?.close()
            await metricsServer?.close()
            try? await group.shutdownGracefully()
            throw error
        }
        // SIGHUP is trapped now, before anything can announce readiness.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let reloader = RuleReloader(
            directory: options.rulesDirectory, initial: rules, proxy: proxy, metrics: metrics, hangups: hangups,
            logger: logger)
        reloader.startWatching()
        let daemon = Daemon(group: group, metrics: metrics, proxy: proxy, reloader: reloader, metricsServer: metricsServer,
                            demoServer: demo, logger: logger)
        if options.controlSocket != nil || options.controlAddress != nil || options.toxiproxyAddress != nil {
            do {
                if let path = options.controlSocket {
                    try await daemon.bindControlSocket(path: path, mode: options.controlSocketMode)
                }
                if let address = options.controlAddress {
                    let api = ControlAPI(daemon: daemon, startedAt: daemon.startedAt)
                    let server = try await bindServer(
                        "control API", address, group: group, maxBodyBytes: ControlAPI.maxBodyBytes, tooLarge: ControlAPI.tooLarge,
                        malformed: ControlAPI.malformed, handler: api.handler)
                    daemon.controlTCP.withLockedValue { $0 = server }
                    logger.info("control API listening", metadata: ["address": "\(server.localAddress.logText)"])
                }
                if let address = options.toxiproxyAddress {
                    let api = ToxiproxyAPI(daemon: daemon)
                    let server = try await bindServer(
                        "Toxiproxy API", address, group: group, malformed: ToxiproxyAPI.malformed, handler: api.handler)
                    daemon.toxiproxy.withLockedValue { $0 = server }
                    logger.info("Toxiproxy-compatible API listening", metadata: ["address": "\(server.localAddress.logText)"])
                }
            } catch {
                await daemon.shutdown()
                throw error
            }
        }
        return daemon
    }

    /// The control socket's server, once bound.
    public var controlServer: SmallHTTPServer? { control.withLockedValue { $0?.server } }

    /// The Toxiproxy-compatible API, if asked for.
    public var toxiproxyServer: SmallHTTPServer? { toxiproxy.withLockedValue { $0 } }

    /// The control API on TCP, if asked for.
    public var controlTCPServer: SmallHTTPServer? { controlTCP.withLockedValue { $0 } }

    private func bindControlSocket(path: String, mode: mode_t) async throws {
        try ControlSocketFile.prepare(path)
        let api = ControlAPI(daemon: self, startedAt: startedAt)
        // Created with the final mode: no moment in which others could connect.
        let previous = umask(0o777 & ~mode)
        defer { umask(previous) }
        let server: SmallHTTPServer
        do {
            server = try await SmallHTTPServer.bind(
                to: try SocketAddress(unixDomainSocketPath: path), group: group, maxBodyBytes: ControlAPI.maxBodyBytes,
                tooLarge: ControlAPI.tooLarge, malformed: ControlAPI.malformed, handler: api.handler)
        } catch {
            throw DaemonStartError(description: "control socket cannot listen on \(path): \(ProxyListener.describe(error))")
        }
        chmod(path, mode)
        control.withLockedValue { $0 = (server, path) }
        logger.info("control socket listening", metadata: ["path": "\(path)"])
    }

    private static func bindServer(
        _ what: String, _ address: HostPort, group: EventLoopGroup, maxBodyBytes: Int = 1 << 20,
        tooLarge: @escaping @Sendable (Int) -> SmallHTTPResponse = SmallHTTPServer.tooLargeText,
        malformed: SmallHTTPResponse = SmallHTTPServer.malformedText, handler: @escaping SmallHTTPServer.Handler
    ) async throws -> SmallHTTPServer {
        do {
            let socketAddress = try SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
            return try await SmallHTTPServer.bind(
                to: socketAddress, group: group, maxBodyBytes: maxBodyBytes, tooLarge: tooLarge, malformed: malformed,
                handler: handler)
        } catch {
            throw DaemonStartError(description: "\(what) cannot listen on \(address): \(ProxyListener.describe(error))")
        }
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully: the proxy drains first, the
    /// demo service and the metrics endpoint stop last so that they serve the drain.
    /// `onReady` runs once the signal handlers are in place, so that a SIGTERM sent as soon as
    /// the daemon says it is ready is a graceful shutdown, never the default kill.
    public func run(onReady: @escaping @Sendable () -> Void = {}) async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: ReadinessService(onReady: onReady))]
        if let metricsServer { services.append(.init(service: HTTPServerService(server: metricsServer))) }
        if let demoServer { services.append(.init(service: HTTPServerService(server: demoServer))) }
        if let controlServer { services.append(.init(service: HTTPServerService(server: controlServer))) }
        if let controlTCPServer { services.append(.init(service: HTTPServerService(server: controlTCPServer))) }
        if let toxiproxyServer { services.append(.init(service: HTTPServerService(server: toxiproxyServer))) }
        services.append(.init(service: proxy))
        services.append(.init(service: reloader))
        let serviceGroup = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await serviceGroup.run()
        removeControlSocket()
        try await group.shutdownGracefully()
        logger.info("stopped")
    }

    /// The metrics as `/metrics` serves them, brought up to date first.
    public func metricsText() async -> String {
        await proxy.collectMetrics()
        return String(decoding: metrics.exposition(), as: UTF8.self)
    }

    /// Stops everything now (tests); open connections get `gracePeriod` to finish.
    public func shutdown(gracePeriod: Duration = .zero) async {
        reloader.stopWatching()
        await controlServer?.close()
        await controlTCPServer?.close()
        await toxiproxyServer?.close()
        removeControlSocket()
        await proxy.drain(gracePeriod: gracePeriod)
        await demoServer?.close()
        await metricsServer?.close()
        try? await group.shutdownGracefully()
    }
}

public struct DaemonStartError: Error, CustomStringConvertible {
    public var description: String
}

extension Daemon {
    fileprivate func removeControlSocket() {
        if let path = control.withLockedValue({ $0?.path }) { unlink(path) }
    }
}

/// Announces readiness from inside the service group, where the signals are already trapped.
struct ReadinessService: Service {
    let onReady: @Sendable () -> Void

    func run() async throws {
        onReady()
        try? await gracefulShutdown()
    }
}

/// A `SmallHTTPServer` as a service: serves until graceful shutdown.
struct HTTPServerService: Service {
    let server: SmallHTTPServer

    func run() async throws {
        await withGracefulShutdownHandler {
            await server.run()
        } onGracefulShutdown: {
            Task { await server.close() }
        }
    }
}
