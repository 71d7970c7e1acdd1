/// Settings of an `http` listener (the `http:` block).
public struct HTTPSettings: Sendable, Hashable {
    public static let defaultResponseTimeout: Duration = .seconds(60)
    public static let defaultHeadTimeout: Duration = .seconds(10)
    public static let defaultMaxHeadBytes = 32 * 1024
    /// The HTTP parser's own ceiling on a request head; `max_head_size` cannot go above it.
    public static let parserMaxHeadBytes = 80 * 1024

    /// From the request's end to the response head: past it the client gets `504`.
    public var responseTimeout: Duration = HTTPSettings.defaultResponseTimeout
    /// From a request's first byte to the end of its head: past it the client gets `408`.
    public var headTimeout: Duration = HTTPSettings.defaultHeadTimeout
    /// Request line and headers together; a larger head gets `431`.
    public var maxHeadBytes: Int = HTTPSettings.defaultMaxHeadBytes
    /// Faults asked for by request headers (`x-faultline-delay`, `x-faultline-abort`).
    public var headerFaults = HeaderFaults()

    public init() {}
}

/// Header-triggered faults: off unless a listener opts in, then optionally only for some clients.
public struct HeaderFaults: Sendable, Hashable {
    public var enabled = false
    /// Only requests from these blocks may trigger faults by header; empty means every client.
    public var clients: [CIDR] = []

    public init(enabled: Bool = false, clients: [CIDR] = []) {
        self.enabled = enabled
        self.clients = clients
    }

    public static let delayHeader = "x-faultline-delay"
    public static let abortHeader = "x-faultline-abort"
}

/// The response an `abort` fault answers with.
public struct HTTPAbort: Sendable, Hashable {
    public var status: Int
    /// In the order written; `Content-Length` is set by Faultline.
    public var headers: [HeaderField]
    public var body: String

    public struct HeaderField: Sendable, Hashable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public init(status: Int, headers: [HeaderField] = [], body: String = "") {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Which requests a fault of an `http` listener applies to. Every given part must hold.
public struct RequestMatch: Sendable, Hashable {
    /// Upper case; empty means any method.
    public var methods: [String]
    public var path: PathMatch?
    public var headers: [HeaderMatch]

    public init(methods: [String] = [], path: PathMatch? = nil, headers: [HeaderMatch] = []) {
        self.methods = methods
        self.path = path
        self.headers = headers
    }

    public var isEmpty: Bool { methods.isEmpty && path == nil && headers.isEmpty }

    /// `header(name)` gives the first value of a header (name in lower case), nil if absent.
    public func matches(method: String, path requestPath: Substring, header: (String) -> String?) -> Bool {
        if !methods.isEmpty, !methods.contains(method) { return false }
        if let path, !path.matches(requestPath) { return false }
        for test in headers where !test.matches(header(test.name)) { return false }
        return true
    }
}

public enum PathMatch: Sendable, Hashable {
    case exact(String)
    case prefix(String)
    /// `*` is any run of characters (`/` included), `?` one character.
    case glob(String)

    public func matches(_ path: Substring) -> Bool {
        switch self {
        case .exact(let exact): path == exact
        case .prefix(let prefix): path.hasPrefix(prefix)
        case .glob(let pattern): Glob.matches(pattern: Array(pattern.utf8), text: Array(path.utf8))
        }
    }
}

public struct HeaderMatch: Sendable, Hashable {
    public enum Test: Sendable, Hashable {
        case present
        case equals(String)
        /// `*` and `?` as for paths.
        case glob(String)
    }

    /// Lower case (header names are case-insensitive).
    public var name: String
    public var test: Test

    public init(name: String, test: Test) {
        self.name = name.lowercased()
        self.test = test
    }

    func matches(_ value: String?) -> Bool {
        guard let value else { return false }
        switch test {
        case .present: return true
        case .equals(let expected): return value == expected
        case .glob(let pattern): return Glob.matches(pattern: Array(pattern.utf8), text: Array(value.utf8))
        }
    }
}

/// Shell-style wildcard matching on bytes, linear in time (no backtracking blow-up).
enum Glob {
    static func matches(pattern: [UInt8], text: [UInt8]) -> Bool {
        var p = 0
        var t = 0
        var starP = -1
        var starT = 0
        while t < text.count {
            if p < pattern.count, pattern[p] == UInt8(ascii: "?") || pattern[p] == text[t] {
                p += 1
                t += 1
            } else if p < pattern.count, pattern[p] == UInt8(ascii: "*") {
                starP = p
                starT = t
                p += 1
            } else if starP >= 0 {
                p = starP + 1
                starT += 1
                t = starT
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pattern.count
    }
}

/// A listener's `tls:` block: Faultline terminates TLS with a leaf certificate minted by its
/// own CA for these names.
public struct TLSSettings: Sendable, Hashable {
    public static let defaultNames = ["localhost", "127.0.0.1", "::1"]
    /// DNS names and IP addresses the leaf certificate is valid for.
    public var names: [String]
    /// No names listed: each connection gets a certificate for the name its client asked for
    /// (SNI), minted on first use and cached; `names` serve clients that ask for none.
    public var namesFromSNI: Bool
    /// A certificate (PEM, with its chain) and key of the user's own, presented instead of a
    /// minted one when no fault says otherwise; certificate faults are still minted.
    public var certificateFile: String?
    public var keyFile: String?
    /// From accept to the end of the handshake (plus the delay of a `handshake: delay` fault);
    /// past it the connection is closed. A client that connects and says nothing, or says it
    /// a byte a minute, must not hold a connection for the listener's whole idle timeout.
    public var handshakeTimeout: Duration
    public static let defaultHandshakeTimeout: Duration = .seconds(10)

    public init(names: [String] = TLSSettings.defaultNames, namesFromSNI: Bool = false,
                certificateFile: String? = nil, keyFile: String? = nil,
                handshakeTimeout: Duration = TLSSettings.defaultHandshakeTimeout) {
        self.names = names
        self.namesFromSNI = namesFromSNI
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.handshakeTimeout = handshakeTimeout
    }

    /// The block without `names`: certificates for whatever name the client asks for.
    public static var fromSNI: TLSSettings { TLSSettings(names: defaultNames, namesFromSNI: true) }
}

/// What a `certificate` fault presents instead of a good certificate.
public enum CertificateFaultKind: String, Sendable, Hashable, CaseIterable {
    /// notAfter in the past.
    case expired
    /// notBefore in the future.
    case not_yet_valid
    /// Valid, but expiring within `within` (for expiry monitors and alerts).
    case expiring_soon
    /// Valid, for another name than the one asked for.
    case wrong_host
    /// Signed by its own key, not by the CA.
    case self_signed
    /// Signed by a second CA that clients do not trust.
    case untrusted_root
}

public struct CertificateFault: Sendable, Hashable {
    public var kind: CertificateFaultKind
    /// `expiring_soon`: the certificate expires this long after it is minted.
    public var within: Duration

    public init(kind: CertificateFaultKind, within: Duration = .seconds(86400)) {
        self.kind = kind
        self.within = within
    }
}

/// What a `handshake` fault does to a TLS handshake.
public enum HandshakeFaultKind: String, Sendable, Hashable, CaseIterable {
    /// The TCP connection is closed as soon as the client's hello arrives.
    case close
    /// The handshake goes on after `delay`.
    case delay
    /// Only TLS 1.0 is offered: current clients refuse it (protocol version alert).
    case old_protocol
    /// A client certificate signed by Faultline's CA is required: clients without one fail.
    case client_certificate
    /// The server aborts the handshake after the client's hello with a fatal alert
    /// (internal_error, 80), as a server that cannot load its certificate does.
    case alert
}

public struct HandshakeFault: Sendable, Hashable {
    public var kind: HandshakeFaultKind
    /// `delay` only.
    public var delay: Duration

    public init(kind: HandshakeFaultKind, delay: Duration = .zero) {
        self.kind = kind
        self.delay = delay
    }
}
