import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix

/// An in-process daemon with the Toxiproxy-compatible API on an ephemeral port, an echo
/// server to proxy to, and curl as the API's client.
struct ToxiproxyHarness {
    let daemon: Daemon
    let apiPort: Int
    let echoPort: Int
    let group: MultiThreadedEventLoopGroup

    struct Reply {
        var status: Int
        /// Header names lower-cased.
        var headers: [String: String]
        var body: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(body.utf8), options: [.fragmentsAllowed]) }
        var object: [String: Any] { json as? [String: Any] ?? [:] }
    }

    static func with(
        files: RuleSet = RuleSet(), retiredSeriesRetention: Duration = .seconds(600),
        _ body: (ToxiproxyHarness) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        var options = DaemonOptions()
        options.seed = 7
        options.metricsAddress = nil
        options.eventLoops = 2
        options.toxiproxyAddress = HostPort(host: "127.0.0.1", port: 0)
        options.retiredSeriesRetention = retiredSeriesRetention
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .error
        let daemon = try await Daemon.start(rules: files, options: options, logger: logger)
        let reloading = Task { try await daemon.reloader.run() }
        let serving = Task { await daemon.toxiproxyServer!.run() }
        let harness = ToxiproxyHarness(
            daemon: daemon, apiPort: daemon.toxiproxyServer!.localAddress.port!, echoPort: echo.port, group: group)
        var failure: (any Error)?
        do {
            try await body(harness)
        } catch {
            failure = error
        }
        reloading.cancel()
        _ = await reloading.result
        await daemon.toxiproxyServer!.close()
        await serving.value
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
        if let failure { throw failure }
    }

    /// One request to the API with curl; `body` is sent as JSON, as clients send it.
    func call(_ method: String, _ path: String, _ body: String? = nil, headers: [String] = []) async throws -> Reply {
        var arguments = ["-i", "-X", method, "http://127.0.0.1:\(apiPort)\(path)"]
        for header in headers { arguments += ["-H", header] }
        if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
        let result = try await Curl.run(arguments)
        let text = result.text
        guard let split = text.range(of: "\r\n\r\n") else { return Reply(status: 0, headers: [:], body: text) }
        let head = text[..<split.lowerBound].components(separatedBy: "\r\n")
        let status = Int(head.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return Reply(status: status, headers: headers, body: String(text[split.upperBound...]))
    }

    /// Creates a proxy to the echo server on an ephemeral port and returns that port.
    func createProxy(_ name: String) async throws -> Int {
        let reply = try await call("POST", "/proxies", #"{"name":"\#(name)","listen":"127.0.0.1:0","upstream":"127.0.0.1:\#(echoPort)"}"#)
        guard reply.status == 201, let listen = reply.object["listen"] as? String,
            let port = Int(listen.split(separator: ":").last ?? "")
        else { throw HarnessError(description: "create proxy: \(reply.status) \(reply.body)") }
        return port
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
}
