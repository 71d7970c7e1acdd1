import FaultlineRules
import Logging
import Prometheus
import ServiceLifecycle
import NIOConcurrencyHelpers
import Synchronization
import UnixSignals

/// What one reload did.
public struct ReloadOutcome: Sendable {
    public var succeeded: Bool
    /// The rules did not change (a SIGHUP with the same files): a successful no-op.
    public var unchanged: Bool
    public var errors: [String]
    public var summary: String
    /// Not tried: the daemon is shutting down and takes no more changes.
    public var shuttingDown = false
}

/// The one owner of SIGHUP and of the rule folder's changes. It reloads the folder as a whole,
/// validates it completely, and only then swaps it in; an invalid folder changes nothing and
/// the last good rules stay in force. Reloads run one at a time, in order.
public final class RuleReloader: Service, Sendable {
    public let directory: String?
    private let proxy: ProxyService
    private let logger: Logger
    private let debounce: Duration
    private let hangups: UnixSignalsSequence
    private let current: NIOLockedValueBox<RuleSet>
    private let lastOutcome: NIOLockedValueBox<ReloadOutcome?>
    private let overlayState = NIOLockedValueBox(RuntimeOverlay())
    private let watcher = NIOLockedValueBox<DirectoryWatcher?>(nil)
    /// Sleeps until the next runtime change with an expiry is due, then asks for it to be
    /// reverted; re-armed after every request (nothing wakes the daemon while nothing expires).
    private let expiryTimer = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let requests: AsyncStream<Request>
    private let requestSink: AsyncStream<Request>.Continuation
    /// Set when shutdown begins; from then on a request is answered at once ("shutting
    /// down") instead of queued. Checked and set under the same lock as the queueing, so that
    /// no request is queued after the queue has been closed and then never answered.
    private let closed = NIOLockedValueBox(false)

    private let reloadSuccess: Counter
    private let reloadFailure: Counter
    private let lastSuccess: Gauge
    private let lastReloadTime: Gauge

    struct Request: Sendable {
        var reason: String
        var reply: (@Sendable (ReloadOutcome) -> Void)?
        /// For file changes: the change count when it was reported.
        var change: Int = 0
        /// A change to the runtime overlay (control socket) instead of a reload.
        var overlayChange: OverlayChange?
    }

    typealias OverlayMutation = @Sendable (inout RuntimeOverlay, RuleSet) throws(RuntimeOverlay.ChangeError) -> Void

    struct OverlayChange: Sendable {
        var mutate: OverlayMutation
        var reply: @Sendable (Result<Void, RuntimeOverlay.ChangeError>) -> Void
    }

    /// File changes reported so far, and when the last one was (monotonic nanoseconds).
    private let changes = Atomic<Int>(0)
    private let lastChangeAt = Atomic<Int64>(0)

    /// `hangups` must be created before the daemon says it is ready, so that a SIGHUP sent at
    /// once is a reload and never the default action (exit).
    init(
        directory: String?, initial: RuleSet, proxy: ProxyService, metrics: FaultlineMetrics,
        hangups: UnixSignalsSequence, debounce: Duration = .milliseconds(100), logger: Logger
    ) {
        self.directory = directory
        self.proxy = proxy
        self.logger = logger
        self.debounce = debounce
        self.hangups = hangups
        self.current = NIOLockedValueBox(initial)
        self.lastOutcome = NIOLockedValueBox(nil)
        (requests, requestSink) = AsyncStream.makeStream(of: Request.self)
        let registry = metrics.registry
        let reloads = MetricNameDescriptor(
            namespace: "faultline", metricName: "rules_reload", unitName: "total",
            helpText: "Rule reloads by result (success includes reloads that changed nothing).")
        reloadSuccess = registry.makeCounter(descriptor: reloads, labels: [("result", "success")])
        reloadFailure = registry.makeCounter(descriptor: reloads, labels: [("result", "failure")])
        lastSuccess = registry.makeGauge(
            descriptor: .init(namespace: "faultline", metricName: "rules_last_reload", unitName: "success",
                              helpText: "1 if the last reload succeeded, 0 while the last one failed."))
        lastReloadTime = registry.makeGauge(
            descriptor: .init(namespace: "faultline", metricName: "rules_last_reload_timestamp", unitName: "seconds",
                              helpText: "When the last reload finished (Unix time)."))
        lastSuccess.set(Int64(1))
    }

    /// The rules of the files, as last loaded successfully.
    public var rules: RuleSet { current.withLockedValue { $0 } }

    /// What was changed at run time on top of the files.
    public var overlay: RuntimeOverlay { overlayState.withLockedValue { $0 } }

    /// The rules in force: the files' with the runtime overlay applied.
    public var effectiveRules: RuleSet { overlay.effective(rules) }

    /// Changes the runtime overlay (in order with reloads) and applies the result.
    public func changeOverlay(
        _ mutate: @escaping @Sendable (inout RuntimeOverlay, RuleSet) throws(RuntimeOverlay.ChangeError) -> Void
    ) async -> Result<Void, RuntimeOverlay.ChangeError> {
        await withCheckedContinuation { continuation in
            let queued = submit(Request(
                reason: "control", reply: nil,
                overlayChange: OverlayChange(mutate: mutate) { continuation.resume(returning: $0) }))
            if !queued { continuation.resume(returning: .failure(.shuttingDown)) }
        }
    }

    public var lastReload: ReloadOutcome? { lastOutcome.withLockedValue { $0 } }

    /// Reloads now and returns what happened (the control socket's `reload`).
    public func reload(reason: String) async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            if !submit(Request(reason: reason) { continuation.resume(returning: $0) }) {
                continuation.resume(returning: shuttingDownOutcome)
            }
        }
    }

    /// What a reload asked for during shutdown gets: nothing changed.
    private var shuttingDownOutcome: ReloadOutcome {
        ReloadOutcome(succeeded: false, unchanged: true, errors: ["the daemon is shutting down"], summary: rules.summary,
                      shuttingDown: true)
    }

    /// Queues a request, unless shutdown has begun (then false: the caller answers it).
    @discardableResult
    private func submit(_ request: Request) -> Bool {
        closed.withLockedValue { closed in
            guard !closed else { return false }
            requestSink.yield(request)
            return true
        }
    }

    /// Takes no more requests; those queued already are answered, then `serveRequests` ends.
    private func closeRequests() {
        closed.withLockedValue { closed in
            closed = true
            requestSink.finish()
        }
    }

    /// Starts watching the folder. Called by `Daemon.start`, before the daemon says it is
    /// ready, so that no edit made after that is missed; changes seen before `run()` wait in
    /// the request queue.
    func startWatching() {
        guard let directory else { return }
        do {
            let watcher = try DirectoryWatcher(directory: directory) { [self] in
                lastChangeAt.store(Self.monotonicNanoseconds(), ordering: .relaxed)
                let change = changes.add(1, ordering: .relaxed).newValue
                submit(Request(reason: "files changed", reply: nil, change: change))
            }
            self.watcher.withLockedValue { $0 = watcher }
        } catch {
            logger.warning("rule files are not watched; reload with SIGHUP", metadata: ["error": "\(error)"])
        }
    }

    func stopWatching() {
        watcher.withLockedValue { watcher in
            watcher?.stop()
            watcher = nil
        }
    }

    public func run() async throws {
        defer {
            stopWatching()
            expiryTimer.withLockedValue { timer in
                timer?.cancel()
                timer = nil
            }
        }

        // Not a child task: cancelling `run` must not end the loop while requests wait in the
        // queue, since their callers (a control request, say) would then wait for ever and
        // keep the daemon from exiting. The loop ends when the queue is closed and empty.
        let serving = Task { await self.serveRequests() }
        for await _ in hangups.cancelOnGracefulShutdown() {
            submit(Request(reason: "SIGHUP", reply: nil))
        }
        // Shutting down (or cancelled): no more changes, so that none lands while the proxy
        // drains; what is queued already is answered "shutting down".
        closeRequests()
        await serving.value
    }

    private func serveRequests() async {
        var handledChange = 0
        for await request in requests {
            if closed.withLockedValue({ $0 }) {
                request.overlayChange?.reply(.failure(.shuttingDown))
                request.reply?(shuttingDownOutcome)
                continue
            }
            if let change = request.overlayChange {
                change.reply(await applyOverlayChange(change.mutate))
                armExpiryTimer()
                continue
            }
            if request.reply == nil, request.change > 0 {
                // A change already covered by an earlier reload of this burst.
                if request.change <= handledChange { continue }
                // File changes come in bursts (write, then rename; truncate, then write): wait
                // for a quiet moment, at most a second, so that one edit is one reload.
                let giveUpAt = ContinuousClock.now + .seconds(1)
                while ContinuousClock.now < giveUpAt {
                    let quietFor = Self.monotonicNanoseconds() - lastChangeAt.load(ordering: .relaxed)
                    if quietFor >= debounce.nanoseconds { break }
                    try? await Task.sleep(for: .nanoseconds(debounce.nanoseconds - quietFor))
                }
                handledChange = changes.load(ordering: .relaxed)
            }
            // systemd shows the unit as reloading meanwhile (RELOADING=1 must carry the
            // monotonic time), and READY=1 says the reload is over, whatever its result.
            SystemdNotify.send("RELOADING=1\nMONOTONIC_USEC=\(Self.monotonicNanoseconds() / 1000)")
            let outcome = await reloadOnce(reason: request.reason)
            let status = outcome.succeeded
                ? outcome.summary
                : "last reload failed (\(outcome.errors.count) errors); in force: \(outcome.summary)"
            SystemdNotify.send("READY=1\nSTATUS=\(status)")
            request.reply?(outcome)
            armExpiryTimer()
        }
    }

    /// Runtime overrides that carry an expiry revert by themselves: a timer for the earliest,
    /// replacing the one before (its expiry may have been changed or reverted meanwhile).
    private func armExpiryTimer() {
        let next = overlay.nextExpiry
        expiryTimer.withLockedValue { timer in
            timer?.cancel()
            timer = nil
            guard let next else { return }
            // A millisecond late rather than early: a timer that fires before the expiry
            // would find nothing to revert.
            let wait = max(0, next - Self.monotonicNanoseconds()) + 1_000_000
            timer = Task {
                try? await Task.sleep(for: .nanoseconds(wait))
                if Task.isCancelled { return }
                self.submit(Request(
                    reason: "expiry", reply: nil,
                    overlayChange: OverlayChange(mutate: { overlay, _ in
                        _ = overlay.expire(now: Self.monotonicNanoseconds())
                    }, reply: { _ in })))
            }
        }
    }

    private func applyOverlayChange(_ mutate: OverlayMutation) async -> Result<Void, RuntimeOverlay.ChangeError> {
        let files = rules
        var candidate = overlay
        do {
            try mutate(&candidate, files)
        } catch {
            return .failure(error)
        }
        guard candidate != overlay else { return .success(()) }
        do {
            try await proxy.apply(candidate.effective(files))
        } catch {
            return .failure(.invalid(field: nil, message: "\(error)"))
        }
        overlayState.withLockedValue { $0 = candidate }
        logger.info("runtime faults changed", metadata: [
            "overrides": "\(candidate.overrides.count)", "runtime.faults": "\(candidate.faults.count)",
            "runtime.listeners": "\(candidate.listeners.count)",
        ])
        return .success(())
    }

    public static func monotonicNanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    private func reloadOnce(reason: String) async -> ReloadOutcome {
        let started = ContinuousClock.now
        guard let directory else {
            logger.info("no rule folder (one-off listener); nothing to reload", metadata: ["reason": "\(reason)"])
            return record(ReloadOutcome(succeeded: true, unchanged: true, errors: [], summary: rules.summary))
        }
        switch RuleLoader.load(directory: directory) {
        case .failure(let errors):
            logger.error(
                "rules rejected; the last good rules stay in force",
                metadata: ["reason": "\(reason)", "errors": "\(errors.errors.count)"])
            for error in errors.errors { logger.error("\(error)") }
            return record(ReloadOutcome(
                succeeded: false, unchanged: false, errors: errors.errors.map(\.description), summary: rules.summary))
        case .success(let loaded):
            if loaded == rules {
                logger.info("rules unchanged", metadata: ["reason": "\(reason)"])
                return record(ReloadOutcome(succeeded: true, unchanged: true, errors: [], summary: loaded.summary))
            }
            // Runtime changes survive the reload, except those that no longer fit the files.
            var nextOverlay = overlay
            let dropped = nextOverlay.reconcile(with: loaded)
            do {
                try await proxy.apply(nextOverlay.effective(loaded))
            } catch {
                logger.error("rules rejected; the last good rules stay in force", metadata: ["error": "\(error)"])
                return record(ReloadOutcome(succeeded: false, unchanged: false, errors: ["\(error)"], summary: rules.summary))
            }
            current.withLockedValue { $0 = loaded }
            overlayState.withLockedValue { $0 = nextOverlay }
            if !dropped.isEmpty {
                logger.warning("runtime changes dropped: they no longer fit the rule files", metadata: ["faults": "\(dropped)"])
            }
            let elapsed = ContinuousClock.now - started
            logger.info(
                "rules reloaded",
                metadata: ["reason": "\(reason)", "rules": "\(loaded.summary)", "took": "\(elapsed)"])
            return record(ReloadOutcome(succeeded: true, unchanged: false, errors: [], summary: loaded.summary))
        }
    }

    private func record(_ outcome: ReloadOutcome) -> ReloadOutcome {
        if outcome.succeeded {
            reloadSuccess.increment()
            lastSuccess.set(Int64(1))
        } else {
            reloadFailure.increment()
            lastSuccess.set(Int64(0))
        }
        lastReloadTime.set(Double(ContinuousClock.now.unixSeconds))
        lastOutcome.withLockedValue { $0 = outcome }
        return outcome
    }
}

extension ContinuousClock.Instant {
    /// Wall-clock seconds now (the instant is only used to say "now").
    var unixSeconds: Double {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

#if canImport(Glibc)
import Glibc
#endif
