import Foundation
import FaultlineRules
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import NIOConcurrencyHelpers

/// The proxy listeners as one long-running `Service`: started from a rule set, drained on
/// graceful shutdown (stop accepting, let open connections finish for the grace period, then
/// close what is left).
public final class ProxyService: Service, Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let metrics: FaultlineMetrics
    private let logger: Logger
    private let gracePeriod: Duration
    private let seed: UInt64
    /// Steers new connections to one loop first (see `AcceptSteering`); nil: the kernel's hash.
    let steering: AcceptSteering?
    /// Faultline's CA for TLS listeners (loaded or created on first need).
    public let authorities: CertificateAuthorities
    private let listenersByName: NIOLockedValueBox<[String: ProxyListener]>
    /// Listeners removed from the rules: no longer accepting, kept until their connections
    /// end, each with the task that waits for that. A drain cancels and awaits those tasks
    /// before it takes the listeners over, so that none outlives the event loops.
    private let retired: NIOLockedValueBox<[ObjectIdentifier: (listener: ProxyListener, watch: Task<Void, Never>)]>

    init(group: MultiThreadedEventLoopGroup, metrics: FaultlineMetrics, gracePeriod: Duration, seed: UInt64,
         authorities: CertificateAuthorities, steering: AcceptSteering? = nil, logger: Logger) {
        self.authorities = authorities
        self.steering = steering
        self.group = group
        self.metrics = metrics
        self.gracePeriod = gracePeriod
        self.seed = seed
        self.logger = logger
        self.listenersByName = NIOLockedValueBox([:])
        self.retired = NIOLockedValueBox([:])
    }

    /// Starts every listener of `rules`. Either all of them listen or none does: a listener
    /// that cannot bind stops the ones already started.
    func start(_ rules: RuleSet) async throws {
        let started = try await startAll(rules.listeners, of: rules)
        listenersByName.withLockedValue { listeners in
            for listener in started { listeners[listener.name] = listener }
        }
    }

    /// Applies new fault rules to the running listeners (same listeners, new faults).
    public func updateFaults(_ rules: RuleSet) async throws {
        metrics.retirement.applying()
        for listener in listeners {
            guard let rule = rules.listener(named: listener.name) else { continue }
            try await listener.update(rule: rule, faults: rules.faults(forListener: rule.name), metrics: metrics)
        }
        metrics.retirement.applied()
    }

    /// Makes the running listeners match `rules`. New listeners (and listeners whose address
    /// changed) are bound first: if one cannot bind, nothing changes and the error is thrown.
    /// Then kept listeners take their new settings (new connections) and fault rules (open
    /// connections too), and removed ones stop accepting while their open connections finish.
    /// No open connection is closed.
    public func apply(_ rules: RuleSet) async throws {
        metrics.retirement.applying()
        let current = listenersByName.withLockedValue { $0 }
        var toStart: [ListenerRule] = []
        var toUpdate: [(ProxyListener, ListenerRule)] = []
        var toRetire: [ProxyListener] = []
        for rule in rules.listeners {
            if let existing = current[rule.name], existing.canTake(rule) {
                toUpdate.append((existing, rule))
            } else {
                toStart.append(rule)
                if let existing = current[rule.name] { toRetire.append(existing) }
            }
        }
        for (name, listener) in current where rules.listener(named: name) == nil {
            toRetire.append(listener)
        }
        // A new listener on the address of one being removed binds beside it (SO_REUSEPORT)
        // before the old one closes, so that the address never refuses a client.
        let started = try await startAll(toStart, of: rules)
        for (listener, rule) in toUpdate {
            try await listener.update(rule: rule, faults: rules.faults(forListener: rule.name), metrics: metrics)
        }
        listenersByName.withLockedValue { listeners in
            for listener in toRetire where listeners[listener.name] === listener { listeners[listener.name] = nil }
            for listener in started { listeners[listener.name] = listener }
        }
        for listener in toRetire { await retire(listener) }
        metrics.retirement.applied()
    }

    /// Starts a listener for each of `listenerRules` (with its faults from `rules`), all or none:
    /// when one cannot bind, the ones started before it stop accepting and the error is thrown.
    private func startAll(_ listenerRules: [ListenerRule], of rules: RuleSet) async throws -> [ProxyListener] {
        var started: [ProxyListener] = []
        do {
            for rule in listenerRules {
                started.append(
                    try await ProxyListener.start(
                        rule: rule, faults: rules.faults(forListener: rule.name), group: group, metrics: metrics,
                        authorities: authorities, seed: seed, steering: steering, logger: logger))
            }
        } catch {
            for listener in started { await listener.stopAccepting() }
            throw error
        }
        return started
    }

    /// Stops accepting on `listener` and forgets it once its last connection has ended.
    private func retire(_ listener: ProxyListener) async {
        await listener.stopAccepting()
        logger.info("listener removed; open connections may finish", metadata: ["listener": "\(listener.name)"])
        retired.withLockedValue { retired in
            let watch = Task { [self] in
                while !Task.isCancelled, await listener.openConnections() > 0 {
                    try? await Task.sleep(for: .milliseconds(200))
                }
                if Task.isCancelled { return }  // a drain has taken over
                await listener.collectMetrics()
                await listener.closeAllConnections()  // stops the idle sweep; nothing is open
                self.retired.withLockedValue { $0[ObjectIdentifier(listener)] = nil }
            }
            retired[ObjectIdentifier(listener)] = (listener, watch)
        }
    }

    /// Closes the open connections of a listener that was just removed or switched off, at
    /// once, instead of letting them finish (a Toxiproxy proxy that is disabled or deleted).
    public func closeConnections(ofRemoved name: String) async {
        let removed = retired.withLockedValue { $0.values.filter { $0.listener.name == name } }
        for entry in removed {
            await entry.listener.closeAllConnections()
        }
    }

    private var retiredListeners: [ProxyListener] {
        retired.withLockedValue { $0.values.map(\.listener) }
    }

    public func listener(named name: String) -> ProxyListener? {
        listenersByName.withLockedValue { $0[name] }
    }

    public var listeners: [ProxyListener] {
        listenersByName.withLockedValue { Array($0.values) }.sorted { $0.name < $1.name }
    }

    public func run() async throws {
        // Runs until the service group asks for a graceful shutdown (SIGTERM, SIGINT).
        try? await gracefulShutdown()
        SystemdNotify.send("STOPPING=1")
        await drain(gracePeriod: gracePeriod)
    }

    /// Stops accepting, waits up to `gracePeriod` for open connections to end, closes the rest.
    public func drain(gracePeriod: Duration) async {
        let watches = retired.withLockedValue { $0.values.map(\.watch) }
        for watch in watches {
            watch.cancel()
            await watch.value
        }
        let listeners = self.listeners + retiredListeners
        for listener in listeners { await listener.stopAccepting() }
        var open = await openConnections(listeners)
        logger.info("draining", metadata: ["connections.open": "\(open)", "grace": "\(gracePeriod)"])
        let deadline = ContinuousClock.now + gracePeriod
        while open > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
            open = await openConnections(listeners)
        }
        if open > 0 {
            logger.info("grace period over; closing connections", metadata: ["connections.open": "\(open)"])
            for listener in listeners { await listener.closeAllConnections() }
        }
    }

    /// Brings the shared metrics up to date with every listener's loops.
    public func collectMetrics() async {
        for listener in listeners + retiredListeners { await listener.collectMetrics() }
        let draining = Set(retiredListeners.map(\.name))
        metrics.retirement.dropExpired(draining: draining)
        // Only once a TLS listener has made the CA exist: a daemon without TLS has none.
        if let ca = authorities.loaded {
            metrics.caExpiry.set(ca.certificate.notValidAfter.timeIntervalSinceNow)
        }
    }

    private func openConnections(_ listeners: [ProxyListener]) async -> Int {
        var total = 0
        for listener in listeners { total += await listener.openConnections() }
        return total
    }
}
