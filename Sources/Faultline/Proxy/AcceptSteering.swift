import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Which event loop takes a new connection. Every listener has a socket per loop in one
/// SO_REUSEPORT group, and by default the kernel hashes each connection to one of them, so
/// that every loop has a share of the connections however light the load. A loop with little
/// to do sleeps in epoll_wait between events and is woken for each: on a machine the proxy
/// shares with its clients and its service, those sleeps and wake-ups cost more CPU per
/// request than the forwarding (0.5-0.8 context switches per keep-alive request with two
/// loops, 0.33 with one; HAProxy's one thread, 0.2).
///
/// So new connections fill one loop first: while no loop is busy, a one-instruction BPF
/// program makes the group pick its first socket for every connection; once a loop's thread
/// has used more than `busyAbove` of a core for `busyWindows` windows in a row, the program
/// gives the choice back to the kernel's hash, and all loops share new connections until every
/// loop is below `idleBelow` again. Connections stay on the loop that accepted them either way.
///
/// Busy means busy for a while: one loop carrying 64 keep-alive connections at three quarters
/// of a core goes above 90 % for a window now and then, and a single such window would spread
/// the connections a client opens next over both loops.
///
/// Each loop measures its own thread's CPU time at the end of NIO's ticks (the group's
/// metrics delegate) over windows of `window`, and reports it once per window: the lock is
/// taken ten times a second per working loop, never per event. A loop that has not reported
/// for `staleAfter` had no events to handle: it counts as idle. A loop with no events has no
/// ticks either, so while connections are spread a timer on a listener's loop looks again
/// every window: a load that stops lets the next burst of connections fill one loop, instead
/// of leaving the group spread until a loop next has work (after 3 s of new-connection load
/// and a 1 s pause, the next client's 64 keep-alive connections were split over both loops in
/// 4 of 6 runs without the timer and the streak, 0 of 6 with them). Programs are set under
/// the lock, so that the last one set is the one the state says.
public final class AcceptSteering: NIOEventLoopMetricsDelegate, Sendable {
    public static let busyAbove = 0.9
    public static let busyWindows = 3
    public static let idleBelow = 0.25
    public static let window = TimeAmount.milliseconds(100)
    public static let staleAfter = TimeAmount.milliseconds(300)

    private struct State {
        /// Each loop's share of a core in its last window, when it reported it, and how many
        /// windows in a row up to that one it was above `busyAbove`.
        var loads: [Int: (share: Double, at: NIODeadline, busyStreak: Int)] = [:]
        var nextLoopSlot = 0
        /// Connections go to the group's first socket (false: the kernel's hash).
        var fillFirst = true
        /// How often connections went from one loop to every loop (for tests and logs).
        var spreads = 0
        /// The first socket of each listener: setting the program on one sets it for its group.
        var listeners: [ObjectIdentifier: Channel] = [:]
        /// While spread: looks again every window, for a group whose loops went quiet.
        var quietCheck: RepeatedTask?

        /// Whether connections are to be spread now: while they fill one loop, once a loop has
        /// been busy for `busyWindows` windows; once spread, while a loop is above `idleBelow`.
        /// A loop that has not reported for `staleAfter` counts as idle.
        func spreadWanted(at now: NIODeadline) -> Bool {
            loads.values.contains { load in
                guard now - load.at < AcceptSteering.staleAfter else { return false }
                return fillFirst
                    ? load.busyStreak >= AcceptSteering.busyWindows
                    : load.share > AcceptSteering.idleBelow
            }
        }

        /// What the group of `channel` is to do. While a listener replacing another on the
        /// same address binds beside it, the group holds both, and its first socket is the old
        /// one's, about to close: the group hashes, as it did before steering, until one is left.
        func fillsFirst(_ channel: Channel) -> Bool {
            guard fillFirst else { return false }
            let address = channel.localAddress
            return !listeners.values.contains { $0 !== channel && $0.localAddress == address }
        }
    }

    private let state = NIOLockedValueBox(State())
    private let windows = ThreadSpecificVariable<LoopLoadWindow>()
    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    /// Whether new connections fill one loop first now.
    public var fillsFirst: Bool { state.withLockedValue { $0.fillFirst } }

    /// How often new connections have gone from one loop to every loop since the start.
    var spreads: Int { state.withLockedValue { $0.spreads } }

    // MARK: Listeners

    /// A listener is bound on every loop: its group follows the current choice.
    func register(_ channel: Channel) {
        state.withLockedValue { state in
            state.listeners[ObjectIdentifier(channel)] = channel
            apply(fillFirst: state.fillsFirst(channel), to: channel)
        }
    }

    /// The listener stops accepting; a listener left alone on its address takes the choice in force.
    func unregister(_ channel: Channel) {
        let address = channel.localAddress
        state.withLockedValue { state in
            state.listeners.removeValue(forKey: ObjectIdentifier(channel))
            for other in state.listeners.values where other.localAddress == address {
                apply(fillFirst: state.fillsFirst(other), to: other)
            }
        }
    }

    // MARK: Loads

    public func processedTick(info: NIOEventLoopTickInfo) {
        let window: LoopLoadWindow
        if let current = windows.currentValue {
            window = current
        } else {
            let slot = state.withLockedValue { state in
                defer { state.nextLoopSlot += 1 }
                return state.nextLoopSlot
            }
            window = LoopLoadWindow(slot: slot)
            windows.currentValue = window
        }
        guard let share = window.tickEnded(at: info.endTime, cpu: LoopLoadWindow.threadCPUNanoseconds) else { return }
        report(loop: window.slot, share: share, at: info.endTime)
    }

    /// A loop's share of a core over its last window; the program changes when the answer
    /// for the group does (see `State.spreadWanted`).
    func report(loop slot: Int, share: Double, at now: NIODeadline) {
        let changed: Bool? = state.withLockedValue { state in
            // A streak broken by a quiet spell (no report for `staleAfter`) starts again.
            let previous = state.loads[slot].flatMap { now - $0.at < Self.staleAfter ? $0.busyStreak : nil } ?? 0
            let streak = share > Self.busyAbove ? previous + 1 : 0
            state.loads[slot] = (share, now, streak)
            return decide(&state, at: now)
        }
        log(changed)
    }

    /// Looks again without a new report: loops that went quiet have stopped reporting.
    func reevaluate(at now: NIODeadline) {
        log(state.withLockedValue { decide(&$0, at: now) })
    }

    /// Sets the programs when the answer changes; returns the new `fillFirst`, or nil.
    private func decide(_ state: inout State, at now: NIODeadline) -> Bool? {
        let spread = state.spreadWanted(at: now)
        guard spread == state.fillFirst else { return nil }
        state.fillFirst = !spread
        if spread { state.spreads += 1 }
        for channel in state.listeners.values { apply(fillFirst: state.fillsFirst(channel), to: channel) }
        state.quietCheck?.cancel()
        state.quietCheck = nil
        if spread, let loop = state.listeners.values.first?.eventLoop {
            state.quietCheck = loop.scheduleRepeatedTask(initialDelay: Self.window, delay: Self.window) { [weak self] _ in
                self?.reevaluate(at: .now())
            }
        }
        return state.fillFirst
    }

    private func log(_ changed: Bool?) {
        guard let changed else { return }
        logger.debug("new connections \(changed ? "fill one event loop first" : "spread over every event loop")")
    }

    private func apply(fillFirst: Bool, to channel: Channel) {
        let logger = logger
        ReusePortProgram.attach(firstSocket: fillFirst, to: channel).whenFailure { error in
            // Without the program the kernel keeps hashing: every loop takes connections.
            logger.debug("cannot steer new connections", metadata: ["error": "\(error)"])
        }
    }
}

/// One loop's CPU time over windows of wall time. Only ever touched by its own loop's thread.
///
/// NIO's ticks time only the tasks a loop runs, not the I/O it handles, so the share of a
/// window the loop was working is the thread's own CPU time (one clock_gettime per window,
/// and none at all while the loop sleeps: without events there are no ticks).
final class LoopLoadWindow: @unchecked Sendable {
    let slot: Int
    private var windowStart: NIODeadline?
    private var cpuAtStart: Int64 = 0

    init(slot: Int) {
        self.slot = slot
    }

    /// A tick ended at `now`; at the end of a window, returns the share of a core the thread
    /// used in it. `cpu` reads the thread's CPU time in nanoseconds.
    func tickEnded(at now: NIODeadline, cpu: () -> Int64) -> Double? {
        guard let windowStart else {
            self.windowStart = now
            cpuAtStart = cpu()
            return nil
        }
        let length = (now - windowStart).nanoseconds
        guard length >= AcceptSteering.window.nanoseconds else { return nil }
        let used = cpu()
        defer {
            self.windowStart = now
            cpuAtStart = used
        }
        return Double(used - cpuAtStart) / Double(length)
    }

    /// CPU time of the calling thread.
    static func threadCPUNanoseconds() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

/// The classic BPF program that picks a socket of a reuseport group for each new connection:
/// one instruction, `ret k`, where k is the socket's index in the group; an index past the
/// end makes the kernel fall back to its hash.
enum ReusePortProgram {
    /// `struct sock_fprog` (linux/filter.h), with the padding C puts before the pointer.
    private struct SockFprog: Sendable {
        var length: UInt16
        var padding0: UInt16 = 0
        var padding1: UInt32 = 0
        var filter: UInt
    }

    /// asm-generic/socket.h.
    static let soAttachReuseportCBPF: Int32 = 51

    /// `struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}` for `BPF_RET | BPF_K` (0x06), as
    /// little-endian 64-bit words: `ret 0`, then `ret 0xffffffff`. Allocated once and never
    /// freed; the kernel copies the program when it is attached.
    // nonisolated(unsafe): written once here, then only read.
    nonisolated(unsafe) private static let instructions: UnsafeMutablePointer<UInt64> = {
        let pointer = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
        pointer[0] = 0x06
        pointer[1] = 0x06 | (UInt64(UInt32.max) << 32)
        return pointer
    }()

    static func attach(firstSocket: Bool, to channel: Channel) -> EventLoopFuture<Void> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeSucceededFuture(())
        }
        let address = UInt(bitPattern: instructions + (firstSocket ? 0 : 1))
        return provider.unsafeSetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET),
            name: NIOBSDSocket.Option(rawValue: soAttachReuseportCBPF),
            value: SockFprog(length: 1, filter: address))
    }
}
