import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix
import Testing

/// The built `faultlined` as a user runs it: start errors, `--check`, and SIGTERM draining.
@Suite(.serialized)
struct DaemonBinaryTests {
    func ruleFolder(_ files: [String: String]) throws -> String {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("faultline-rules-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, text) in files {
            try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
        }
        return directory
    }

    @Test func badRuleFileStopsTheStartWithFileLineColumn() async throws {
        let folder = try ruleFolder([
            "api.yaml": """
                listeners:
                  - name: api
                    listen: 127.0.0.1:0
                    upstream: db
                  - name: api
                    listen: 127.0.0.1:0
                    upstream: 127.0.0.1:1
                """
        ])
        let (status, _, stderr) = try await DaemonProcess.run(["--rules", folder, "--no-metrics"])
        #expect(status == 1)
        #expect(stderr.contains(#"\#(folder)/api.yaml:4:15: listeners[0].upstream: "db" is not host:port (it has no port)"#))
        // The second "api" is reported in the same run, though the first has an error of its own.
        #expect(stderr.contains(#"\#(folder)/api.yaml:5:5: listener "api" is already declared at \#(folder)/api.yaml:2:5"#))
        #expect(stderr.contains("faultlined: 2 errors in \(folder); nothing started"))
        try? FileManager.default.removeItem(atPath: folder)
    }

    @Test func checkPrintsWhatWouldRun() async throws {
        let folder = try ruleFolder([
            "a.yaml": "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n"
        ])
        let (status, stdout, _) = try await DaemonProcess.run(["--check", "--rules", folder])
        #expect(status == 0)
        #expect(stdout == "rules OK: 1 file, 1 listener: a 127.0.0.1:0 -> 127.0.0.1:9\n")
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// Options that would be left out without a word are usage errors (exit 64), naming both.
    @Test(arguments: [
        (["--check", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--rules", "rules"], "--rules rules and --listen/--upstream"),
        (["--check", "--protocol", "http"], "--protocol is for the one-off listener"),
        (["--check", "--listen", "127.0.0.1:1"], "--listen and --upstream go together"),
        (["--check", "--no-metrics", "--metrics", "127.0.0.1:1"], "--no-metrics and --metrics 127.0.0.1:1"),
        (["--check", "--no-control", "--control-socket", "/tmp/x.sock"], "--no-control and --control-socket"),
    ])
    func optionsThatWouldBeIgnoredAreRefused(_ arguments: [String], _ message: String) async throws {
        let (status, stdout, stderr) = try await DaemonProcess.run(arguments)
        #expect(status == 64)
        #expect(stdout.isEmpty)
        #expect(stderr.contains(message), "\(stderr)")
    }

    @Test func tellsSystemdWhenReadyReloadingAndStopping() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fl-notify-\(UUID().uuidString)").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd); unlink(path) }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)

        let daemon = try DaemonProcess(
            ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--no-metrics"],
            environment: ["NOTIFY_SOCKET": path])
        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = recv(fd, &buffer, buffer.count, 0)
            return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
        }
        #expect(receive().hasPrefix("READY=1\nSTATUS=0 files, 1 listener: default"))
        // `systemctl reload` (SIGHUP): reloading, then ready again.
        daemon.signal(SIGHUP)
        #expect(receive().hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        #expect(receive().hasPrefix("READY=1\nSTATUS=0 files, 1 listener: default"))
        daemon.signal(SIGTERM)
        #expect(receive() == "STOPPING=1")
        await daemon.expectCleanExit()
    }

    @Test func sigtermLetsOpenConnectionsFinish() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(echo.port)",
            "--no-metrics", "--grace", "20s", "--log-level", "info",
        ])
        #expect(await daemon.waitForLog("started"))

        let connection = try await LineClient.connect(port: port, group: group)
        #expect(try await connection.exchange("before") == "before")

        daemon.signal(SIGTERM)
        #expect(await daemon.waitForLog("draining"))
        // No new connections once draining...
        await #expect(throws: IOError.self) { _ = try await LineClient.connect(port: port, group: group) }
        // ...but the open one still works.
        #expect(try await connection.exchange("after") == "after")

        let closedAt = ContinuousClock.now
        try await connection.close()
        let status = await daemon.waitForExit()
        #expect(status == 0)
        // It left as soon as the last connection ended, long before the 20 s grace period.
        #expect(ContinuousClock.now - closedAt < .seconds(10))

        await echo.stop()
        try await group.shutdownGracefully()
    }

    /// Control requests that arrive while the proxy drains are refused at once, and the
    /// daemon still exits: a reload or a new fault must neither hang its caller nor keep the
    /// control server (and so the daemon) from stopping.
    @Test func controlChangesDuringTheDrainAreRefused() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-drain-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "listeners: [{name: api, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(echo.port)}]\n"
            .write(toFile: folder + "/a.yaml", atomically: true, encoding: .utf8)
        let socket = folder + "/control.sock"
        let daemon = try DaemonProcess([
            "--rules", folder, "--no-metrics", "--control-socket", socket, "--grace", "5s", "--log-level", "info",
        ])
        #expect(await daemon.waitForLog("started"))
        let connection = try await LineClient.connect(port: port, group: group)
        #expect(try await connection.exchange("hello") == "hello")

        daemon.signal(SIGTERM)
        #expect(await daemon.waitForLog("draining"))
        for (method, path, body) in [
            ("POST", "/v1/reload", nil),
            ("POST", "/v1/faults", #"{"fault": {"name": "x", "listener": "api", "refuse": {}}}"#),
        ] {
            var arguments = ["--unix-socket", socket, "-X", method, "-w", "\n%{http_code}", "http://faultline\(path)"]
            if let body { arguments += ["--data-binary", body] }
            let reply = try await Curl.run(arguments, maxTime: 5)
            #expect(reply.text.hasSuffix("\n503"), "\(method) \(path): \(reply.text)")
            #expect(reply.text.contains(#""code":"shutting_down""#))
        }
        // The connection still works until the grace period ends; then the daemon exits.
        #expect(try await connection.exchange("after") == "after")
        #expect(await daemon.waitForExit() == 0)

        await echo.stop()
        try await group.shutdownGracefully()
    }

    @Test func sigtermClosesWhatIsLeftAfterTheGracePeriod() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let daemon = try DaemonProcess([
            "--listen", "127.0.0.1:\(port)", "--upstream", "127.0.0.1:\(echo.port)",
            "--no-metrics", "--grace", "300ms",
        ])
        #expect(await daemon.waitForLog("started"))
        let connection = try await LineClient.connect(port: port, group: group)
        #expect(try await connection.exchange("hello") == "hello")

        let signalledAt = ContinuousClock.now
        daemon.signal(SIGTERM)
        try await connection.closed()
        #expect(ContinuousClock.now - signalledAt >= .milliseconds(300))
        await daemon.expectCleanExit()

        await echo.stop()
        try await group.shutdownGracefully()
    }
}

/// A plain blocking socket client that sends a line and reads one back. Every call is bounded
/// by a 10 s socket timeout, so a test can fail but never hang.
final class LineClient: Sendable {
    let fd: Int32

    private init(fd: Int32) {
        self.fd = fd
    }

    static func connect(port: Int, group: EventLoopGroup) async throws -> LineClient {
        try await offThePool { try connectBlocking(port: port) }
    }

    static func connectBlocking(port: Int) throws -> LineClient {
        guard let fd = RawClient.connectedSocket(port: port, timeout: .seconds(10)) else {
            throw IOError(errnoCode: errno, reason: "connect")
        }
        return LineClient(fd: fd)
    }

    /// Sends `text` + newline and returns the line that comes back.
    func exchange(_ text: String) async throws -> String {
        try await offThePool { try self.exchangeBlocking(text) }
    }

    /// An exchange timed on the client's own thread (a busy test run cannot stretch it).
    func timedExchange(_ text: String) async throws -> (reply: String, took: Duration) {
        try await offThePool {
            let start = ContinuousClock.now
            let reply = try self.exchangeBlocking(text)
            return (reply, ContinuousClock.now - start)
        }
    }

    /// `tries` exchanges of `text`: whether every reply was the text, and the fastest. A delay
    /// that still applies stretches every exchange, while a stall of a busy test machine
    /// rarely hits all of them: "not delayed" is checked on the fastest.
    func fastestExchange(_ text: String, tries: Int = 3) async throws -> (allEchoed: Bool, fastest: Duration) {
        var allEchoed = true
        var fastest = Duration.seconds(3600)
        for _ in 0..<tries {
            let (reply, took) = try await timedExchange(text)
            allEchoed = allEchoed && reply == text
            fastest = min(fastest, took)
        }
        return (allEchoed, fastest)
    }

    func exchangeBlocking(_ text: String) throws -> String {
        let bytes = Array((text + "\n").utf8)
        guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else {
            throw IOError(errnoCode: errno, reason: "send")
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while received.last != UInt8(ascii: "\n") {
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else {
                throw IOError(errnoCode: count == 0 ? EPIPE : errno, reason: count == 0 ? "recv: end of stream" : "recv")
            }
            received += chunk[0..<count]
        }
        return String(decoding: received.dropLast(), as: UTF8.self)
    }

    func close() async throws {
        Glibc.close(fd)
    }

    /// Returns when the peer closes the connection (end of file or reset).
    func closed() async throws {
        try await offThePool { try self.closedBlocking() }
    }

    func closedBlocking() throws {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 { return }
            if count < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { throw IOError(errnoCode: errno, reason: "recv timed out") }
                return
            }
        }
    }
}
