import FaultlineRules
import Logging
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// One proxied connection: the accepted client channel and the upstream channel dialed for
/// it. Both channels live on the same event loop (the upstream is dialed on the client's
/// loop), so all state here is confined to that loop and nothing is locked.
///
/// Life: accepted → dialing (client reads held) → open (bytes flow both ways, each direction
/// gated by the other side's writability) → half-closed as each side sends FIN → closed.
final class ProxyConnection: TrackedConnection {
    enum State {
        case dialing
        case open
        /// A blackhole took the connection at accept: no upstream, client bytes read and dropped.
        case blackholed
        case closed
    }

    let id: UInt64
    let eventLoop: EventLoop
    let listener: ListenerConfiguration
    let tracker: ConnectionTracker
    /// The listener's logger; the connection id is added only to lines actually logged, so
    /// that accepting a connection does not copy a metadata dictionary.
    let logger: Logger

    var state: State = .dialing
    var clientHandler: ProxySideHandler?
    var upstreamHandler: ProxySideHandler?
    var clientChannel: Channel?
    var upstreamChannel: Channel?
    var clientActive = false
    var upstreamActive = false

    /// A FIN was forwarded to (the output of) that side.
    private var finForwardedToClient = false
    private var finForwardedToUpstream = false
    /// That side sent FIN (NIO has shut the channel's input).
    private var clientInputClosed = false
    private var upstreamInputClosed = false
    /// An error other than end-of-file was seen on that side.
    private var clientErrored = false
    private var upstreamErrored = false
    /// ECONNRESET seen on that side: the partner is reset too, not closed politely.
    private var resetOn: ProxySide?
    var finished = false

    private let acceptedAt = NIODeadline.now()
    private var bytesUpstream: Int64 = 0
    private var bytesDownstream: Int64 = 0
    private var idle = IdleTimer()

    // Faults (see ProxyConnection+Faults.swift). Empty for a listener without fault rules.
    /// What the faults in force do to this connection.
    var plan = ConnectionFaultPlan()
    /// Each rule's probability draw, kept for the connection's life.
    var draws: [String: Double] = [:]
    /// Rules already counted as injected on this connection.
    var counted: Set<String> = []
    /// The rules this connection follows, with their injection counters; replaced when the
    /// rules change (the rest of `listener`, such as the upstream, stays as accepted).
    var faultConfiguration: ListenerConfiguration
    /// Per direction: index 0 is upstream (client to service), 1 downstream.
    /// Starts as a shared copy of two empty states (a retain, not three allocations and the
    /// generic metadata look-ups they bring); copied on the first write, when faults apply.
    var flows = ProxyConnection.idleFlows
    private static let idleFlows = [FlowState(), FlowState()]
    var timedEnds: [String: Scheduled<Void>] = [:]
    var dialTimer: Scheduled<Void>?

    init(id: UInt64, clientChannel: Channel, listener: ListenerConfiguration, tracker: ConnectionTracker, logger: Logger) {
        self.id = id
        self.eventLoop = clientChannel.eventLoop
        self.clientChannel = clientChannel
        self.listener = listener
        self.tracker = tracker
        self.logger = logger
        self.faultConfiguration = listener
    }

    /// A WebSocket (or other `Upgrade`) connection handed over by an http listener after the
    /// upstream's `101`: bytes both ways, no faults.
    private(set) var isTunnel = false

    /// Takes over two connected channels whose HTTP handlers are being removed: installs the
    /// byte-forwarding handlers, and reading resumes on both.
    func adoptTunnel(client: Channel, upstream: Channel) throws {
        isTunnel = true
        clientActive = true
        upstreamActive = true
        state = .open
        upstreamChannel = upstream
        let clientSide = ProxySideHandler(side: .client, connection: self)
        let upstreamSide = ProxySideHandler(side: .upstream, connection: self)
        clientHandler = clientSide
        upstreamHandler = upstreamSide
        tracker.add(self, isNew: false)
        try client.pipeline.syncOperations.addHandler(clientSide)
        try upstream.pipeline.syncOperations.addHandler(upstreamSide)
    }

    /// Installs the client-side handler; called from the accepted channel's initializer.
    func attachClient(to channel: Channel) throws {
        let handler = ProxySideHandler(side: .client, connection: self)
        clientHandler = handler
        try channel.pipeline.syncOperations.addHandler(handler)
    }

    // MARK: Events from the side handlers

    func sideBecameActive(_ side: ProxySide) {
        switch side {
        case .client:
            clientActive = true
            tracker.add(self)
            if !listener.faults.isEmpty { startWithFaults() } else { dialUpstream() }
        case .upstream:
            upstreamActive = true
        }
    }

    func mayRead(_ side: ProxySide) -> Bool {
        switch state {
        case .open:
            guard faultPathActive else { return handler(side.partner)?.isWritable ?? false }
            return mayReadWithFaults(side)
        case .blackholed:
            return side == .client
        case .dialing, .closed:
            return false
        }
    }

    func forward(_ buffer: ByteBuffer, from side: ProxySide) {
        idle.activity()
        let count = Int64(buffer.readableBytes)
        // Counted in plain loop-confined integers; the metrics endpoint folds the loop's
        // totals into the shared counters when it is scraped (no atomic per chunk).
        switch side {
        case .client:
            bytesUpstream &+= count
            tracker.bytesUpstream &+= count
        case .upstream:
            bytesDownstream &+= count
            tracker.bytesDownstream &+= count
        }
        // The plain path: no fault acts on this direction and nothing is waiting before it
        // (chunks queued under rules that were just removed still go first).
        let flow = side.outgoingDirection.index
        if flows[flow].queue.isEmpty && (plan.isEmpty || !flows[flow].faults.shapesBytes) {
            handler(side.partner)?.write(buffer)
        } else {
            enqueue(buffer, direction: side.outgoingDirection)
        }
    }

    func readComplete(from side: ProxySide) {
        // With chunks waiting in a fault's queue, the pump flushes what it writes.
        handler(side.partner)?.flush()
    }

    func writabilityChanged(_ side: ProxySide, isWritable: Bool) {
        guard isWritable else { return }
        // A fault's queue towards this side may go on; then the partner's held reads.
        if faultPathActive { pump(side.partner.outgoingDirection) }
        handler(side.partner)?.resumeReading()
    }

    /// The side sent FIN: forward it to the partner, after any bytes still waiting in a
    /// fault's queue (and not at all through a blackhole).
    func inputClosed(_ side: ProxySide) {
        if side == .client { clientInputClosed = true } else { upstreamInputClosed = true }
        if faultPathActive, finHeldByFaults(from: side) { return }
        forwardFIN(to: side.partner)
    }

    func errorCaught(_ error: any Error, on side: ProxySide) {
        if let ioError = error as? IOError, ioError.errnoCode == ECONNRESET || ioError.errnoCode == EPIPE {
            if resetOn == nil { resetOn = side }
        } else if side == .upstream, UpstreamTLSFailure.reason(error) != nil {
            // Connected, but no TLS: a failed dial, as the client and the metrics see it.
            listener.metrics.connectFailures(.tls).increment()
            tracker.upstreamFailures.failed(
                UpstreamFailureReason.tls.rawValue, error: error, connection: id, upstream: "\(listener.rule.upstream)",
                message: "upstream TLS handshake failed; closing client", logger: logger)
        } else if !(error is ChannelError) {
            logger.debug("connection error", metadata: ["conn.id": "\(id)", "side": "\(side)", "error": "\(error)"])
        }
        failed(side)
        channel(side)?.close(promise: nil)
    }

    func sideBecameInactive(_ side: ProxySide) {
        switch side {
        case .client: clientActive = false
        case .upstream: upstreamActive = false
        }
        // A side that closes without an error was closed by its peer with a FIN (NIO turns
        // "FIN after our own output was shut" straight into a full close, without an
        // inputClosed event): the partner gets that FIN after everything queued for it.
        // A reset is passed on as a reset, so that the client sees what the service did.
        if isActive(side.partner), let partner = channel(side.partner) {
            if resetOn != nil {
                Self.reset(partner)
            } else if sideFailed(side) || state != .open {
                partner.close(promise: nil)
            } else if !faultPathActive || !finHeldByFaults(from: side) {
                forwardFIN(to: side.partner)
            }
        }
        if !clientActive && !upstreamActive { finish() }
    }

    /// Shuts the output of `side` once everything queued for it has been written.
    func forwardFIN(to side: ProxySide) {
        guard !finForwarded(side) else { return }
        setFINForwarded(side)
        // Slow close: the FIN towards this side waits (cancelled if the connection ends first).
        if !plan.isEmpty, let delay = flows[side.partner.outgoingDirection.index].faults.slowClose, delay > .zero {
            scheduleFaultTimer(after: delay) { connection in connection.shutOutput(of: side) }
            return
        }
        shutOutput(of: side)
    }

    private func shutOutput(of side: ProxySide) {
        guard let target = channel(side), let context = handler(side)?.context else {
            // Not connected (yet): nothing can be forwarded, end the connection.
            closeAll()
            return
        }
        let inputOpen = side == .client ? !clientInputClosed : !upstreamInputClosed
        if inputOpen {
            // NIO shuts the output only once the writes queued before are written.
            context.flush()
            target.close(mode: .output, promise: nil)
            return
        }
        // The side sent its own FIN first: NIO turns this half-close into a full close, which
        // would drop queued writes. With none queued, that full close is all there is to do;
        // otherwise an empty write completes after every write queued before it, and only
        // then is the output shut.
        if let options = target.syncOptions, (try? options.getOption(.bufferedWritableBytes)) == 0 {
            target.close(mode: .output, promise: nil)
            return
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(ByteBuffer()), promise: written)
        written.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success: target.close(mode: .output, promise: nil)
            case .failure: target.close(promise: nil)
            }
        }
    }

    // MARK: Upstream

    func dialUpstream() {
        let loopBoundSelf = NIOLoopBound(self, eventLoop: eventLoop)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.nanoseconds(listener.rule.connectTimeout.nanoseconds))
            // TCP_NODELAY is NIO's default for client channels too. Half-closure is set by the
            // initializer: a bootstrap option would cost a future and a dynamic cast more.
            .channelInitializer { channel in
                // Runs on this connection's loop: the bootstrap's group is that loop.
                let connection = loopBoundSelf.value
                let handler = ProxySideHandler(side: .upstream, connection: connection)
                connection.upstreamHandler = handler
                connection.upstreamChannel = channel
                return channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                    if let tls = connection.listener.upstreamTLS {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls.context, serverHostname: tls.serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let connected = listener.upstream.connect(bootstrap, on: eventLoop)
        connected.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                self.upstreamConnected(channel)
            case .failure(let error):
                self.dialFailed(error)
            }
        }
    }

    private func upstreamConnected(_ channel: Channel) {
        guard state == .dialing, clientActive else {
            // The client left while we were dialing.
            channel.close(promise: nil)
            return
        }
        state = .open
        clientHandler?.resumeReading()
        upstreamHandler?.resumeReading()
    }

    /// Ends both sides now: with RSTs, or with FINs after what is queued.
    func endBoth(reset: Bool) {
        if reset {
            if let clientChannel { Self.reset(clientChannel) }
            if let upstreamChannel { Self.reset(upstreamChannel) }
            state = .closed
        } else {
            forwardFIN(to: .client)
            forwardFIN(to: .upstream)
        }
    }

    private func dialFailed(_ error: any Error) {
        let reason = UpstreamFailureReason(error)
        listener.metrics.connectFailures(reason).increment()
        tracker.upstreamFailures.failed(
            reason.rawValue, error: error, connection: id, upstream: "\(listener.rule.upstream)",
            message: "upstream connect failed; closing client", logger: logger)
        upstreamHandler = nil
        upstreamChannel = nil
        state = .closed
        clientChannel?.close(promise: nil)
    }

    // MARK: Closing

    /// Closes both sides now (idle timeout, end of the drain period).
    func closeAll() {
        state = .closed
        clientChannel?.close(promise: nil)
        upstreamChannel?.close(promise: nil)
    }

    /// Called by the loop's idle sweep, four times per idle timeout: a connection with no byte
    /// in four sweeps in a row has been silent for at least one idle period, and is closed.
    func idleSweep() {
        if idle.sweep() {
            logger.debug("idle timeout; closing", metadata: ["conn.id": "\(id)"])
            closeAll()
        }
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        state = .closed
        cancelFaultTimers()
        tracker.remove(self)
        let lifetime = NIODeadline.now() - acceptedAt
        listener.metrics.duration.recordNanoseconds(lifetime.nanoseconds)
        if logger.logLevel <= .trace {
            logger.trace(
                "connection closed",
                metadata: [
                    "conn.id": "\(id)", "bytes.upstream": "\(bytesUpstream)", "bytes.downstream": "\(bytesDownstream)",
                ])
        }
        // Break the handler <-> connection cycle.
        clientHandler = nil
        upstreamHandler = nil
        clientChannel = nil
        upstreamChannel = nil
    }

    /// Sends RST instead of FIN: SO_LINGER with a zero timeout, then close.
    static func reset(_ channel: Channel) {
        guard let provider = channel as? SocketOptionProvider else {
            channel.close(promise: nil)
            return
        }
        provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    // MARK: Helpers

    func handler(_ side: ProxySide) -> ProxySideHandler? {
        side == .client ? clientHandler : upstreamHandler
    }

    func channel(_ side: ProxySide) -> Channel? {
        side == .client ? clientChannel : upstreamChannel
    }

    private func finForwarded(_ side: ProxySide) -> Bool {
        side == .client ? finForwardedToClient : finForwardedToUpstream
    }

    private func setFINForwarded(_ side: ProxySide) {
        if side == .client { finForwardedToClient = true } else { finForwardedToUpstream = true }
    }

    private func sideFailed(_ side: ProxySide) -> Bool {
        side == .client ? clientErrored : upstreamErrored
    }

    private func failed(_ side: ProxySide) {
        if side == .client { clientErrored = true } else { upstreamErrored = true }
    }

    private func isActive(_ side: ProxySide) -> Bool {
        side == .client ? clientActive : upstreamActive
    }

    /// Bytes queued in NIO's outbound buffers of both channels: what the proxy holds.
    var bufferedBytes: Int {
        func buffered(_ channel: Channel?) -> Int {
            guard let options = channel?.syncOptions else { return 0 }
            return (try? options.getOption(.bufferedWritableBytes)) ?? 0
        }
        func queued(_ flow: FlowState) -> Int {
            flow.queue.reduce(0) { $0 + $1.buffer.readableBytes }
        }
        return buffered(clientChannel) + buffered(upstreamChannel) + queued(flows[0]) + queued(flows[1])
    }
}

/// Why dialing the upstream failed, as a metric label: a small fixed set.
enum UpstreamFailureReason: String, CaseIterable, Sendable {
    case refused
    case unreachable
    case timeout
    case resolve
    /// Connected, but the TLS handshake with the upstream failed (`upstream_tls`).
    case tls
    case other

    init(_ error: any Error) {
        if UpstreamTLSFailure.reason(error) != nil {
            self = .tls
            return
        }
        if let error = error as? ChannelError, case .connectTimeout = error {
            self = .timeout
            return
        }
        if let error = error as? NIOConnectionError {
            if error.dnsAAAAError != nil || error.dnsAError != nil, error.connectionErrors.isEmpty {
                self = .resolve
                return
            }
            if let first = error.connectionErrors.first?.error {
                self = UpstreamFailureReason(first)
                return
            }
            self = .other
            return
        }
        if let error = error as? IOError {
            switch error.errnoCode {
            case ECONNREFUSED: self = .refused
            case ENETUNREACH, EHOSTUNREACH, EHOSTDOWN, ENETDOWN: self = .unreachable
            case ETIMEDOUT: self = .timeout
            default: self = .other
            }
            return
        }
        self = .other
    }
}
