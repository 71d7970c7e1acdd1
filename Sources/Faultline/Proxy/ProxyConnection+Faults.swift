import FaultlineRules
import NIOCore

/// The state of one direction of a connection while faults act on it: the chunks read but not
/// yet passed on, and what the faults have done so far. Reads in the direction go on while the
/// queue holds less than `readAheadBytes` (and `readAheadChunks`), then stop until it drains
/// below that: back-pressure holds through every fault and a delayed byte is never an
/// unbounded buffer, yet chunks that arrive within one latency window each wait the latency
/// from their own arrival, as with Toxiproxy, instead of one after another (a response read
/// in three chunks is delayed once, not three times).
struct FlowState {
    static let readAheadBytes = 64 * 1024
    static let readAheadChunks = 32

    struct PendingChunk {
        var buffer: ByteBuffer
        /// Not before this instant (latency).
        var releaseAt: NIODeadline?
    }

    var faults = DirectionFaults()
    var queue = CircularBuffer<PendingChunk>(initialCapacity: 4)
    /// Bytes in `queue`.
    var queuedBytes = 0
    var mayReadAhead: Bool { queue.count < Self.readAheadChunks && queuedBytes < Self.readAheadBytes }
    /// The pump is waiting for this timer (latency, bandwidth pacing, a slicer's gap).
    var timer: Scheduled<Void>?
    /// Bytes taken into the direction, for `limit` and `reset.after_bytes`.
    var taken = 0
    var firstByteTaken = false
    /// Bandwidth pacing: the next write may start at this instant.
    var nextWriteAt = NIODeadline.uptimeNanoseconds(0)
    /// The byte limit was reached: the connection ends (reset or not) once the queue drains.
    var endWhenDrained: Bool?
    /// A FIN arrived while chunks were waiting: forward it after them.
    var finPending = false
}

extension ProxyConnection {
    // MARK: Deciding

    /// Accept-time decisions: refuse, blackhole without an upstream, latency on connect.
    func startWithFaults() {
        applyFaults(atAccept: true)
        if plan.refuse != nil {
            state = .closed
            if let clientChannel { Self.reset(clientChannel) }
            return
        }
        if plan.upstream.blackhole {
            // Nothing the client sends would reach the service: do not dial at all, so that the
            // client hangs even when the service is down. Its bytes are read and dropped.
            state = .blackholed
            clientHandler?.resumeReading()
            return
        }
        if !plan.connectLatency.isEmpty {
            let delay = plan.connectLatency.reduce(Int64(0)) { $0 + LatencySampler.sample($1, using: &tracker.random) }
            dialTimer = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay)) { [self] in
                dialTimer = nil
                if state == .dialing, clientActive { dialUpstream() }
            }
            return
        }
        dialUpstream()
    }

    /// The rules changed: byte faults follow the new rules at once; decisions about the
    /// connection as a whole (refuse, latency on connect, each rule's draw) stay as made.
    func rulesChanged(_ configuration: ListenerConfiguration) {
        guard !finished, !isTunnel else { return }
        faultConfiguration = configuration
        applyFaults(atAccept: false)
        pump(.upstream)
        pump(.downstream)
        clientHandler?.resumeReading()
        upstreamHandler?.resumeReading()
    }

    private func applyFaults(atAccept: Bool) {
        let address = clientChannel?.remoteAddress?.addressBytes
        var newPlan = FaultPlanner.plan(
            faults: faultConfiguration.faults, clientAddress: address, draws: &draws, random: &tracker.random)
        if !atAccept {
            newPlan.refuse = nil
            newPlan.connectLatency = []
        }
        for rule in newPlan.firing where !counted.contains(rule.name) {
            if !atAccept, case .refuse = rule.action { continue }
            if !atAccept, case .latency(let latency) = rule.action, latency.point == .connect { continue }
            counted.insert(rule.name)
            faultConfiguration.injections(rule).increment()
        }
        flows[0].faults = newPlan.upstream
        flows[1].faults = newPlan.downstream
        // Timed ends start when their rule first reaches the connection, and stop with it.
        let wanted = Dictionary(newPlan.timedEnds.map { ($0.rule, $0) }, uniquingKeysWith: { first, _ in first })
        for (rule, timer) in timedEnds where wanted[rule] == nil {
            timer.cancel()
            timedEnds[rule] = nil
        }
        for (rule, end) in wanted where timedEnds[rule] == nil {
            timedEnds[rule] = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(end.after.nanoseconds)) { [self] in
                timedEnds[rule] = nil
                endBoth(reset: end.reset)
            }
        }
        plan = newPlan
    }

    /// A fault acts on the connection, or chunks queued by one still wait (the rule may have
    /// been removed since): either way bytes go through the fault pump, so that none
    /// overtakes a queued one and no FIN overtakes a byte.
    var faultPathActive: Bool {
        !plan.isEmpty || !flows[0].queue.isEmpty || !flows[1].queue.isEmpty
    }

    // MARK: Reading

    func mayReadWithFaults(_ side: ProxySide) -> Bool {
        let flow = flows[side.outgoingDirection.index]
        if flow.faults.blackhole { return true }  // read and drop: memory stays flat
        guard flow.mayReadAhead, flow.endWhenDrained == nil else { return false }
        return handler(side.partner)?.isWritable ?? false
    }

    /// A chunk for a direction that faults act on.
    func enqueue(_ buffer: ByteBuffer, direction: FlowDirection) {
        let index = direction.index
        if flows[index].faults.blackhole || flows[index].endWhenDrained != nil { return }
        var chunk = buffer
        if let end = flows[index].faults.endAfterBytes {
            let allowed = end.bytes - flows[index].taken
            if chunk.readableBytes >= allowed {
                chunk = chunk.getSlice(at: chunk.readerIndex, length: max(0, allowed))!
                flows[index].endWhenDrained = end.reset
            }
        }
        flows[index].taken += chunk.readableBytes
        var delay: Int64 = 0
        for latency in flows[index].faults.chunkLatency {
            delay += LatencySampler.sample(latency, using: &tracker.random)
        }
        if !flows[index].firstByteTaken {
            flows[index].firstByteTaken = true
            for latency in flows[index].faults.firstByteLatency {
                delay += LatencySampler.sample(latency, using: &tracker.random)
            }
        }
        let releaseAt: NIODeadline? = delay > 0 ? .now() + .nanoseconds(delay) : nil
        flows[index].queue.append(FlowState.PendingChunk(buffer: chunk, releaseAt: releaseAt))
        flows[index].queuedBytes += chunk.readableBytes
        pump(direction)
    }

    /// Moves waiting chunks on as far as the faults allow, then arms a timer for the rest.
    func pump(_ direction: FlowDirection) {
        let index = direction.index
        guard flows[index].timer == nil, let target = handler(direction.target) else { return }
        var wrote = false
        defer { if wrote { target.flush() } }
        while var head = flows[index].queue.first {
            let now = NIODeadline.now()
            let hasLatency = !flows[index].faults.chunkLatency.isEmpty || !flows[index].faults.firstByteLatency.isEmpty
            if hasLatency, let releaseAt = head.releaseAt, releaseAt > now {
                armPumpTimer(direction, at: releaseAt)
                return
            }
            guard target.isWritable else { return }  // writability comes back through writabilityChanged
            var length = head.buffer.readableBytes
            if let slicer = flows[index].faults.slicer {
                let variation = slicer.variation > 0 ? Int(tracker.random.next() % UInt64(2 * slicer.variation + 1)) - slicer.variation : 0
                length = min(length, max(1, slicer.size + variation))
            }
            if let rate = flows[index].faults.bandwidth {
                if flows[index].nextWriteAt > now {
                    armPumpTimer(direction, at: flows[index].nextWriteAt)
                    return
                }
                // Writes of at most 1/20 s worth: the rate holds over any window longer than that.
                length = min(length, max(1, min(65536, rate / 20)))
                let start = max(now, flows[index].nextWriteAt)
                flows[index].nextWriteAt = start + .nanoseconds(Int64(Double(length) / Double(rate) * 1e9))
            }
            let piece = head.buffer.readSlice(length: length)!
            target.write(piece)
            wrote = true
            flows[index].queuedBytes -= length
            if head.buffer.readableBytes == 0 {
                flows[index].queue.removeFirst()
                // Below the read-ahead bound again: the source may go on reading.
                let source = direction.target.partner
                if !flows[index].queue.isEmpty, mayRead(source) { handler(source)?.resumeReading() }
            } else {
                flows[index].queue[flows[index].queue.startIndex] = head
            }
            if let slicer = flows[index].faults.slicer, !flows[index].queue.isEmpty, slicer.delay > .zero {
                target.flush()
                wrote = false
                armPumpTimer(direction, at: .now() + .nanoseconds(slicer.delay.nanoseconds))
                return
            }
        }
        drained(direction)
    }

    private func armPumpTimer(_ direction: FlowDirection, at deadline: NIODeadline) {
        let index = direction.index
        flows[index].timer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            flows[index].timer = nil
            pump(direction)
        }
    }

    /// The queue of a direction is empty: end the connection if a limit says so, forward a FIN
    /// that waited, and let the source read again.
    private func drained(_ direction: FlowDirection) {
        let index = direction.index
        if let reset = flows[index].endWhenDrained {
            flows[index].endWhenDrained = nil
            flows[index].faults.blackhole = true  // nothing more passes in this direction
            endBoth(reset: reset)
            return
        }
        if flows[index].finPending {
            flows[index].finPending = false
            forwardFIN(to: direction.target)
        }
        handler(direction.target.partner)?.resumeReading()
    }

    /// True when the FIN from `side` must not be forwarded now: a blackhole swallows it, or
    /// chunks still wait in the queue before it.
    func finHeldByFaults(from side: ProxySide) -> Bool {
        let index = side.outgoingDirection.index
        if flows[index].faults.blackhole { return true }
        if !flows[index].queue.isEmpty {
            flows[index].finPending = true
            return true
        }
        return false
    }

    // MARK: Timers

    func scheduleFaultTimer(after delay: Duration, _ body: @escaping (ProxyConnection) -> Void) {
        let key = "fin.\(timedEnds.count)"
        timedEnds[key] = eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay.nanoseconds)) { [self] in
            timedEnds[key] = nil
            body(self)
        }
    }

    func cancelFaultTimers() {
        if !timedEnds.isEmpty {
            for timer in timedEnds.values { timer.cancel() }
            timedEnds = [:]
        }
        // Only written when set: a write would copy the shared idle states.
        for index in flows.indices where flows[index].timer != nil {
            flows[index].timer?.cancel()
            flows[index].timer = nil
        }
        dialTimer?.cancel()
        dialTimer = nil
    }
}

extension SocketAddress {
    /// The IP address as 4 or 16 bytes in network order, for CIDR matching.
    var addressBytes: [UInt8]? {
        switch self {
        case .v4(let address):
            return withUnsafeBytes(of: address.address.sin_addr) { Array($0) }
        case .v6(let address):
            return withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
        default:
            return nil
        }
    }
}
