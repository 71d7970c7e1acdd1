import ArgumentParser
import Foundation

/// `faultctl inject KIND --listener L [options] [--for D] [--name N]`: a runtime fault with the
/// same schema and validation as a rule file's.
struct InjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inject",
        abstract: "Create a runtime fault (same schema and checks as the rule files).",
        discussion: """
            KIND is latency, bandwidth, slicer, reset, refuse, blackhole, limit, cut,
            slow_close, abort, certificate or handshake (the last two on TLS listeners,
            with --as).

            Examples:
              faultctl inject latency --listener api --delay 200ms --jitter 50ms --for 60s
              faultctl inject abort --listener web --status 503 --path /checkout \\
                  --header 'Retry-After: 5' --for 2m
              faultctl inject certificate --as expired --listener secure --for 5m
              faultctl inject handshake --as delay --delay 3s --listener secure --for 1m
            """)

    @Argument(help: "What the fault does.") var kind: String
    @Option(name: .long, help: "The listener it acts on.") var listener: String
    @Option(name: .long, help: "Its name (default: KIND-LISTENER-<time>-<random>).") var name: String?
    @Option(name: .customLong("for"), help: "Remove it after this long (60s, 5m); recommended for experiments.") var duration: String?
    @Option(name: .long, help: "Chance it acts (0..1 or 30%).") var probability: String?
    @Option(name: .long, help: "upstream, downstream or both (TCP).") var direction: String?
    @Option(name: .long, help: "Only these clients (CIDR; repeat).") var client: [String] = []
    @Option(name: .long, help: "latency: delay.") var delay: String?
    @Option(name: .long, help: "latency: jitter.") var jitter: String?
    @Option(name: .long, help: "latency: uniform, normal or pareto.") var distribution: String?
    @Option(name: .long, help: "latency: connect, first_byte, chunk (TCP); request, response (HTTP).") var apply: String?
    @Option(name: .long, help: "bandwidth: bytes per second (64KiB).") var rate: String?
    @Option(name: .long, help: "slicer: slice size.") var size: String?
    @Option(name: .long, help: "slicer: size variation.") var variation: String?
    @Option(name: .long, help: "reset, cut: after this long.") var after: String?
    @Option(name: .customLong("after-bytes"), help: "reset: after this many bytes.") var afterBytes: String?
    @Option(name: .long, help: "limit: bytes that pass.") var bytes: String?
    @Option(name: .customLong("close-after"), help: "blackhole: close after this long.") var closeAfter: String?
    @Option(name: .long, help: "cut: reset or fin.") var mode: String?
    @Option(name: .long, help: "abort: status.") var status: String?
    @Option(name: .long, help: "abort: a header, 'Name: value' (repeat).") var header: [String] = []
    @Option(name: .long, help: "abort: body.") var body: String?
    @Option(name: .customLong("as"), help: ArgumentHelp(
        "certificate: expired, not_yet_valid, expiring_soon, wrong_host, self_signed or untrusted_root; handshake: close, delay, old_protocol, alert or client_certificate.",
        valueName: "which")) var which: String?
    @Option(name: .long, help: "certificate (expiring_soon): expires within this long.") var within: String?
    @Option(name: .long, help: "HTTP: only this method (repeat).") var method: [String] = []
    @Option(name: .long, help: "HTTP: only paths with this prefix.") var path: String?
    @OptionGroup var control: ControlOptions

    func validate() throws {
        if ["certificate", "handshake"].contains(kind), which == nil {
            throw ValidationError("\(kind) needs --as (which \(kind) fault: see --help)")
        }
    }

    func run() async throws {
        var settings: [String: Any] = [:]
        let given: [(String, String?)] = [
            ("delay", delay), ("jitter", jitter), ("distribution", distribution), ("apply", apply), ("rate", rate),
            ("size", size), ("variation", variation), ("after", after), ("after_bytes", afterBytes), ("bytes", bytes),
            ("close_after", closeAfter), ("mode", mode), ("status", status), ("body", body),
            ("kind", which), ("within", within),
        ]
        for case (let key, let value?) in given { settings[key] = value }
        if !header.isEmpty {
            var headers: [String: String] = [:]
            for line in header {
                guard let colon = line.firstIndex(of: ":") else {
                    throw ValidationError("--header: expected 'Name: value', found '\(line)'")
                }
                headers[String(line[..<colon]).trimmingCharacters(in: .whitespaces)] =
                    String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            }
            settings["headers"] = headers
        }
        let faultName = name ?? Self.defaultName(kind: kind, listener: listener)
        var fault: [String: Any] = ["name": faultName, "listener": listener, kind: settings]
        if let probability { fault["probability"] = probability }
        if let direction { fault["direction"] = direction }
        if !client.isEmpty { fault["clients"] = client }
        var match: [String: Any] = [:]
        if !method.isEmpty { match["method"] = method }
        if let path { match["path"] = ["prefix": path] }
        if !match.isEmpty { fault["match"] = match }
        var request: [String: Any] = ["fault": fault]
        if let duration { request["for"] = duration }
        try await control.call(.POST, "/v1/faults", body: request) { _ in
            "\(faultName) injected on \(listener)" + (duration.map { " for \($0)" } ?? " (until removed or reset)")
        }
    }

    /// KIND-LISTENER-<time>-<4 random hex digits>: a script that injects two faults of a kind
    /// within one second gets two names, and the whole stays within the 64 characters a name
    /// may have (a long listener name is shortened).
    static func defaultName(kind: String, listener: String) -> String {
        let random = String(UInt16.random(in: 0...UInt16.max), radix: 16)
        let suffix = "-\(Int(Date().timeIntervalSince1970))-" + String(repeating: "0", count: 4 - random.count) + random
        return String("\(kind)-\(listener)".prefix(64 - suffix.count)) + suffix
    }
}
