import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// The control API over its UNIX socket, with curl as the client; and faultctl, the built
/// binary, against it.
@Suite(.serialized)
struct ControlSocketTests {
    static let rules = """
        listeners:
          - {name: api, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}
        faults:
          - {name: slow, listener: api, enabled: false, direction: downstream, latency: {delay: 200ms}}
        """

    /// A daemon from a rule folder with its control socket, serving as the executable does.
    func withControlledDaemon(
        retiredSeriesRetention: Duration = .seconds(600),
        _ body: (_ daemon: Daemon, _ socket: String, _ folder: String, _ port: Int) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ctl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Self.rules.replacingOccurrences(of: "ECHO", with: "\(echo.port)")
            .write(toFile: folder + "/a.yaml", atomically: true, encoding: .utf8)
        var options = DaemonOptions()
        options.metricsAddress = nil
        options.eventLoops = 1
        options.rulesDirectory = folder
        options.controlSocket = folder + "/control.sock"
        options.retiredSeriesRetention = retiredSeriesRetention
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .critical
        let daemon = try await Daemon.start(rules: try RuleLoader.load(directory: folder).get(), options: options, logger: logger)
        let reloading = Task { try await daemon.reloader.run() }
        let serving = Task { await daemon.controlServer!.run() }
        do {
            try await body(daemon, folder + "/control.sock", folder, daemon.port("api"))
        } catch {
            Issue.record(error)
        }
        reloading.cancel()
        _ = await reloading.result
        await daemon.controlServer!.close()
        await serving.value
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: folder)
    }

    func api(_ socket: String, _ method: String, _ path: String, _ body: String? = nil) async throws -> (code: String, json: [String: Any]) {
        var arguments = ["--unix-socket", socket, "-X", method, "-w", "\n%{http_code} %{content_type}", "http://faultline\(path)"]
        if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
        let result = try await Curl.run(arguments)
        let lines = result.text.split(separator: "\n", omittingEmptySubsequences: false)
        let status = String(lines.last ?? "")
        #expect(status.hasSuffix(" application/json"), "\(method) \(path): \(status)")
        let json = (try? JSONSerialization.jsonObject(with: Data(lines.dropLast().joined(separator: "\n").utf8))) as? [String: Any]
        return (String(status.prefix(3)), json ?? [:])
    }

    @Test func readingStatusListenersAndFaults() async throws {
        try await withControlledDaemon { _, socket, folder, _ in
            var info = stat()
            #expect(lstat(socket, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600)
            let status = try await api(socket, "GET", "/v1/status")
            #expect(status.code == "200")
            #expect(status.json["version"] as? String == FaultlineVersion.current)
            let rules = status.json["rules"] as? [String: Any]
            #expect(rules?["directory"] as? String == folder)
            let listeners = try await api(socket, "GET", "/v1/listeners")
            #expect((listeners.json["listeners"] as? [[String: Any]])?.first?["name"] as? String == "api")
            let faults = try await api(socket, "GET", "/v1/faults")
            let slow = (faults.json["faults"] as? [[String: Any]])?.first
            #expect(slow?["name"] as? String == "slow")
            #expect(slow?["source"] as? String == "file")
            #expect(slow?["enabled"] as? Bool == false)
            // One fault by name, its name percent-escaped or not; an unknown one is 404.
            for path in ["/v1/faults/slow", "/v1/faults/%73low"] {
                let one = try await api(socket, "GET", path)
                #expect(one.code == "200", "\(path)")
                #expect((one.json["fault"] as? [String: Any])?["origin"] as? String == slow?["origin"] as? String)
            }
            let unknown = try await api(socket, "GET", "/v1/faults/nope")
            #expect(unknown.code == "404")
            #expect((unknown.json["error"] as? [String: Any])?["field"] as? String == "name")
        }
    }

    @Test func enableForADurationRevertsByItself() async throws {
        try await withControlledDaemon { daemon, socket, _, port in
            // Taken before the request: the fault cannot revert earlier than one second after it.
            let sent = ContinuousClock.now
            let enabled = try await api(socket, "POST", "/v1/faults/slow/enable", #"{"for": "1s"}"#)
            #expect(enabled.code == "200")
            let fault = enabled.json["fault"] as? [String: Any]
            #expect(fault?["enabled"] as? Bool == true)
            #expect(fault?["source"] as? String == "runtime")
            let slow = await RawClient.run(port: port, send: 3, halfClose: true)
            #expect(slow.received == 3 && slow.elapsed >= .milliseconds(200))
            // Off again after the second (polled, at most 5 s).
            let start = ContinuousClock.now
            while daemon.reloader.effectiveRules.faults.first?.enabled == true, ContinuousClock.now - start < .seconds(5) {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(ContinuousClock.now - sent >= .seconds(1))
            let after = try await api(socket, "GET", "/v1/faults")
            #expect((after.json["faults"] as? [[String: Any]])?.first?["enabled"] as? Bool == false)
            // Not delayed: counted by the fault's own metric, which a busy machine cannot blur.
            let injected = await daemon.injections("slow")
            #expect(injected >= 1)
            let fast = await RawClient.run(port: port, send: 3, halfClose: true)
            #expect(fast.received == 3)
            #expect(await daemon.injections("slow") == injected)
        }
    }

    @Test func runtimeFaultsSurviveAReloadAndResetDropsThem() async throws {
        try await withControlledDaemon { daemon, socket, folder, port in
            let created = try await api(
                socket, "POST", "/v1/faults",
                #"{"fault": {"name": "cut", "listener": "api", "direction": "downstream", "limit": {"bytes": 2}}}"#)
            #expect(created.code == "201")
            #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 2)
            // A file change is reloaded; the runtime fault stays.
            try (Self.rules.replacingOccurrences(of: "ECHO", with: "\(daemon.proxy.listener(named: "api")!.rule.upstream.port)")
                + "\n  - {name: other, listener: api, enabled: false, refuse: {}}\n")
                .write(toFile: folder + "/a.yaml", atomically: true, encoding: .utf8)
            let reload = try await api(socket, "POST", "/v1/reload")
            #expect(reload.code == "200")
            #expect(daemon.reloader.rules.faults.map(\.name) == ["slow", "other"])
            #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 2)
            let reset = try await api(socket, "POST", "/v1/reset")
            #expect((reset.json["reset"] as? [String: Any])?["faults"] as? Int == 1)
            #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 10)
        }
    }

    /// The injection counter of a removed runtime fault stays on /metrics for the retention
    /// (a few scrapes see its last count), then its series goes; faults in force keep theirs.
    @Test func seriesOfRemovedFaultsGoAfterTheRetention() async throws {
        let cut = #"{"fault": {"name": "cut", "listener": "api", "direction": "downstream", "limit": {"bytes": 2}}}"#
        try await withControlledDaemon { daemon, socket, _, _ async throws in
            #expect(try await api(socket, "POST", "/v1/faults", cut).code == "201")
            #expect(try await api(socket, "DELETE", "/v1/faults/cut").code == "200")
            #expect(await injectionSeries(daemon).contains(#"fault="cut""#))
        }
        try await withControlledDaemon(retiredSeriesRetention: .zero) { daemon, socket, _, port async throws in
            #expect(try await api(socket, "POST", "/v1/faults", cut).code == "201")
            #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 2)
            #expect(await injectionSeries(daemon).contains(#"fault="cut""#))
            #expect(try await api(socket, "DELETE", "/v1/faults/cut").code == "200")
            #expect(await injectionSeries(daemon) == [#"fault="slow""#])
            // Injected again: a series again, counting from zero.
            #expect(try await api(socket, "POST", "/v1/faults", cut).code == "201")
            #expect(await injectionSeries(daemon).contains(#"fault="cut""#))
            #expect(await daemon.injections("cut") == 0)
        }
    }

    /// The `fault` label of every `faultline_faults_injected_total` series on /metrics.
    func injectionSeries(_ daemon: Daemon) async -> [String] {
        await daemon.metricsText().split(separator: "\n").filter { $0.hasPrefix("faultline_faults_injected_total{") }
            .map { String($0.split(separator: ",")[1]) }
    }

    @Test func badRequestsGetTheOneErrorShape() async throws {
        try await withControlledDaemon { _, socket, _, _ in
            func error(_ reply: (code: String, json: [String: Any])) -> [String: Any]? { reply.json["error"] as? [String: Any] }
            let unknown = try await api(socket, "POST", "/v1/faults/nope/enable")
            #expect(unknown.code == "404" && error(unknown)?["code"] as? String == "not_found")
            let malformed = try await api(socket, "POST", "/v1/faults", "{not json")
            #expect(malformed.code == "400" && error(malformed)?["code"] as? String == "bad_json")
            let invalid = try await api(socket, "POST", "/v1/faults", #"{"fault": {"name": "x", "listener": "api", "latency": {"delay": "soon"}}}"#)
            #expect(invalid.code == "422")
            #expect(error(invalid)?["field"] as? String == "latency.delay")
            let wrongListener = try await api(socket, "POST", "/v1/faults", #"{"fault": {"name": "x", "listener": "apii", "refuse": {}}}"#)
            #expect(wrongListener.code == "422")
            #expect((error(wrongListener)?["message"] as? String)?.contains(#"did you mean "api"?"#) == true)
            let badDuration = try await api(socket, "POST", "/v1/faults/slow/enable", #"{"for": 5}"#)
            #expect(badDuration.code == "400" && error(badDuration)?["field"] as? String == "for")
            let tooLong = try await api(socket, "POST", "/v1/faults/slow/enable", #"{"for": "99999999h"}"#)
            #expect(tooLong.code == "400")
            #expect(error(tooLong)?["message"] as? String == "for: over the maximum of 100000h")
            let fileRule = try await api(socket, "DELETE", "/v1/faults/slow")
            #expect(fileRule.code == "422")
            let notAllowed = try await api(socket, "DELETE", "/v1/status")
            #expect(notAllowed.code == "405")
            let huge = "{\"fault\": \"" + String(repeating: "a", count: 70_000) + "\"}"
            let tooLarge = try await api(socket, "POST", "/v1/faults", huge)
            #expect(tooLarge.code == "413" && error(tooLarge)?["code"] as? String == "too_large")
            // Nothing half-applied.
            let faults = try await api(socket, "GET", "/v1/faults")
            #expect((faults.json["faults"] as? [[String: Any]])?.count == 1)
        }
    }
}
