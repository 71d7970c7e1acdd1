import FaultlineRules
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// A listening socket per event loop, all bound to one address with SO_REUSEPORT, so that the
/// kernel spreads new connections across the loops and an accepted channel never changes
/// thread. Each loop tracks its own connections.
public final class ProxyListener: Sendable {
    public let name: String
    /// The address actually bound (the chosen port when the rule said port 0).
    public let boundAddress: SocketAddress
    /// Shared with the channel initializers of every loop: each new connection reads it once.
    private let configuration: NIOLockedValueBox<ListenerConfiguration>
    private let acceptors: [Acceptor]
    private let authorities: CertificateAuthorities
    private let steering: AcceptSteering?
    private let logger: Logger

    struct Acceptor: Sendable {
        let serverChannel: Channel
        let tracker: ConnectionTracker
    }

    private init(name: String, boundAddress: SocketAddress, configuration: NIOLockedValueBox<ListenerConfiguration>,
                 acceptors: [Acceptor], authorities: CertificateAuthorities, steering: AcceptSteering?, logger: Logger) {
        self.authorities = authorities
        self.steering = steering
        self.name = name
        self.boundAddress = boundAddress
        self.configuration = configuration
        self.acceptors = acceptors
        self.logger = logger
    }

    public var rule: ListenerRule { configuration.withLockedValue { $0.rule } }

    /// True when this running listener can take `new` without rebinding: same name, protocol
    /// and address, where a rule that names the port the kernel chose for port 0 (as a
    /// Toxiproxy proxy reports it) is the same address.
    func canTake(_ new: ListenerRule) -> Bool {
        let current = rule
        if current.sameSocket(as: new) { return true }
        guard current.listen.port == 0, new.listen.port == boundAddress.port else { return false }
        var resolved = current
        resolved.listen.port = new.listen.port
        return resolved.sameSocket(as: new)
    }

    /// Binds the listener on every loop of `group`. Either every loop is listening or none is.
    static func start(
        rule: ListenerRule,
        faults: [FaultRule],
        group: MultiThreadedEventLoopGroup,
        metrics: FaultlineMetrics,
        authorities: CertificateAuthorities,
        seed: UInt64,
        steering: AcceptSteering? = nil,
        logger baseLogger: Logger
    ) async throws -> ProxyListener {
        var logger = baseLogger
        logger[metadataKey: "listener"] = "\(rule.name)"
        let configuration: NIOLockedValueBox<ListenerConfiguration>
        do {
            configuration = NIOLockedValueBox(
                try ListenerConfiguration(rule: rule, faults: faults, metrics: metrics, authorities: authorities))
        } catch let error as CertificateAuthorityError {
            throw ListenerStartError(listener: rule.name, address: rule.listen, reason: error.description)
        }
        let loops = Array(group.makeIterator())
        let listenerGuard = ListenerGuard(logger: logger)
        var acceptors: [Acceptor] = []
        var address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: rule.listen.host, port: rule.listen.port)
        } catch {
            throw ListenerStartError(listener: rule.name, address: rule.listen, reason: "\(error)")
        }
        do {
            for (index, loop) in loops.enumerated() {
                let tracker = ConnectionTracker(eventLoop: loop, loopIndex: index, loopCount: loops.count, seed: seed)
                let channel = try await Self.bind(
                    address: address, loop: loop, tracker: tracker, configuration: configuration,
                    listenerGuard: listenerGuard, logger: logger)
                if index == 0, let bound = channel.localAddress {
                    // Port 0: every other loop binds the port the kernel chose for the first.
                    address = bound
                }
                let idleTimeout = TimeAmount.nanoseconds(rule.idleTimeout.nanoseconds)
                try await loop.submit { tracker.startIdleSweep(idleTimeout: idleTimeout) }.get()
                acceptors.append(Acceptor(serverChannel: channel, tracker: tracker))
            }
        } catch {
            for acceptor in acceptors { try? await acceptor.serverChannel.close() }
            throw ListenerStartError(listener: rule.name, address: rule.listen, reason: Self.describe(error))
        }
        // The group's sockets are all bound: new connections follow the steering's choice.
        if let steering, let first = acceptors.first { steering.register(first.serverChannel) }
        logger.info("listening", metadata: ["address": "\(address.logText)", "upstream": "\(rule.upstream)"])
        return ProxyListener(
            name: rule.name, boundAddress: address, configuration: configuration,
            acceptors: acceptors, authorities: authorities, steering: steering, logger: logger)
    }

    private static func bind(
        address: SocketAddress,
        loop: EventLoop,
        tracker: ConnectionTracker,
        configuration: NIOLockedValueBox<ListenerConfiguration>,
        listenerGuard: ListenerGuard,
        logger: Logger
    ) async throws -> Channel {
        let acceptErrors = configuration.withLockedValue { $0.metrics.acceptErrors }
        return try await ServerBootstrap(group: loop)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Out of descriptors, accept(2) fails at once and again: pause accepting
                    // for a second instead of spinning; count and log once per episode.
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptBackoff(
                            failed: { error in
                                acceptErrors.increment()
                                listenerGuard.acceptFailed(error)
                            },
                            succeeded: { listenerGuard.acceptSucceeded() }))
                }
            }
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.Types.SocketOption(
                level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            // Accept a burst of connections per wake-up rather than one.
            .serverChannelOption(.maxMessagesPerRead, value: 16)
            // TCP_NODELAY is NIO's default for accepted channels: setting it again costs a syscall.
            // No child channel options: the bootstrap applies those as a chain of futures per
            // connection; the initializer sets half-closure directly instead.
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                    // The configuration is read once, here: the connection keeps it for life.
                    let listener = configuration.withLockedValue { $0 }
                    guard listenerGuard.admit(channel, limit: listener.rule.maxConnections, rejected: listener.metrics.rejectedOverLimit)
                    else {
                        ProxyConnection.reset(channel)
                        return
                    }
                    if let tls = listener.tls {
                        // The certificate is chosen once, for the connection's one handshake.
                        let choice = tls.choose(
                            faults: listener.faults, clientAddress: channel.remoteAddress?.addressBytes,
                            random: &tracker.random)
                        if let fault = choice.fault { listener.injections(fault).increment() }
                        // A delayed handshake (the fault) gets its delay on top of the timeout.
                        var handshakeTimeout = tls.handshakeTimeout
                        if case .delay(let delay) = choice.gate { handshakeTimeout += delay }
                        let watcher = HandshakeOutcomeWatcher(counters: tls.handshakes, timeout: handshakeTimeout)
                        if listener.rule.protocol == .http {
                            try channel.pipeline.syncOperations.addHandler(PlainHTTPRefusal(countingIn: watcher))
                        }
                        if let gate = choice.gate {
                            try channel.pipeline.syncOperations.addHandler(HandshakeGate(gate))
                        }
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: choice.context))
                        try channel.pipeline.syncOperations.addHandler(watcher)
                    }
                    switch listener.rule.protocol {
                    case .tcp:
                        let connection = ProxyConnection(
                            id: tracker.makeID(), clientChannel: channel, listener: listener, tracker: tracker, logger: logger)
                        try connection.attachClient(to: channel)
                    case .http:
                        let connection = HTTPProxyConnection(
                            id: tracker.makeID(), clientChannel: channel, listener: listener, tracker: tracker, logger: logger)
                        try connection.attachClient(to: channel)
                    }
                }
            }
            .bind(to: address)
            .get()
    }

    /// Takes a changed rule and fault rules (same socket; a different address needs a new
    /// listener). New connections take all of it; open connections follow the fault rules.
    func update(rule: ListenerRule, faults: [FaultRule], metrics: FaultlineMetrics) async throws {
        let new = try ListenerConfiguration(rule: rule, faults: faults, metrics: metrics, authorities: authorities)
        configuration.withLockedValue { $0 = new }
        for acceptor in acceptors {
            try? await acceptor.tracker.eventLoop.submit { acceptor.tracker.rulesChanged(new) }.get()
        }
    }

    /// Stops accepting; open connections carry on.
    func stopAccepting() async {
        if let first = acceptors.first { steering?.unregister(first.serverChannel) }
        for acceptor in acceptors {
            try? await acceptor.serverChannel.close()
            // No new client will take an idle upstream connection: close them, and those of
            // the clients still finishing as they finish.
            try? await acceptor.tracker.eventLoop.submit { acceptor.tracker.upstreamPool.close() }.get()
        }
    }

    /// Open connections on each loop, in the group's order.
    func openConnectionsPerLoop() async -> [Int] {
        var counts: [Int] = []
        for acceptor in acceptors {
            counts.append((try? await acceptor.tracker.eventLoop.submit { acceptor.tracker.count }.get()) ?? 0)
        }
        return counts
    }

    /// Open connections across all loops.
    public func openConnections() async -> Int {
        var total = 0
        for acceptor in acceptors {
            total += (try? await acceptor.tracker.eventLoop.submit { acceptor.tracker.count }.get()) ?? 0
        }
        return total
    }

    /// Closes every open connection now; the listener is finished.
    func closeAllConnections() async {
        for acceptor in acceptors {
            try? await acceptor.tracker.eventLoop.submit {
                acceptor.tracker.stopIdleSweep()
                acceptor.tracker.closeAll()
            }.get()
        }
    }

    /// Folds each loop's counts since the last scrape into the shared metrics; the data path
    /// itself only adds to plain integers on its own loop.
    func collectMetrics() async {
        let (metrics, http) = configuration.withLockedValue { ($0.metrics, $0.http) }
        var open = 0
        var inFlight = 0
        for acceptor in acceptors {
            guard let counts = try? await acceptor.tracker.eventLoop.submit({ acceptor.tracker.takeCounts() }).get()
            else { continue }
            metrics.accepted.increment(by: counts.accepted)
            metrics.bytesUpstream.increment(by: counts.bytesUpstream)
            metrics.bytesDownstream.increment(by: counts.bytesDownstream)
            open += counts.open
            if let http {
                for (index, value) in counts.requestsByClass.enumerated() where value > 0 {
                    http.requests[index].increment(by: value)
                }
                inFlight += counts.requestsInFlight
            }
        }
        metrics.open.set(Int64(open))
        http?.inFlight.set(Int64(inFlight))
    }

    /// Bytes the proxy holds in its outbound buffers for this listener's connections.
    public func bufferedBytes() async -> Int {
        var total = 0
        for acceptor in acceptors {
            total += (try? await acceptor.tracker.eventLoop.submit { acceptor.tracker.bufferedBytes }.get()) ?? 0
        }
        return total
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError {
            return String(cString: strerror(error.errnoCode))
        }
        return "\(error)"
    }
}

/// A listener could not start: names the listener and the address, as an operator needs.
public struct ListenerStartError: Error, CustomStringConvertible {
    public var listener: String
    public var address: HostPort
    public var reason: String

    public var description: String { "listener \"\(listener)\" cannot listen on \(address): \(reason)" }
}
