import FaultlineRules
import NIOCore

extension SocketAddress {
    /// The address as a user wrote it in a rule file or flag (`127.0.0.1:8080`, `[::1]:8081`,
    /// a socket's path): NIO's own description (`[IPv4]127.0.0.1/127.0.0.1:8080`) is for
    /// debugging, not for the start-up lines an operator reads.
    var logText: String {
        if let ip = ipAddress, let port {
            return HostPort(host: ip, port: port).description
        }
        return pathname ?? "\(self)"
    }
}
