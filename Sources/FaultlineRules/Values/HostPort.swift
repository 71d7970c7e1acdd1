/// A `host:port` pair as written in a rule file: `127.0.0.1:8080`, `[::1]:8080`, `db.internal:5432`.
/// The host is kept as text; turning it into a socket address is the data path's job, done once
/// per listener for IP literals so that no connection pays for a name look-up it does not need.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `[::1]:8080` for IPv6 hosts, `host:port` otherwise.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public var isIPv6Literal: Bool { host.contains(":") }

    public var isIPv4Literal: Bool {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { part in
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCIIDigit), let value = Int(part) else {
                return false
            }
            return value <= 255
        }
    }

    public var isIPLiteral: Bool { isIPv4Literal || isIPv6Literal }

    /// Parses `host:port`. `allowPortZero` is for listen addresses, where 0 asks the kernel
    /// for an ephemeral port (tests use it).
    public static func parse(_ text: String, allowPortZero: Bool = false) -> Result<HostPort, HostPortError> {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(.unbalancedBracket) }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(.missingPort) }
            portText = rest.dropFirst()
            guard host.contains(":"), host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                return .failure(.badHost)
            }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return .failure(.missingPort) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return .failure(.ipv6NeedsBrackets) }
            guard !host.isEmpty else { return .failure(.badHost) }
            let validHostCharacters = host.allSatisfy { $0.isASCIILetterOrDigit || $0 == "." || $0 == "-" || $0 == "_" }
            guard validHostCharacters, !host.hasPrefix("-"), !host.hasPrefix(".") else { return .failure(.badHost) }
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), portText.count <= 5, let port = Int(portText) else {
            return .failure(.badPort)
        }
        guard port <= 65535, port >= (allowPortZero ? 0 : 1) else { return .failure(.portOutOfRange) }
        return .success(HostPort(host: String(host), port: port))
    }
}

public enum HostPortError: Error, Sendable, CustomStringConvertible {
    case missingPort, badPort, portOutOfRange, badHost, unbalancedBracket, ipv6NeedsBrackets

    public var description: String {
        switch self {
        case .missingPort: "has no port"
        case .badPort: "has a port that is not a number"
        case .portOutOfRange: "has a port outside 1-65535"
        case .badHost: "has an invalid host"
        case .unbalancedBracket: "has an unclosed '['"
        case .ipv6NeedsBrackets: "is an IPv6 address without brackets (write [::1]:8080)"
        }
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
    var isASCIILetterOrDigit: Bool { isASCII && (isLetter || isNumber) }
}
