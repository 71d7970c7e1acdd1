import FaultlineRules

/// The faults acting on one direction of one connection, folded from the rules that fire for
/// it: what the data path consults per chunk. Several rules of one kind combine the way the
/// wire would: latencies add up, the lowest bandwidth and the smallest limit win.
public struct DirectionFaults: Sendable, Equatable {
    public var blackhole = false
    /// Latency added before each chunk (the sum of every `apply: chunk` rule).
    public var chunkLatency: [LatencyFault] = []
    /// Latency added before the first byte of the direction.
    public var firstByteLatency: [LatencyFault] = []
    public var bandwidth: Int?
    public var slicer: Slicer?
    /// After this many bytes the connection ends: with a FIN (`limit`) or an RST (`reset`).
    public var endAfterBytes: (bytes: Int, reset: Bool)?
    public var slowClose: Duration?

    public struct Slicer: Sendable, Equatable {
        public var size: Int
        public var variation: Int
        public var delay: Duration
    }

    public var isEmpty: Bool {
        !blackhole && chunkLatency.isEmpty && firstByteLatency.isEmpty && bandwidth == nil && slicer == nil
            && endAfterBytes == nil && slowClose == nil
    }

    /// True when bytes cannot go straight through (everything but slow close acts on bytes).
    public var shapesBytes: Bool {
        blackhole || !chunkLatency.isEmpty || !firstByteLatency.isEmpty || bandwidth != nil || slicer != nil
            || endAfterBytes != nil
    }

    public static func == (lhs: DirectionFaults, rhs: DirectionFaults) -> Bool {
        lhs.blackhole == rhs.blackhole && lhs.chunkLatency == rhs.chunkLatency
            && lhs.firstByteLatency == rhs.firstByteLatency && lhs.bandwidth == rhs.bandwidth
            && lhs.slicer == rhs.slicer && lhs.endAfterBytes?.bytes == rhs.endAfterBytes?.bytes
            && lhs.endAfterBytes?.reset == rhs.endAfterBytes?.reset && lhs.slowClose == rhs.slowClose
    }
}

/// A fault that ends the connection at a time: `reset` after a delay, `cut`, a blackhole's
/// `close_after`. The clock starts when the fault first reaches the connection.
public struct TimedEnd: Sendable, Equatable {
    public var rule: String
    public var after: Duration
    public var reset: Bool
}

/// What the faults in force do to one connection. Pure data, built by `FaultPlanner`.
public struct ConnectionFaultPlan: Sendable, Equatable {
    /// Reset the accepted connection before dialing (`refuse`).
    public var refuse: String?
    /// Wait this long before dialing the upstream (`latency` with `apply: connect`).
    public var connectLatency: [LatencyFault] = []
    public var upstream = DirectionFaults()
    public var downstream = DirectionFaults()
    public var timedEnds: [TimedEnd] = []
    /// The rules that act on this connection, for the injection counter.
    public var firing: [FaultRule] = []

    public func direction(upstream isUpstream: Bool) -> DirectionFaults {
        isUpstream ? upstream : downstream
    }

    /// Nothing to do: the connection runs the plain data path.
    public var isEmpty: Bool { firing.isEmpty }
}

/// Decides which faults act on a connection. Each rule's probability is drawn once per
/// connection and the draw is kept in `draws` (by rule name), so that a later change to other
/// rules never re-rolls it, and a changed probability moves the outcome consistently.
public enum FaultPlanner {
    public static func plan(
        faults: [FaultRule],
        clientAddress: [UInt8]?,
        draws: inout [String: Double],
        random: inout FaultRandom
    ) -> ConnectionFaultPlan {
        var plan = ConnectionFaultPlan()
        for rule in faults where rule.enabled && rule.targets(clientAddress: clientAddress) {
            let draw: Double
            if let kept = draws[rule.name] {
                draw = kept
            } else {
                draw = random.unit()
                draws[rule.name] = draw
            }
            guard draw < rule.probability else { continue }
            plan.firing.append(rule)
            let up = rule.direction.includes(upstream: true)
            let down = rule.direction.includes(upstream: false)
            func apply(_ change: (inout DirectionFaults) -> Void) {
                if up { change(&plan.upstream) }
                if down { change(&plan.downstream) }
            }
            switch rule.action {
            case .refuse:
                if plan.refuse == nil { plan.refuse = rule.name }
            case .latency(let latency):
                switch latency.point ?? .chunk {
                case .connect: plan.connectLatency.append(latency)
                case .first_byte: apply { $0.firstByteLatency.append(latency) }
                case .chunk: apply { $0.chunkLatency.append(latency) }
                case .request, .response: break  // HTTP listeners only (the loader sees to it)
                }
            case .bandwidth(let rate):
                apply { $0.bandwidth = min($0.bandwidth ?? .max, rate) }
            case .slicer(let size, let variation, let delay):
                apply { if $0.slicer == nil { $0.slicer = .init(size: size, variation: variation, delay: delay) } }
            case .reset(let after, let afterBytes):
                if let afterBytes {
                    apply { $0.endAfterBytes = earlierEnd($0.endAfterBytes, (afterBytes, true)) }
                } else {
                    plan.timedEnds.append(TimedEnd(rule: rule.name, after: after, reset: true))
                }
            case .limit(let bytes):
                apply { $0.endAfterBytes = earlierEnd($0.endAfterBytes, (bytes, false)) }
            case .blackhole(let closeAfter):
                apply { $0.blackhole = true }
                if let closeAfter {
                    plan.timedEnds.append(TimedEnd(rule: rule.name, after: closeAfter, reset: false))
                }
            case .cut(let after, let mode):
                plan.timedEnds.append(TimedEnd(rule: rule.name, after: after, reset: mode == .reset))
            case .slowClose(let delay):
                apply { $0.slowClose = max($0.slowClose ?? .zero, delay) }
            case .abort:
                break  // HTTP listeners only (the loader sees to it)
            case .certificate, .handshake:
                break  // chosen when the TLS handshake is set up (TLSContexts)
            }
        }
        return plan
    }

    private static func earlierEnd(_ current: (bytes: Int, reset: Bool)?, _ new: (Int, Bool)) -> (bytes: Int, reset: Bool) {
        guard let current else { return new }
        return new.0 < current.bytes ? new : current
    }
}
