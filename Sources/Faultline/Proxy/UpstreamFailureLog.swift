import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The log of one listener's upstream failures on one loop (dials that fail, responses past
/// their timeout), kept from flooding: an upstream that is down while clients retry fails tens
/// of thousands of dials a second, and a line each (24,000 lines, 5 MB of log a second,
/// measured) would cost the daemon a third more CPU per connection and fill the journal. The
/// first failure is logged in full; the ones in the second after it are counted by reason and
/// logged as one line when that second ends, and so on while failures go on: about one line a
/// second per loop however many there are. Every failure is still counted in its metric.
///
/// Confined to the tracker's loop, like the tracker that owns it.
final class UpstreamFailureLog {
    static let window = TimeAmount.seconds(1)

    private let eventLoop: EventLoop
    /// Failures until then are counted, not logged one by one.
    private var quietUntil = NIODeadline.uptimeNanoseconds(0)
    /// Failures counted since the last line, by reason; a summary is due while not empty.
    private var counted: [String: Int] = [:]
    private var summaryLogger: Logger?
    private var summaryUpstream = ""

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    /// `message` is the line for a failure logged on its own; the summary says how many more
    /// failed, for what reasons.
    func failed(
        _ reason: String, error: (any Error)? = nil, connection id: UInt64, upstream: String,
        message: Logger.Message, logger: Logger
    ) {
        guard logger.logLevel <= .warning else { return }
        let now = NIODeadline.now()
        if counted.isEmpty && now >= quietUntil {
            var metadata: Logger.Metadata = ["conn.id": "\(id)", "upstream": "\(upstream)", "reason": "\(reason)"]
            if let error { metadata["error"] = "\(Self.describe(error))" }
            logger.warning(message, metadata: metadata)
            quietUntil = now + Self.window
            return
        }
        if counted.isEmpty {
            eventLoop.assumeIsolated().scheduleTask(deadline: quietUntil) { self.logSummary() }
        }
        counted[reason, default: 0] += 1
        summaryLogger = logger
        summaryUpstream = upstream
    }

    private func logSummary() {
        guard let logger = summaryLogger, !counted.isEmpty else { return }
        let total = counted.values.reduce(0, +)
        let reasons = counted.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        logger.warning(
            "\(total) more upstream failures in the last second",
            metadata: ["upstream": "\(summaryUpstream)", "reasons": "\(reasons.joined(separator: " "))"])
        counted.removeAll(keepingCapacity: true)
        quietUntil = NIODeadline.now() + Self.window
    }

    /// The error in a user's words: the system's for a socket error (NIO's own description of
    /// an `IOError` names the call and adds the errno), the cause for a dial that failed.
    static func describe(_ error: any Error) -> String {
        if let reason = UpstreamTLSFailure.reason(error) {
            return reason
        }
        if let error = error as? IOError {
            return String(cString: strerror(error.errnoCode))
        }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return describe(first.error) }
            // Nothing was dialed: the name did not resolve (NIO's own description names its
            // error type and repeats the port), or it resolved to no address at all.
            guard let lookup = error.dnsAError ?? error.dnsAAAAError else { return "\(error.host) has no address" }
            let cause = (lookup as? SocketAddressError.UnknownHost)?.errorDescription ?? "\(lookup)"
            return "cannot resolve \(error.host): \(cause)"
        }
        if let error = error as? ChannelError, case .connectTimeout = error {
            return "connect timed out"
        }
        return "\(error)"
    }
}
