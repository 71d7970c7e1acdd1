/// The two ends of a proxied connection.
enum ProxySide: Sendable {
    /// The accepted connection from the client.
    case client
    /// The connection Faultline dialed to the service.
    case upstream

    var partner: ProxySide { self == .client ? .upstream : .client }

    /// Bytes read on this side travel in this direction.
    var outgoingDirection: FlowDirection { self == .client ? .upstream : .downstream }
}

/// Which way bytes travel: `upstream` is client to service, `downstream` service to client.
/// The same words as Toxiproxy's `stream`, so that its users need no translation.
public enum FlowDirection: String, Sendable {
    case upstream
    case downstream

    /// Index into per-direction arrays.
    var index: Int { self == .upstream ? 0 : 1 }

    /// The side the bytes of this direction are written to.
    var target: ProxySide { self == .upstream ? .upstream : .client }
}
