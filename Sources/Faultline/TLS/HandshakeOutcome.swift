import NIOCore
import NIOSSL
import NIOTLS
import Prometheus

/// How a TLS handshake ended, as `faultline_tls_handshakes_total{result}` counts it. Few
/// values, so that the label stays small: what an experiment needs to see is whether clients
/// accepted the certificate, and if not, roughly why.
enum HandshakeResult: String, CaseIterable, Sendable {
    case ok
    /// The client broke off after the server's certificate: an alert (unknown CA, expired,
    /// bad certificate) or, with TLS 1.3, a record the server cannot read (how OpenSSL-based
    /// clients such as curl abort). The usual sign of a certificate fault doing its job.
    case clientRejected = "client_rejected"
    /// No protocol version or cipher in common (the `old_protocol` fault, for one).
    case protocolMismatch = "protocol_mismatch"
    /// A client certificate was required and none (or a bad one) came.
    case clientCertificate = "client_certificate"
    /// Not TLS at all (plain HTTP to a TLS port, garbage).
    case notTLS = "not_tls"
    /// The connection ended before the handshake did (the `close` fault, a client giving up).
    case closed
    /// The handshake did not end within `tls.handshake_timeout`; Faultline closed the connection.
    case timeout
    case other

    /// From BoringSSL's reason codes in the error; the first rule that matches wins.
    static func of(_ error: any Error) -> HandshakeResult {
        if let error = error as? NIOSSLError, case .uncleanShutdown = error { return .closed }
        let text = "\(error)".uppercased()
        if text.contains("EOF DURING HANDSHAKE") { return .closed }
        let rules: [([String], HandshakeResult)] = [
            (["PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED", "ALERT_CERTIFICATE_REQUIRED"], .clientCertificate),
            (["UNSUPPORTED_PROTOCOL", "NO_SHARED_CIPHER", "ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS", "NO_SHARED_GROUP"], .protocolMismatch),
            (["DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "TLSV1_ALERT_", "SSLV3_ALERT_"], .clientRejected),
            (["WRONG_VERSION_NUMBER", "HTTP_REQUEST", "EXCESSIVE_MESSAGE_SIZE", "BAD_PACKET_LENGTH", "UNEXPECTED_RECORD"], .notTLS),
        ]
        for (markers, result) in rules where markers.contains(where: text.contains) {
            return result
        }
        return .other
    }
}

/// Behind the TLS handler of each TLS connection until its handshake ends: counts the result
/// once, then leaves the pipeline. A handshake that has not ended `timeout` after accept is
/// ended here: the connection is closed and counted as `timeout`.
final class HandshakeOutcomeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let counters: [HandshakeResult: Counter]
    private let timeout: Duration
    private var counted = false
    private var deadline: Scheduled<Void>?

    init(counters: [HandshakeResult: Counter], timeout: Duration) {
        self.counters = counters
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
            let (watcher, context) = loopBound.value
            watcher.count(.timeout)
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    /// A plain HTTP request was answered with a 400 in front of the TLS handler.
    func plainHTTPRefused() {
        count(.notTLS)
    }

    private func count(_ result: HandshakeResult) {
        guard !counted else { return }
        counted = true
        counters[result]?.increment()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            count(.ok)
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        count(HandshakeResult.of(error))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        count(.closed)
        context.fireChannelInactive()
    }
}
