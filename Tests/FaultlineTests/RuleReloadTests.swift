import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// Reloading the rule folder in a running daemon: valid changes swap in whole, invalid ones
/// change nothing, listeners follow the files, and open connections are never dropped.
@Suite(.serialized)
struct RuleReloadTests {
    /// A daemon started from a rule folder, as the executable starts it.
    func withReloadingDaemon(
        _ files: [String: String],
        _ body: (_ daemon: Daemon, _ folder: String, _ echoPort: Int, _ group: EventLoopGroup) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-reload-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, text) in files {
            try text.replacingOccurrences(of: "ECHO", with: "\(echo.port)").write(
                toFile: folder + "/" + name, atomically: true, encoding: .utf8)
        }
        let rules = try RuleLoader.load(directory: folder).get()
        var options = DaemonOptions()
        options.metricsAddress = nil
        options.eventLoops = 2
        options.seed = 1
        options.rulesDirectory = folder
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .critical
        let daemon = try await Daemon.start(rules: rules, options: options, logger: logger)
        // The reloader serves reloads (asked for, file changes) while it runs, as in the executable.
        let reloading = Task { try await daemon.reloader.run() }
        do {
            try await body(daemon, folder, echo.port, group)
        } catch {
            Issue.record(error)
        }
        reloading.cancel()
        _ = await reloading.result
        await daemon.shutdown()
        await echo.stop()
        try? FileManager.default.removeItem(atPath: folder)
        try await group.shutdownGracefully()
    }

    func write(_ text: String, to path: String, echoPort: Int) throws {
        try text.replacingOccurrences(of: "ECHO", with: "\(echoPort)").write(toFile: path, atomically: true, encoding: .utf8)
    }

    let one = "listeners:\n  - {name: a, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n"

    @Test func validChangeAddsAListenerAndKeepsOpenConnections() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, group in
            let client = try await LineClient.connect(port: daemon.port("a"), group: group)
            #expect(try await client.exchange("before") == "before")

            try write(one + "  - {name: b, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n", to: folder + "/a.yaml", echoPort: echoPort)
            // The watcher may have seen the write first; either way the new rules are in force.
            #expect((await daemon.reloader.reload(reason: "test")).succeeded)
            #expect(daemon.proxy.listener(named: "b") != nil)
            let viaB = await RawClient.run(port: daemon.port("b"), send: 5, halfClose: true)
            #expect(viaB.received == 5 && viaB.end == .eof)
            #expect(try await client.exchange("after") == "after")
            try await client.close()
        }
    }

    @Test func invalidChangeKeepsTheLastGoodRules() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, _ in
            try write("listeners:\n  - {name: a, listen: 127.0.0.1:0, upstrem: x}\n", to: folder + "/a.yaml", echoPort: echoPort)
            let outcome = await daemon.reloader.reload(reason: "test")
            #expect(!outcome.succeeded)
            #expect(outcome.errors == [
                #"\#(folder)/a.yaml:2:5: listeners[0].upstream: required key is missing"#,
                #"\#(folder)/a.yaml:2:36: unknown key "listeners[0].upstrem"; did you mean "upstream"?"#,
            ])
            #expect(daemon.reloader.rules.listeners.map(\.name) == ["a"])
            let stillThere = await RawClient.run(port: daemon.port("a"), send: 3, halfClose: true)
            #expect(stillThere.received == 3)
            // A truncated file is an error like any other.
            try write("listeners:\n  - {name: a, listen: \"127.0", to: folder + "/a.yaml", echoPort: echoPort)
            #expect(!(await daemon.reloader.reload(reason: "test")).succeeded)
        }
    }

    @Test func removedListenerLetsItsConnectionsFinish() async throws {
        let two = one + "  - {name: b, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n"
        try await withReloadingDaemon(["a.yaml": two]) { daemon, folder, echoPort, group in
            let portB = daemon.port("b")
            let client = try await LineClient.connect(port: portB, group: group)
            #expect(try await client.exchange("1") == "1")
            try write(one, to: folder + "/a.yaml", echoPort: echoPort)
            #expect((await daemon.reloader.reload(reason: "test")).succeeded)
            #expect(daemon.proxy.listener(named: "b") == nil)
            // No new connections on b, but the open one carries on.
            // (Tests run side by side: the freed port may already be another test's, so what
            // counts is that nothing of b answers there.)
            let probe = await RawClient.run(port: portB, timeout: .seconds(2))
            #expect(probe.end == .refused || probe.received == 0)
            #expect(try await client.exchange("2") == "2")
            try await client.close()
        }
    }

    @Test func changedUpstreamAppliesToNewConnections() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, group in
            let open = try await LineClient.connect(port: daemon.port("a"), group: group)
            #expect(try await open.exchange("x") == "x")
            let pushed = try await TestServer.start(group: group) { ReplyAfterEOFHandler(replyBytes: 10) }
            try write(one.replacingOccurrences(of: "ECHO", with: "\(pushed.port)"), to: folder + "/a.yaml", echoPort: echoPort)
            #expect((await daemon.reloader.reload(reason: "test")).succeeded)
            // The open connection still talks to the echo server...
            #expect(try await open.exchange("y") == "y")
            // ...a new one reaches the new upstream (8-byte count + 10 bytes).
            let fresh = await RawClient.run(port: daemon.port("a"), send: 4, halfClose: true)
            #expect(fresh.received == 18)
            try await open.close()
            await pushed.stop()
        }
    }

    @Test func faultSwitchedOnByAFileReachesOpenConnections() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, group in
            let open = try await LineClient.connect(port: daemon.port("a"), group: group)
            #expect(try await open.exchange("x") == "x")
            let slow = "faults:\n  - {name: slow, listener: a, direction: downstream, latency: {delay: 200ms}}\n"
            try write(slow, to: folder + "/slow.yaml", echoPort: echoPort)
            #expect((await daemon.reloader.reload(reason: "test")).succeeded)
            let start = ContinuousClock.now
            #expect(try await open.exchange("y") == "y")
            #expect(ContinuousClock.now - start >= .milliseconds(200))
            try await open.close()
        }
    }

    @Test func unchangedReloadIsASuccessfulNoOp() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, _, _, _ in
            let port = daemon.port("a")
            let outcome = await daemon.reloader.reload(reason: "test")
            #expect(outcome.succeeded && outcome.unchanged)
            #expect(daemon.port("a") == port)
        }
    }

    @Test func fileChangeIsPickedUpWithoutAsking() async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, _ in
            let written = ContinuousClock.now
            try write(one + "  - {name: c, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n", to: folder + "/c-tmp", echoPort: echoPort)
            // Write-and-rename, as editors and config management do.
            rename(folder + "/c-tmp", folder + "/a.yaml")
            let deadline = ContinuousClock.now + .seconds(10)
            while daemon.proxy.listener(named: "c") == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(daemon.proxy.listener(named: "c") != nil)
            #expect(ContinuousClock.now - written < .seconds(2))
        }
    }

    enum FolderChange: CaseIterable, Sendable {
        /// `rm -rf rules && git checkout rules`.
        case removedAndMadeAgain
        /// A deploy that moves the old folder aside and puts a new one in place.
        case movedAwayAndMadeAgain
        /// `--rules` through a symbolic link that a deploy switches to another release's folder.
        case symbolicLinkSwitched
    }

    /// The folder the rule path names changes: its rules are read, and later edits in it are
    /// seen too (the watch follows the path, not the first folder).
    @Test(arguments: FolderChange.allCases)
    func watchFollowsTheRulePath(_ change: FolderChange) async throws {
        try await withReloadingDaemon(["a.yaml": one]) { daemon, folder, echoPort, _ in
            func waitForListener(_ name: String) async throws -> Bool {
                let deadline = ContinuousClock.now + .seconds(10)
                while daemon.proxy.listener(named: name) == nil, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(10))
                }
                return daemon.proxy.listener(named: name) != nil
            }
            let aside = folder + "-aside"
            defer { try? FileManager.default.removeItem(atPath: aside) }
            switch change {
            case .removedAndMadeAgain:
                try FileManager.default.removeItem(atPath: folder)
            case .movedAwayAndMadeAgain:
                #expect(rename(folder, aside) == 0)
            case .symbolicLinkSwitched:
                // The path becomes a link to the same folder (nothing to read), then to another.
                #expect(rename(folder, aside) == 0)
                #expect(symlink(aside, folder) == 0)
            }
            // Meanwhile the last good rules stay in force.
            try await Task.sleep(for: .milliseconds(300))
            #expect(daemon.proxy.listener(named: "a") != nil)
            let target = change == .symbolicLinkSwitched ? folder + "-release2" : folder
            defer { try? FileManager.default.removeItem(atPath: folder + "-release2") }
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            try write(one + "  - {name: d, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n", to: target + "/a.yaml", echoPort: echoPort)
            if change == .symbolicLinkSwitched {
                #expect(symlink(target, folder + "-link") == 0)
                #expect(rename(folder + "-link", folder) == 0)   // as `ln -sfn` does, in one step
            }
            #expect(try await waitForListener("d"))
            try write(one + "  - {name: e, listen: 127.0.0.1:0, upstream: 127.0.0.1:ECHO}\n", to: target + "/a.yaml", echoPort: echoPort)
            #expect(try await waitForListener("e"))
        }
    }
}
