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
}
