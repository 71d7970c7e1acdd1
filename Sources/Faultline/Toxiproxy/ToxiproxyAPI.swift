import FaultlineRules
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// Toxiproxy 2.x's HTTP API, so that its client libraries, Testcontainers and Chaos Toolkit's
/// toxiproxy extension drive Faultline unmodified. A proxy is a runtime TCP listener and a
/// toxic a runtime fault on it, both kept in the runtime overlay with origin `toxiproxy`, so
/// that `faultctl list` and the metrics show them like any other runtime change and `/reset`
/// touches only what came through here. Paths, shapes, status codes and error bodies are
/// Toxiproxy's (see the README); a toxic change reaches open connections without closing any.
///
///   GET    /version
///   GET    /proxies                      POST /proxies           POST /populate    POST /reset
///   GET    /proxies/P                    POST|PATCH /proxies/P   DELETE /proxies/P
///   GET    /proxies/P/toxics             POST /proxies/P/toxics
///   GET    /proxies/P/toxics/T           POST|PATCH /proxies/P/toxics/T   DELETE /proxies/P/toxics/T
public final class ToxiproxyAPI: Sendable {
    /// What `/version` reports: the Toxiproxy API level served (clients switch to PATCH
    /// updates from 2.6.0 on).
    public static let compatibleVersion = "2.12.0"

    private let daemon: Daemon
    private let requestCount = Atomic<Int>(0)

    public init(daemon: Daemon) {
        self.daemon = daemon
    }

    /// Toxiproxy's error body for a request the HTTP parser rejects.
    public static var malformed: SmallHTTPResponse { ToxiproxyError(.badRequest, "malformed HTTP request").response }

    public var handler: SmallHTTPServer.Handler {
        { [self] request in await handle(request) }
    }

    func handle(_ request: SmallHTTPRequest) async -> SmallHTTPResponse {
        var response: SmallHTTPResponse
        // Toxiproxy refuses browsers, so that a web page cannot drive it (DNS rebinding).
        if request.headers.first(name: "User-Agent")?.hasPrefix("Mozilla/") == true {
            response = .text("User agent not allowed\n", status: .forbidden)
        } else {
            do {
                response = try await route(request)
            } catch let error as ToxiproxyError {
                response = error.response
            } catch {
                response = ToxiproxyError(.internalServerError, "\(error)").response
            }
        }
        let id = requestCount.add(1, ordering: .relaxed).newValue
        response.headers.replaceOrAdd(name: "X-Toxiproxy-Request-Id", value: "faultline-\(id)")
        return response
    }

    private func route(_ request: SmallHTTPRequest) async throws -> SmallHTTPResponse {
        let parts = request.path.split(separator: "/").map { $0.removingPercentEncoding ?? String($0) }
        let method = request.method
        func only(_ methods: [HTTPMethod]) throws {
            // gorilla/mux: a known path with another method is 405 with an empty body.
            if !methods.contains(method) { throw ToxiproxyError.methodNotAllowed }
        }
        switch parts.count {
        case 1 where parts[0] == "version":
            try only([.GET])
            var body = ByteBuffer(string: #"{"version": "\#(Self.compatibleVersion)"}"#)
            body.writeString("\n")
            return SmallHTTPResponse(status: .ok, headers: ["Content-Type": "application/json;charset=utf-8"], body: body)
        case 1 where parts[0] == "proxies":
            try only([.GET, .POST])
            if method == .GET { return Self.json(proxiesByName()) }
            return Self.json(try await createProxy(ToxiproxyRequestBody(request.body)), status: .created)
        case 1 where parts[0] == "populate":
            try only([.POST])
            return Self.json(try await populate(ToxiproxyRequestBody.array(request.body)), status: .created)
        case 1 where parts[0] == "reset":
            try only([.POST])
            try await reset()
            return SmallHTTPResponse(status: .noContent)
        case 2 where parts[0] == "proxies":
            try only([.GET, .POST, .PATCH, .DELETE])
            let name = parts[1]
            switch method {
            case .GET: return Self.json(try proxy(named: name))
            case .DELETE:
                try await deleteProxy(name)
                return SmallHTTPResponse(status: .noContent)
            default: return Self.json(try await updateProxy(name, ToxiproxyRequestBody(request.body)))
            }
        case 3 where parts[0] == "proxies" && parts[2] == "toxics":
            try only([.GET, .POST])
            let name = parts[1]
            if method == .GET { return Self.json(try proxy(named: name).toxics) }
            // 200, not 201: what Toxiproxy answers and its clients expect.
            return Self.json(try await createToxic(proxy: name, ToxiproxyRequestBody(request.body)))
        case 4 where parts[0] == "proxies" && parts[2] == "toxics":
            try only([.GET, .POST, .PATCH, .DELETE])
            let (proxyName, toxicName) = (parts[1], parts[3])
            switch method {
            case .GET:
                guard let toxic = try proxy(named: proxyName).toxics.first(where: { $0.name == toxicName }) else {
                    throw ToxiproxyError.toxicNotFound
                }
                return Self.json(toxic)
            case .DELETE:
                try await deleteToxic(proxy: proxyName, toxic: toxicName)
                return SmallHTTPResponse(status: .noContent)
            default:
                return Self.json(try await updateToxic(proxy: proxyName, toxic: toxicName, ToxiproxyRequestBody(request.body)))
            }
        default:
            return .text("404 page not found\n", status: .notFound)
        }
    }

    // MARK: Reading

    /// The proxies made through this API, as Toxiproxy shows them.
    private func proxyViews() -> [ToxiproxyProxyView] {
        let overlay = daemon.reloader.overlay
        return overlay.listeners.filter { $0.origin == Toxic.origin }.map { listener in
            let toxics = overlay.faults
                .filter { $0.origin == Toxic.origin && $0.rule.listener == listener.rule.name }
                .compactMap { Toxic(fault: $0.rule) }
            // Upstream toxics first, then downstream, each in the order they were made.
            let ordered = toxics.filter { $0.stream == .upstream } + toxics.filter { $0.stream != .upstream }
            return ToxiproxyProxyView(
                name: listener.rule.name, listen: "\(listener.rule.listen)", upstream: "\(listener.rule.upstream)",
                enabled: listener.enabled, toxics: ordered.map(ToxiproxyToxicView.init))
        }
    }

    private func proxiesByName() -> [String: ToxiproxyProxyView] {
        Dictionary(proxyViews().map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    private func proxy(named name: String) throws(ToxiproxyError) -> ToxiproxyProxyView {
        guard let view = proxyViews().first(where: { $0.name == name }) else { throw .proxyNotFound }
        return view
    }

    private func runtimeListener(_ name: String) -> RuntimeOverlay.RuntimeListener? {
        daemon.reloader.overlay.listeners.first { $0.rule.name == name && $0.origin == Toxic.origin }
    }

    // MARK: Proxies

    private struct ProxyRequest {
        var name: String
        var listen: HostPort
        var upstream: HostPort
        var enabled: Bool
    }

    private func proxyRequest(_ body: ToxiproxyRequestBody, index: Int? = nil) throws(ToxiproxyError) -> ProxyRequest {
        guard let name = try body.string("name"), !name.isEmpty else { throw .missingField("name", at: index) }
        guard let upstream = try body.string("upstream"), !upstream.isEmpty else { throw .missingField("upstream", at: index) }
        try Self.checkName(name, what: "proxy name")
        return ProxyRequest(
            name: name, listen: try Self.listenAddress(try body.string("listen") ?? "127.0.0.1:0"),
            upstream: try Self.upstreamAddress(upstream), enabled: try body.bool("enabled") ?? true)
    }

    private func createProxy(_ body: ToxiproxyRequestBody) async throws(ToxiproxyError) -> ToxiproxyProxyView {
        let request = try proxyRequest(body)
        try await create(request)
        return try proxy(named: request.name)
    }

    private func create(_ request: ProxyRequest) async throws(ToxiproxyError) {
        let rule = ListenerRule(
            name: request.name, listen: request.listen, upstream: request.upstream,
            source: SourceLocation(file: Toxic.sourceFile, line: 1, column: 1))
        let listener = RuntimeOverlay.RuntimeListener(rule: rule, enabled: request.enabled, origin: Toxic.origin)
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            try overlay.addListener(listener, in: files)
        }
        try await resolvePort(of: request.name)
    }

    /// Port 0 asked the kernel for a port; the proxy reports (and later rebinds) the one it got.
    private func resolvePort(of name: String) async throws(ToxiproxyError) {
        guard var listener = runtimeListener(name), listener.rule.listen.port == 0, listener.enabled,
            let port = daemon.proxy.listener(named: name)?.boundAddress.port
        else { return }
        listener.rule.listen.port = port
        let resolved = listener
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            try overlay.updateListener(resolved, in: files)
        }
    }

    private func updateProxy(_ name: String, _ body: ToxiproxyRequestBody) async throws(ToxiproxyError) -> ToxiproxyProxyView {
        guard var listener = runtimeListener(name) else { throw .proxyNotFound }
        if let listen = try body.string("listen") { listener.rule.listen = try Self.listenAddress(listen) }
        if let upstream = try body.string("upstream") { listener.rule.upstream = try Self.upstreamAddress(upstream) }
        let wasEnabled = listener.enabled
        if let enabled = try body.bool("enabled") { listener.enabled = enabled }
        let updated = listener
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            try overlay.updateListener(updated, in: files)
        }
        if wasEnabled, !updated.enabled {
            // Toxiproxy's `down`: the port refuses, and open connections are cut.
            await daemon.proxy.closeConnections(ofRemoved: name)
        }
        try await resolvePort(of: name)
        return try proxy(named: name)
    }

    private func deleteProxy(_ name: String) async throws(ToxiproxyError) {
        guard runtimeListener(name) != nil else { throw .proxyNotFound }
        try await change { overlay, _ throws(RuntimeOverlay.ChangeError) in
            try overlay.removeListener(name)
        }
        await daemon.proxy.closeConnections(ofRemoved: name)
    }

    /// Creates the proxies of a list; one identical to a running proxy (same resolved listen
    /// address and upstream) is kept as it is, toxics and all, and a differing one replaced.
    private func populate(_ bodies: [ToxiproxyRequestBody]) async throws(ToxiproxyError) -> ToxiproxyPopulateView {
        var requests: [ProxyRequest] = []
        for (index, body) in bodies.enumerated() { requests.append(try proxyRequest(body, index: index)) }
        var done: [ToxiproxyProxyView] = []
        for request in requests {
            do {
                if let existing = runtimeListener(request.name) {
                    let sameListen = existing.rule.listen == request.listen
                        || (request.listen.port == 0 && existing.rule.listen.host == request.listen.host)
                    if sameListen && existing.rule.upstream == request.upstream {
                        done.append(try proxy(named: request.name))
                        continue
                    }
                    try await deleteProxy(request.name)
                }
                try await create(request)
                done.append(try proxy(named: request.name))
            } catch {
                var failure = error
                failure.proxies = done
                throw failure
            }
        }
        return ToxiproxyPopulateView(proxies: done.isEmpty ? nil : done)
    }

    /// Every proxy of this API enabled again, every toxic of this API removed.
    private func reset() async throws(ToxiproxyError) {
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            overlay.removeFaults(origin: Toxic.origin)
            for var listener in overlay.listeners where listener.origin == Toxic.origin && !listener.enabled {
                listener.enabled = true
                try overlay.updateListener(listener, in: files)
            }
        }
        for listener in daemon.reloader.overlay.listeners where listener.origin == Toxic.origin {
            try await resolvePort(of: listener.rule.name)
        }
    }

    // MARK: Toxics

    private func createToxic(proxy proxyName: String, _ body: ToxiproxyRequestBody) async throws(ToxiproxyError) -> ToxiproxyToxicView {
        guard runtimeListener(proxyName) != nil else { throw .proxyNotFound }
        let stream: FaultDirection
        switch try body.string("stream")?.lowercased() ?? "downstream" {
        case "upstream": stream = .upstream
        case "downstream", "": stream = .downstream
        default: throw ToxiproxyError(.badRequest, Toxic.Problem.invalidStream.description)
        }
        let type = try body.string("type") ?? ""
        let name = try body.string("name").flatMap { $0.isEmpty ? nil : $0 } ?? "\(type)_\(stream.rawValue)"
        try Self.checkName(name, what: "toxic name")
        let toxic = Toxic(
            name: name, type: type, stream: stream, toxicity: try body.double("toxicity") ?? 1,
            attributes: try body.integers("attributes") ?? [:])
        let rule = try Self.faultRule(toxic, proxy: proxyName)
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            guard !overlay.faults.contains(where: { $0.rule.name == rule.name }) else {
                throw .invalid(field: Self.toxicExistsMarker, message: "toxic already exists")
            }
            try overlay.add(rule, expiresAt: nil, origin: Toxic.origin, in: files)
        }
        // Read back from the rule, so that the reply has every attribute of the type.
        return ToxiproxyToxicView(Toxic(fault: rule) ?? toxic)
    }

    /// Attributes merge into the toxic's; toxicity changes only when given; type, stream and
    /// name stay. The fault keeps its name and place, so open connections keep their draw.
    private func updateToxic(proxy proxyName: String, toxic toxicName: String, _ body: ToxiproxyRequestBody)
        async throws(ToxiproxyError) -> ToxiproxyToxicView
    {
        guard runtimeListener(proxyName) != nil else { throw .proxyNotFound }
        let faultName = Toxic.faultName(proxy: proxyName, toxic: toxicName)
        guard let fault = daemon.reloader.overlay.faults.first(where: { $0.rule.name == faultName }),
            var toxic = Toxic(fault: fault.rule)
        else { throw .toxicNotFound }
        for (key, value) in try body.integers("attributes") ?? [:] where Toxic.attributeNames[toxic.type]?.contains(key) == true {
            toxic.attributes[key] = value
        }
        if let toxicity = try body.double("toxicity") { toxic.toxicity = toxicity }
        var rule = try Self.faultRule(toxic, proxy: proxyName)
        rule.enabled = fault.rule.enabled
        let replacement = rule
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            try overlay.replace(replacement, in: files)
        }
        return ToxiproxyToxicView(Toxic(fault: replacement) ?? toxic)
    }

    private func deleteToxic(proxy proxyName: String, toxic toxicName: String) async throws(ToxiproxyError) {
        guard runtimeListener(proxyName) != nil else { throw .proxyNotFound }
        let faultName = Toxic.faultName(proxy: proxyName, toxic: toxicName)
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            guard overlay.faults.contains(where: { $0.rule.name == faultName && $0.origin == Toxic.origin }) else {
                throw .notFound(faultName)
            }
            try overlay.remove(faultName, in: files)
        }
    }

    private static func faultRule(_ toxic: Toxic, proxy: String) throws(ToxiproxyError) -> FaultRule {
        do {
            return try toxic.faultRule(proxy: proxy)
        } catch {
            throw ToxiproxyError(.badRequest, error.description)
        }
    }

    // MARK: Applying

    private static let toxicExistsMarker = "toxiproxy.toxic_exists"

    /// Changes the overlay (in order with rule reloads) and maps what went wrong to
    /// Toxiproxy's statuses: a name taken 409, a proxy or toxic missing 404, an address that
    /// cannot be bound 500 as Toxiproxy says it.
    private func change(_ mutate: @escaping RuleReloader.OverlayMutation) async throws(ToxiproxyError) {
        switch await daemon.reloader.changeOverlay(mutate) {
        case .success:
            return
        case .failure(.listenerExists):
            throw .proxyExists
        case .failure(.listenerNotFound):
            throw .proxyNotFound
        case .failure(.notFound):
            throw .toxicNotFound
        case .failure(.shuttingDown):
            throw ToxiproxyError(.serviceUnavailable, "the daemon is shutting down")
        case .failure(.invalid(let field, let message)):
            if field == Self.toxicExistsMarker { throw .toxicExists }
            throw ToxiproxyError(.internalServerError, message)
        }
    }

    // MARK: Values

    /// Names end up in metric labels and fault names: letters, digits, `-`, `_`, `.`.
    private static func checkName(_ name: String, what: String) throws(ToxiproxyError) {
        let allowed = name.count <= 64 && name.unicodeScalars.allSatisfy {
            ($0.properties.isAlphabetic && $0.isASCII) || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0)
        }
        if !allowed { throw .badBody("\(what) \"\(name)\": letters, digits, '-', '_' and '.' only, at most 64") }
    }

    /// `host:port` as Go's `net.Listen` takes it: `localhost` is 127.0.0.1, an empty host is
    /// every interface, other names are looked up once, here.
    static func listenAddress(_ text: String) throws(ToxiproxyError) -> HostPort {
        let normalized = text.hasPrefix(":") ? "0.0.0.0" + text : text
        guard case .success(var address) = HostPort.parse(normalized, allowPortZero: true) else {
            throw .badBody("listen \"\(text)\": expected host:port")
        }
        if address.host == "localhost" { address.host = "127.0.0.1" }
        if !address.isIPLiteral {
            guard let resolved = try? SocketAddress.makeAddressResolvingHost(address.host, port: address.port),
                let ip = resolved.ipAddress
            else {
                throw ToxiproxyError(.internalServerError, "listen tcp \(text): lookup \(address.host): no such host")
            }
            address.host = ip
        }
        return address
    }

    static func upstreamAddress(_ text: String) throws(ToxiproxyError) -> HostPort {
        guard case .success(let address) = HostPort.parse(text), address.port > 0 else {
            throw .badBody("upstream \"\(text)\": expected host:port")
        }
        return address
    }

    // MARK: Encoding

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(value)) ?? Data("null".utf8))
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> SmallHTTPResponse {
        var body = ByteBuffer(bytes: encode(value))
        body.writeString("\n")
        return SmallHTTPResponse(status: status, headers: ["Content-Type": "application/json"], body: body)
    }
}

struct ToxiproxyToxicView: Encodable {
    var attributes: [String: Int]
    var name: String
    var type: String
    var stream: String
    var toxicity: Double

    init(_ toxic: Toxic) {
        attributes = toxic.attributes
        name = toxic.name
        type = toxic.type
        stream = toxic.stream.rawValue
        toxicity = toxic.toxicity
    }
}

struct ToxiproxyProxyView: Encodable {
    var name: String
    var listen: String
    var upstream: String
    var enabled: Bool
    var toxics: [ToxiproxyToxicView]
}

struct ToxiproxyPopulateView: Encodable {
    var proxies: [ToxiproxyProxyView]?

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(proxies, forKey: .proxies)  // null for none, as Toxiproxy writes it
    }

    enum CodingKeys: String, CodingKey { case proxies }
}
