import NIOConcurrencyHelpers
import Prometheus

/// One metric series (or the series of one histogram), as swift-prometheus hands it out.
enum SeriesHandle: Sendable {
    case counter(Counter)
    case gauge(Gauge)
    case histogram(DurationHistogram)
}

/// Drops the series of listeners and fault rules that have left the rules, `retention` after
/// they left, so that a long-running daemon whose experiment runners (or Toxiproxy clients)
/// make a new fault or proxy every run does not export every one of them for ever. Until then
/// scrapes still see their last counts.
///
/// Series are grouped by owner: `["listener", name]`, `["http", name]`, `["tls", name]` and
/// `["fault", listener, fault, kind, source]`, the second element always the listener. Every
/// rules change asks for the series of everything in force again (between `applying` and
/// `applied`); what was not asked for has left.
final class SeriesRetirement: Sendable {
    struct Entry {
        var handles: [SeriesHandle]
        var applied: UInt64
        var retiredAt: ContinuousClock.Instant?
    }

    struct Table {
        var generation: UInt64 = 0
        var entries: [[String]: Entry] = [:]
    }

    let retention: Duration
    private let registry: PrometheusCollectorRegistry
    private let table = NIOLockedValueBox(Table())

    init(registry: PrometheusCollectorRegistry, retention: Duration) {
        self.registry = registry
        self.retention = retention
    }

    /// Records the handles of `owner` as in force (made or found again by the registry, which
    /// gives the same handle for the same labels). `make` runs under the lock, so that a
    /// series made again cannot be dropped between its making and its recording.
    func inForce<T>(_ owner: [String], make: () -> (T, [SeriesHandle])) -> T {
        table.withLockedValue { table in
            let (value, handles) = make()
            table.entries[owner] = Entry(handles: handles, applied: table.generation)
            return value
        }
    }

    /// Rules are about to be applied.
    func applying() {
        table.withLockedValue { $0.generation += 1 }
    }

    /// The rules were applied in full: owners not asked for since `applying` have left.
    func applied(now: ContinuousClock.Instant = .now) {
        table.withLockedValue { table in
            for (owner, entry) in table.entries where entry.applied != table.generation && entry.retiredAt == nil {
                table.entries[owner]?.retiredAt = now
            }
        }
    }

    /// Unregisters what left longer than `retention` ago, except the series of `draining`
    /// listeners (removed, with connections still open that count on them). A connection on
    /// an old rule may still count on a dropped handle: harmless, it is no longer exported.
    func dropExpired(now: ContinuousClock.Instant = .now, draining: Set<String> = []) {
        table.withLockedValue { table in
            for (owner, entry) in table.entries {
                guard let retiredAt = entry.retiredAt, now - retiredAt >= retention, !draining.contains(owner[1]) else { continue }
                for handle in entry.handles {
                    switch handle {
                    case .counter(let counter): registry.unregisterCounter(counter)
                    case .gauge(let gauge): registry.unregisterGauge(gauge)
                    case .histogram(let histogram): registry.unregisterDurationHistogram(histogram)
                    }
                }
                table.entries[owner] = nil
            }
        }
    }
}
