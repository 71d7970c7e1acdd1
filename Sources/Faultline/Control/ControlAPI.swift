import FaultlineRules
import Foundation
import NIOCore
import NIOHTTP1

/// The control API: HTTP/1.1 + JSON on a UNIX socket (`faultctl` and `curl --unix-socket`
/// use it). Versioned paths; every reply is `application/json`; every error has one shape:
/// `{"error": {"code": ..., "message": ..., "field": ...}}`.
///
///   GET    /v1/status                 version, uptime, listeners, rules and the last reload
///   GET    /v1/listeners
///   GET    /v1/faults                 file and runtime faults, apart, with injections so far
///   POST   /v1/faults                 {"fault": {rule}, "for": "30s"}: a runtime fault
///   GET    /v1/faults/NAME            one fault, as in the list
///   DELETE /v1/faults/NAME            removes a runtime fault
///   POST   /v1/faults/NAME/enable     {"for": "60s"} optional: reverts by itself after that
///   POST   /v1/faults/NAME/disable    likewise
///   POST   /v1/reset                  drops every runtime fault change at once
///   POST   /v1/reload                 reloads the rule files now
///   GET    /v1/ca                     the CA certificate (PEM) that TLS listeners chain to
public struct ControlAPI: Sendable {
    public static let maxBodyBytes = 64 * 1024

    let daemon: Daemon
    let startedAt: ContinuousClock.Instant

    public init(daemon: Daemon, startedAt: ContinuousClock.Instant = .now) {
        self.daemon = daemon
        self.startedAt = startedAt
    }

    public var handler: SmallHTTPServer.Handler {
        { request in await self.handle(request) }
    }

    /// The one error shape, also for requests the HTTP parser rejects.
    public static var malformed: SmallHTTPResponse {
        ControlError(.badRequest, "bad_request", "malformed HTTP request").response
    }

    /// The one error shape, also for bodies over the limit.
    @Sendable public static func tooLarge(_ limit: Int) -> SmallHTTPResponse {
        ControlError(.payloadTooLarge, "too_large", "request body larger than \(limit) bytes").response
    }

    func handle(_ request: SmallHTTPRequest) async -> SmallHTTPResponse {
        // Segments are percent-decoded after the split, so that a name may be sent escaped
        // (`faultctl` escapes what a path may not hold) and an escaped `/` stays in its segment.
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map {
            $0.removingPercentEncoding ?? String($0)
        }
        do {
            // With --control-address, any web page open on the machine could send this API
            // requests (a form's POST, or reads after DNS rebinding): browsers are refused, by
            // the User-Agent every browser sends (as Toxiproxy does) and the headers that only
            // browsers add to requests a page makes.
            if request.headers.first(name: "User-Agent")?.hasPrefix("Mozilla/") == true
                || request.headers.contains(name: "Origin") || request.headers.contains(name: "Sec-Fetch-Mode")
            {
                throw ControlError(.forbidden, "forbidden", "browsers may not use the control API; use faultctl or curl")
            }
            guard parts.first == "v1" else {
                throw ControlError(.notFound, "not_found", "unknown path \(request.path); the API is under /v1/")
            }
            let route = Array(parts.dropFirst())
            let method = request.method
            func notAllowed() -> ControlError {
                ControlError(.methodNotAllowed, "method_not_allowed", "\(method) is not allowed on \(request.path)")
            }
            switch route.count {
            case 1:
                switch (route[0], method) {
                case ("status", .GET):
                    return try json(await status())
                case ("listeners", .GET):
                    let views = await listeners()
                    return try json(["listeners": views])
                case ("faults", .GET):
                    let views = await faults()
                    return try json(["faults": views])
                case ("faults", .POST):
                    return try await createFault(request.body)
                case ("reset", .POST):
                    let before = daemon.reloader.overlay
                    try await change { overlay, _ in overlay.dropFaultChanges() }
                    return try json(["reset": ["overrides": before.overrides.count, "faults": before.faults.count]])
                case ("ca", .GET):
                    do {
                        return try json(["certificate": try daemon.proxy.authorities.main().pem])
                    } catch {
                        throw ControlError(.internalServerError, "ca_unavailable", "\(error)")
                    }
                case ("reload", .POST):
                    let outcome = await daemon.reloader.reload(reason: "control socket")
                    if outcome.shuttingDown { throw ControlError.shuttingDown }
                    return try json(["reload": ReloadView(outcome)], status: outcome.succeeded ? .ok : .unprocessableEntity)
                case ("status", _), ("listeners", _), ("faults", _), ("reset", _), ("reload", _), ("ca", _):
                    throw notAllowed()
                default:
                    break
                }
            case 2 where route[0] == "faults":
                let name = route[1]
                if method == .GET { return try json(["fault": try await fault(named: name)]) }
                guard method == .DELETE else { throw notAllowed() }
                try await change { overlay, files throws(RuntimeOverlay.ChangeError) in try overlay.remove(name, in: files) }
                return try json(["removed": name])
            case 3 where route[0] == "faults" && (route[2] == "enable" || route[2] == "disable"):
                guard method == .POST else { throw notAllowed() }
                let name = route[1]
                let expiresAt = try expiry(from: request.body)
                let enabled = route[2] == "enable"
                try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
                    try overlay.setEnabled(name, enabled, expiresAt: expiresAt, in: files)
                }
                return try json(["fault": try await fault(named: name)])
            default:
                break
            }
            throw ControlError(.notFound, "not_found", "unknown path \(request.path)")
        } catch let error as ControlError {
            return error.response
        } catch {
            return ControlError(.internalServerError, "internal", "\(error)").response
        }
    }

    // MARK: Reading

    struct StatusView: Encodable {
        var version: String
        var uptime_seconds: Double
        var listeners: [ListenerView]
        var rules: RulesView
        var runtime: RuntimeView
    }

    struct RulesView: Encodable {
        var directory: String?
        var files: [String]
        var faults: Int
        var last_reload: ReloadView?
    }

    struct RuntimeView: Encodable {
        var overrides: Int
        var faults: Int
        var listeners: Int
    }

    struct ReloadView: Encodable {
        var succeeded: Bool
        var unchanged: Bool
        var errors: [String]
        var rules: String

        init(_ outcome: ReloadOutcome) {
            succeeded = outcome.succeeded
            unchanged = outcome.unchanged
            errors = outcome.errors
            rules = outcome.summary
        }
    }

    struct ListenerView: Encodable {
        var name: String
        var `protocol`: String
        var listen: String
        var upstream: String
        var connections_open: Int
        /// `file`, or `runtime` for a listener made at run time (a Toxiproxy proxy).
        var source: String
        /// Where it came from: `file` or the runtime origin (`toxiproxy`).
        var origin: String
    }

    struct FaultView: Encodable {
        var name: String
        var listener: String
        var kind: String
        /// `file` or `runtime`.
        var source: String
        var enabled: Bool
        /// Where a runtime change came from, or the file and line of a file fault.
        var origin: String
        var probability: Double
        /// Set when a runtime change reverts by itself.
        var expires_in_seconds: Double?
        var injections: Int
    }

    func status() async -> StatusView {
        let files = daemon.reloader.rules
        let overlay = daemon.reloader.overlay
        return StatusView(
            version: FaultlineVersion.current,
            uptime_seconds: Self.seconds(ContinuousClock.now - startedAt),
            listeners: await listeners(),
            rules: RulesView(
                directory: daemon.reloader.directory, files: files.files, faults: files.faults.count,
                last_reload: daemon.reloader.lastReload.map(ReloadView.init)),
            runtime: RuntimeView(
                overrides: overlay.overrides.count, faults: overlay.faults.count, listeners: overlay.listeners.count))
    }

    func listeners() async -> [ListenerView] {
        var views: [ListenerView] = []
        let runtime = Dictionary(
            daemon.reloader.overlay.listeners.map { ($0.rule.name, $0.origin) }, uniquingKeysWith: { first, _ in first })
        for listener in daemon.proxy.listeners {
            let rule = listener.rule
            views.append(ListenerView(
                name: rule.name, protocol: rule.protocol.rawValue, listen: "\(rule.listen)",
                upstream: "\(rule.upstream)", connections_open: await listener.openConnections(),
                source: runtime[rule.name] == nil ? "file" : "runtime", origin: runtime[rule.name] ?? "file"))
        }
        return views
    }

    func faults() async -> [FaultView] {
        let files = daemon.reloader.rules
        let overlay = daemon.reloader.overlay
        let injections = await injectionCounts()
        let now = RuleReloader.monotonicNanoseconds()
        func expires(_ at: Int64?) -> Double? { at.map { max(0, Double($0 - now) / 1e9) } }
        var views: [FaultView] = []
        for rule in files.faults {
            let override = overlay.overrides[rule.name]
            views.append(FaultView(
                name: rule.name, listener: rule.listener, kind: rule.action.kind,
                source: override == nil ? "file" : "runtime", enabled: override?.enabled ?? rule.enabled,
                origin: override == nil ? "\(rule.source)" : "control (file rule \(rule.source))",
                probability: rule.probability, expires_in_seconds: expires(override?.expiresAt),
                injections: injections[rule.listener + "\u{0}" + rule.name] ?? 0))
        }
        for fault in overlay.faults {
            let rule = fault.rule
            views.append(FaultView(
                name: rule.name, listener: rule.listener, kind: rule.action.kind, source: "runtime",
                enabled: rule.enabled, origin: fault.origin, probability: rule.probability,
                expires_in_seconds: expires(fault.expiresAt),
                injections: injections[rule.listener + "\u{0}" + rule.name] ?? 0))
        }
        return views
    }

    func fault(named name: String) async throws -> FaultView {
        guard let view = await faults().first(where: { $0.name == name }) else {
            throw ControlError(.notFound, "not_found", "no fault named \"\(name)\"", field: "name")
        }
        return view
    }

    /// `faultline_faults_injected_total` by listener and fault, read back from the exposition.
    func injectionCounts() async -> [String: Int] {
        let text = await daemon.metricsText()
        var counts: [String: Int] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("faultline_faults_injected_total{") {
            guard let listener = Self.label("listener", in: line), let fault = Self.label("fault", in: line),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            counts[listener + "\u{0}" + fault, default: 0] += Int(value)
        }
        return counts
    }

    static func label(_ name: String, in line: Substring) -> String? {
        guard let start = line.range(of: "\(name)=\"") else { return nil }
        let rest = line[start.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }

    // MARK: Changing

    func change(_ mutate: @escaping RuleReloader.OverlayMutation) async throws {
        switch await daemon.reloader.changeOverlay(mutate) {
        case .success:
            return
        case .failure(.notFound(let name)):
            throw ControlError(.notFound, "not_found", "no fault named \"\(name)\"", field: "name")
        case .failure(.invalid(let field, let message)):
            throw ControlError(.unprocessableEntity, "invalid", message, field: field)
        case .failure(.shuttingDown):
            throw ControlError.shuttingDown
        case .failure(let error):
            throw ControlError(.unprocessableEntity, "invalid", error.description, field: "listener")
        }
    }

    func createFault(_ body: ByteBuffer) async throws -> SmallHTTPResponse {
        let object = try jsonObject(body)
        guard let faultObject = object["fault"] else {
            throw ControlError(.badRequest, "invalid", "expected {\"fault\": {...}, \"for\": \"30s\"}", field: "fault")
        }
        let unknown = Set(object.keys).subtracting(["fault", "for"])
        if let key = unknown.sorted().first {
            throw ControlError(.badRequest, "invalid", "unknown key \"\(key)\"; expected fault and for", field: key)
        }
        let ruleJSON = try JSONSerialization.data(withJSONObject: faultObject)
        let rule: FaultRule
        switch RuleLoader.parseFault(String(decoding: ruleJSON, as: UTF8.self), source: "request") {
        case .success(let parsed):
            rule = parsed
        case .failure(let errors):
            let first = errors.errors.first?.message ?? "invalid fault"
            throw ControlError(.unprocessableEntity, "invalid", first, field: Self.field(of: first))
        }
        let expiresAt = try expiry(object["for"], field: "for")
        try await change { overlay, files throws(RuntimeOverlay.ChangeError) in
            try overlay.add(rule, expiresAt: expiresAt, origin: "control", in: files)
        }
        return try json(["fault": try await fault(named: rule.name)], status: .created)
    }

    /// `{"for": "60s"}` (or an empty body): the monotonic deadline, or nil for "until reset".
    func expiry(from body: ByteBuffer) throws -> Int64? {
        guard body.readableBytes > 0 else { return nil }
        let object = try jsonObject(body)
        if let key = Set(object.keys).subtracting(["for"]).sorted().first {
            throw ControlError(.badRequest, "invalid", "unknown key \"\(key)\"; expected for", field: key)
        }
        return try expiry(object["for"], field: "for")
    }

    func expiry(_ value: Any?, field: String) throws -> Int64? {
        guard let value, !(value is NSNull) else { return nil }
        let duration: Duration
        switch (value as? String).map(DurationText.read) {
        case .success(let read)?:
            duration = read
        case .failure(.tooLong)?:
            throw ControlError(.badRequest, "invalid", "\(field): over the maximum of \(DurationText.format(DurationText.maximum))", field: field)
        default:
            throw ControlError(.badRequest, "invalid", "\(field): expected a duration such as \"60s\"", field: field)
        }
        guard duration > .zero else {
            throw ControlError(.badRequest, "invalid", "\(field): must be longer than 0s (to end a change now, revert or remove it)", field: field)
        }
        return RuleReloader.monotonicNanoseconds() + duration.nanoseconds
    }

    func jsonObject(_ body: ByteBuffer) throws -> [String: Any] {
        let data = Data(body.readableBytesView)
        guard let value = try? JSONSerialization.jsonObject(with: data), let object = value as? [String: Any] else {
            throw ControlError(.badRequest, "bad_json", "the body is not a JSON object")
        }
        return object
    }

    /// The dotted key a rule error message starts with, if any ("latency.delay: ...").
    static func field(of message: String) -> String? {
        if message.hasPrefix("unknown key \""), let end = message.dropFirst(13).firstIndex(of: "\"") {
            return String(message.dropFirst(13)[..<end])
        }
        guard let colon = message.firstIndex(of: ":") else { return nil }
        let key = message[..<colon]
        return key.contains(" ") ? nil : String(key)
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) throws -> SmallHTTPResponse {
        try Self.json(value, status: status)
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) throws -> SmallHTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        return SmallHTTPResponse(
            status: status, headers: ["Content-Type": "application/json"], body: ByteBuffer(bytes: data))
    }
}

/// A control request that cannot be served, in the one error shape.
struct ControlError: Error {
    var status: HTTPResponseStatus
    var code: String
    var message: String
    var field: String?

    init(_ status: HTTPResponseStatus, _ code: String, _ message: String, field: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
    }

    /// A change asked for while the daemon shuts down: refused, nothing changed.
    static let shuttingDown = ControlError(.serviceUnavailable, "shutting_down", "the daemon is shutting down")

    struct Body: Encodable {
        struct Detail: Encodable {
            var code: String
            var message: String
            var field: String?

            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(code, forKey: .code)
                try container.encode(message, forKey: .message)
                try container.encode(field, forKey: .field)  // null when there is none, never missing
            }

            enum CodingKeys: String, CodingKey { case code, message, field }
        }
        var error: Detail
    }

    var response: SmallHTTPResponse {
        (try? ControlAPI.json(Body(error: .init(code: code, message: message, field: field)), status: status))
            ?? SmallHTTPResponse(status: status)
    }
}
