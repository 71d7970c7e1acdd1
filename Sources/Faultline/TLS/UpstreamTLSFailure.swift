import NIOSSL

/// A failed TLS handshake with the upstream (`upstream_tls`), told apart from the upstream
/// closing the connection: NIOSSL closes the channel after the failure, and without this the
/// client heard "the upstream closed the connection" and the log said nothing.
enum UpstreamTLSFailure {
    /// What went wrong in a few words (`certificate verify failed`, `wrong version number`),
    /// for the log and the 502's body; nil for an error that is not a failed handshake.
    static func reason(_ error: any Error) -> String? {
        if let error = error as? NIOSSLExtraError {
            return error == .failedToValidateHostname ? "the certificate is not for the upstream's name" : "\(error)"
        }
        guard let error = error as? NIOSSLError, case .handshakeFailed(let cause) = error else { return nil }
        // BoringSSL's reason is the last part of "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED".
        let text = "\(cause)"
        guard let marker = text.range(of: "OPENSSL_internal:") else { return text }
        let code = text[marker.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
        return code.lowercased().replacingOccurrences(of: "_", with: " ")
    }
}
