import Foundation
import NIOCore
import NIOPosix
import NIOConcurrencyHelpers
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Hot reload with the built binary while traffic flows: the rule folder is rewritten in every
/// way editors and deploy tools do it, valid and not, and no client exchange may fail.
@Suite(.serialized)
struct ReloadStormTests {
    /// The files of one step. `main.yaml` (the listener the clients use) is never touched;
    /// `storm.yaml` holds a second listener, whose port alternates, and faults on `main` that
    /// reach the open connections but keep every stream byte-exact.
    struct Storm {
        let echoPort: Int
        let mainPort: Int
        let extraPorts: [Int]

        var main: String {
            "listeners:\n  - {name: main, listen: 127.0.0.1:\(mainPort), upstream: 127.0.0.1:\(echoPort)}\n"
        }

        func valid(_ step: Int) -> String {
            let fault = step % 2 == 0
                ? "latency: {delay: \(1 + step % 3)ms, apply: chunk}"
                : "slicer: {size: \(300 + step), variation: 100, delay: 1ms}"
            return """
                listeners:
                  - {name: extra-\(step), listen: 127.0.0.1:\(extraPort(step)), upstream: 127.0.0.1:\(echoPort)}
                faults:
                  - {name: shaped-\(step), listener: main, probability: 0.5, \(fault)}

                """
        }

        func extraPort(_ step: Int) -> Int { extraPorts[step % 2] }

        func invalid(_ step: Int) -> String {
            valid(step).replacingOccurrences(of: "upstream:", with: "upstrem:")
        }

        /// A file cut off while it was being written: inside a flow mapping, so never valid.
        func truncated(_ step: Int) -> String {
            let text = valid(step)
            return String(text[..<text.range(of: "upstream:")!.lowerBound])
        }
    }

    enum Edit: CaseIterable {
        case writeInPlace, invalid, truncated, writeAndRename, truncateAndWrite

        var isValid: Bool { self != .invalid && self != .truncated }
    }

    @Test func reloadStormDropsNoExchange() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let storm = Storm(echoPort: echo.port, mainPort: try unusedPort(), extraPorts: [try unusedPort(), try unusedPort()])
        let metricsPort = try unusedPort()
        let folder = try Self.folder(["main.yaml": storm.main, "storm.yaml": storm.valid(0)])
        let daemon = try DaemonProcess([
            "--rules", folder, "--metrics", "127.0.0.1:\(metricsPort)", "--log-level", "info", "--event-loops", "2",
        ])
        #expect(await daemon.waitForLog("started"))

        let clients = StormClients(port: storm.mainPort, count: 64)
        clients.start()

        let path = folder + "/storm.yaml"
        var expected = (success: 0, failure: 0)
        var latencies: [Duration] = []
        var lastValid = 0
        let steps = 200
        for step in 1...steps {
            let edit = Edit.allCases[(step - 1) % Edit.allCases.count]
            let written: ContinuousClock.Instant
            switch edit {
            case .writeInPlace:
                try Self.writeInPlace(storm.valid(step), to: path)
            case .invalid:
                try Self.writeInPlace(storm.invalid(step), to: path)
            case .truncated:
                try Self.writeInPlace(storm.truncated(step), to: path)
            case .writeAndRename:
                try storm.valid(step).write(toFile: folder + "/.storm.yaml.tmp", atomically: false, encoding: .utf8)
                #expect(rename(folder + "/.storm.yaml.tmp", path) == 0)
            case .truncateAndWrite:
                try Self.truncateThenWrite(storm.valid(step), to: path)
            }
            written = .now
            if edit.isValid {
                expected.success += 1
                lastValid = step
            } else {
                expected.failure += 1
            }
            // Each edit is one reload: wait for it before the next one.
            let counted = await Self.waitForReloads(metricsPort: metricsPort, total: expected.success + expected.failure)
            #expect(counted != nil, "step \(step) (\(edit)): no reload seen")
            guard let counted else { break }
            if edit.isValid { latencies.append(ContinuousClock.now - written) }
            #expect(counted.success == expected.success && counted.failure == expected.failure, "after step \(step) (\(edit)): counted \(counted), expected \(expected)")
            if counted.success != expected.success || counted.failure != expected.failure { break }
        }

        // The clients keep going a little after the last reload, then stop.
        let (exchanges, failures, firstFailure) = await clients.stop()
        #expect(failures == 0, "first failure: \(firstFailure ?? "-")")
        #expect(exchanges > 64 * 10)

        // The last valid rules are in force: its listener answers, the one before it is gone.
        let metrics = try await Self.scrape(metricsPort: metricsPort)
        #expect(metrics.contains("faultline_rules_last_reload_success \(Edit.allCases[(steps - 1) % 5].isValid ? 1 : 0)"))
        let viaLast = await RawClient.run(port: storm.extraPort(lastValid), send: 7, halfClose: true)
        #expect(viaLast.received == 7 && viaLast.end == .eof)
        #expect(await RawClient.run(port: storm.extraPort(lastValid + 1)).end == .refused)

        latencies.sort()
        let p50 = latencies[latencies.count / 2]
        let p99 = latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
        print(
            "reload storm: \(steps) edits (\(expected.success) valid, \(expected.failure) invalid), "
                + "\(exchanges) exchanges by 64 clients, \(failures) failed; "
                + "write to in force (100 ms debounce included) p50 \(p50) p99 \(p99) max \(latencies.last!)")

        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
        await echo.stop()
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func sighupWithUnchangedFilesIsASuccessfulNoOp() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let metricsPort = try unusedPort()
        let folder = try Self.folder([
            "a.yaml": "listeners:\n  - {name: a, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(echo.port)}\n"
        ])
        let daemon = try DaemonProcess(["--rules", folder, "--metrics", "127.0.0.1:\(metricsPort)", "--log-level", "info"])
        #expect(await daemon.waitForLog("started"))
        let open = try await LineClient.connect(port: port, group: group)
        #expect(try await open.exchange("before") == "before")

        daemon.signal(SIGHUP)
        #expect(await daemon.waitForLog("rules unchanged"))
        let counted = await Self.waitForReloads(metricsPort: metricsPort, total: 1)
        #expect(counted?.success == 1 && counted?.failure == 0)
        let metrics = try await Self.scrape(metricsPort: metricsPort)
        #expect(metrics.contains("faultline_rules_last_reload_success 1"))
        #expect(try await open.exchange("after") == "after")

        try await open.close()
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
        await echo.stop()
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: folder)
    }

    // MARK: Helpers

    static func folder(_ files: [String: String]) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fl-storm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, text) in files {
            try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
        }
        return directory
    }

    /// open(O_TRUNC) and one write: the reader may see the file empty for a moment.
    static func writeInPlace(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "open") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw IOError(errnoCode: errno, reason: "write") }
    }

    /// truncate(2), then the new text in two writes: three changes that must be one reload.
    static func truncateThenWrite(_ text: String, to path: String) throws {
        guard truncate(path, 0) == 0 else { throw IOError(errnoCode: errno, reason: "truncate") }
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "open") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let half = bytes.count / 2
        guard write(fd, bytes, half) == half,
              bytes[half...].withUnsafeBufferPointer({ write(fd, $0.baseAddress, $0.count) }) == bytes.count - half
        else { throw IOError(errnoCode: errno, reason: "write") }
    }

    /// Polls `/metrics` until the reload counters add up to `total` (at most 10 s).
    static func waitForReloads(metricsPort: Int, total: Int) async -> (success: Int, failure: Int)? {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let text = try? await scrape(metricsPort: metricsPort) {
                let success = counter(text, #"faultline_rules_reload_total{result="success"}"#)
                let failure = counter(text, #"faultline_rules_reload_total{result="failure"}"#)
                if success + failure >= total { return (success, failure) }
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }

    static func counter(_ metrics: String, _ series: String) -> Int {
        for line in metrics.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Int(Double(line.dropFirst(series.count + 1)) ?? 0)
        }
        return 0
    }

    /// GET /metrics with a plain socket (HTTP/1.0, so the answer ends at end of file).
    static func scrape(metricsPort: Int) async throws -> String {
        try await offThePool {
            guard let fd = RawClient.connectedSocket(port: metricsPort, timeout: .seconds(5)) else {
                throw IOError(errnoCode: errno, reason: "connect")
            }
            defer { close(fd) }
            let request = Array("GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
            _ = send(fd, request, request.count, Int32(MSG_NOSIGNAL))
            var response: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 16384)
            while true {
                let count = recv(fd, &chunk, chunk.count, 0)
                if count <= 0 { break }
                response += chunk[0..<count]
            }
            return String(decoding: response, as: UTF8.self)
        }
    }
}

/// Clients that each hold a connection and check byte-exact echoes of random lines until told
/// to stop, reconnecting every 50 exchanges so that new connections meet the reloads too.
/// Plain threads with blocking sockets (10 s timeouts), so that a stuck exchange fails.
final class StormClients: Sendable {
    let port: Int
    let count: Int
    private let stopping = Atomic<Bool>(false)
    private let exchanges = Atomic<Int>(0)
    private let failures = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let firstFailure = NIOLockedValueBox<String?>(nil)

    init(port: Int, count: Int) {
        self.port = port
        self.count = count
    }

    func start() {
        for index in 0..<count {
            Thread { [self] in
                run(seed: UInt64(index + 1))
                finished.add(1, ordering: .releasing)
            }.start()
        }
    }

    /// Stops the clients (each finishes its exchange) and returns the totals.
    func stop() async -> (exchanges: Int, failures: Int, firstFailure: String?) {
        stopping.store(true, ordering: .releasing)
        let deadline = ContinuousClock.now + .seconds(30)
        while finished.load(ordering: .acquiring) < count, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        if finished.load(ordering: .acquiring) < count { fail("clients did not stop within 30 s") }
        return (exchanges.load(ordering: .relaxed), failures.load(ordering: .relaxed), firstFailure.withLockedValue { $0 })
    }

    private func fail(_ what: String) {
        failures.add(1, ordering: .relaxed)
        firstFailure.withLockedValue { if $0 == nil { $0 = what } }
    }

    private func run(seed: UInt64) {
        var random = seed &* 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return random
        }
        while !stopping.load(ordering: .acquiring) {
            guard let client = try? LineClient.connectBlocking(port: port) else {
                fail("connect to 127.0.0.1:\(port) failed: errno \(errno)")
                return
            }
            defer { Glibc.close(client.fd) }
            for _ in 0..<50 where !stopping.load(ordering: .acquiring) {
                let length = 1 + Int(next() % 2000)
                let line = String((0..<length).map { _ in Character(Unicode.Scalar(UInt8(97 + next() % 26))) })
                do {
                    let echoed = try client.exchangeBlocking(line)
                    if echoed != line {
                        fail("echo differs: sent \(line.count) bytes, got \(echoed.count)")
                        return
                    }
                    exchanges.add(1, ordering: .relaxed)
                } catch {
                    fail("exchange failed: \(error)")
                    return
                }
            }
        }
    }
}
