import Foundation
import NIOCore
import NIOPosix
import Testing

/// faultctl, the built binary, against faultlined, the built binary: every verb, exit codes,
/// and `--json` printing exactly one object.
@Suite(.serialized)
struct FaultctlBinaryTests {
    static func faultctl(_ arguments: [String], socket: String) async throws -> (status: Int32, output: String, error: String) {
        let result = try await ChildProcess.run(
            DaemonProcess.binary.deletingLastPathComponent().appendingPathComponent("faultctl").path, arguments,
            environment: ProcessInfo.processInfo.environment.merging(["FAULTLINE_SOCKET": socket]) { $1 })
        return (result.status, result.text, result.error)
    }

    /// A socket that takes the connection and never answers (a wedged daemon): the command
    /// gives up at --timeout with exit 5 instead of hanging its script.
    @Test func silentDaemonEndsAtTheTimeout() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-mute-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/control.sock"
        // Listening, never accepting: connect(2) succeeds through the backlog.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0 && listen(fd, 4) == 0)
        let start = ContinuousClock.now
        let result = try await Self.faultctl(["list", "--timeout", "500ms", "--json"], socket: path)
        #expect(result.status == 5)
        #expect(result.output.contains(#""code":"no_answer""#), "\(result.output)")
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    /// Something on the socket that answers and then breaks off, or speaks another protocol:
    /// exit 5 (as for an unreachable daemon) with what happened, not a timeout the user never hit.
    @Test(arguments: [
        ("", "closed the connection before its answer was complete"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"listeners\"", "closed the connection before its answer was complete"),
        ("SSH-2.0-OpenSSH_9.2\r\n", "sent an answer that is not HTTP/1.1"),
    ])
    func brokenAnswerIsNotATimeout(_ answer: String, _ message: String) async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-broken-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AnswerThenCloseHandler(answer: answer))
                }
            }
            .bind(unixDomainSocketPath: folder + "/control.sock").get()
        let start = ContinuousClock.now
        let result = try await Self.faultctl(["list", "--json"], socket: folder + "/control.sock")
        #expect(result.status == 5)
        let error = try #require(
            (try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any])?["error"] as? [String: Any])
        #expect(error["code"] as? String == "broken_answer")
        #expect((error["message"] as? String)?.contains(message) == true, "\(result.output)")
        #expect(ContinuousClock.now - start < .seconds(10))   // well before the 30 s timeout
        try await server.close()
        try await group.shutdownGracefully()
    }

    @Test func everyVerbAgainstTheDaemon() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        let port = try unusedPort()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-faultctl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try """
            listeners:
              - {name: api, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(echo.port)}
            faults:
              - {name: slow, listener: api, enabled: false, latency: {delay: 100ms}}
            """.write(toFile: folder + "/a.yaml", atomically: true, encoding: .utf8)
        let socket = folder + "/control.sock"
        let controlPort = try unusedPort()
        let daemon = try DaemonProcess([
            "--rules", folder, "--no-metrics", "--control-socket", socket, "--control-address", "127.0.0.1:\(controlPort)",
        ])
        #expect(await daemon.waitForLog("started"))
        // The same API on loopback TCP, for runners that cannot reach a UNIX socket.
        let overTCP = try await Curl.run(["-w", "\n%{content_type}", "http://127.0.0.1:\(controlPort)/v1/listeners"])
        #expect(overTCP.text.hasPrefix(#"{"listeners":[{"connections_open":0"#))
        #expect(overTCP.text.hasSuffix("\napplication/json"))
        // faultctl reaches it too (from a container that cannot see the UNIX socket).
        let statusOverTCP = try await Self.faultctl(["status", "--socket", "tcp://127.0.0.1:\(controlPort)"], socket: socket)
        #expect(statusOverTCP.status == 0 && statusOverTCP.output.contains("127.0.0.1:\(port)"), "\(statusOverTCP.error)")
        // A web page cannot drive it: browsers' requests are refused, whatever they ask.
        for header in ["User-Agent: Mozilla/5.0 (X11; Linux x86_64)", "Origin: http://page.example"] {
            let fromAPage = try await Curl.run(
                ["-X", "POST", "-H", header, "-w", "\n%{http_code}", "http://127.0.0.1:\(controlPort)/v1/reset"])
            #expect(fromAPage.text.hasSuffix("\n403") && fromAPage.text.contains(#""code":"forbidden""#), "\(fromAPage.text)")
        }

        let status = try await Self.faultctl(["status"], socket: socket)
        #expect(status.status == 0)
        #expect(status.output.contains("LISTENER") && status.output.contains("127.0.0.1:\(port)"))

        let listed = try await Self.faultctl(["list", "--json"], socket: socket)
        #expect(listed.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(listed.output.utf8)) as? [String: Any]
        #expect((object?["faults"] as? [[String: Any]])?.first?["name"] as? String == "slow")
        #expect(listed.output.split(separator: "\n").count == 1)
        let one = try await Self.faultctl(["list", "slow"], socket: socket)
        #expect(one.status == 0)
        #expect(one.output.split(separator: "\n").count == 2 && one.output.contains("slow"))
        #expect(try await Self.faultctl(["list", "nope"], socket: socket).status == 3)

        #expect(try await Self.faultctl(["enable", "slow", "--for", "30s"], socket: socket).output == "slow enabled for 30s\n")
        let slow = await RawClient.run(port: port, send: 3, halfClose: true)
        #expect(slow.received == 3 && slow.elapsed >= .milliseconds(100))
        #expect(try await Self.faultctl(["disable", "slow"], socket: socket).status == 0)
        #expect(try await Self.faultctl(["disable", "nope"], socket: socket).status == 3)

        let injected = try await Self.faultctl(
            ["inject", "limit", "--listener", "api", "--bytes", "2", "--direction", "downstream", "--name", "short", "--for", "1m"],
            socket: socket)
        #expect(injected.status == 0, "\(injected.error)")
        #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 2)
        let invalid = try await Self.faultctl(["inject", "latency", "--listener", "api", "--delay", "soon"], socket: socket)
        #expect(invalid.status == 4)
        #expect(invalid.error.contains(#"latency.delay: "soon" is not a duration"#))
        #expect(try await Self.faultctl(["remove", "short"], socket: socket).status == 0)
        #expect(await RawClient.run(port: port, send: 10, halfClose: true).received == 10)

        // Two faults of one kind without names, in the same second: two default names.
        for _ in 0..<2 {
            let unnamed = try await Self.faultctl(["inject", "latency", "--listener", "api", "--delay", "1ms", "--for", "1m"], socket: socket)
            #expect(unnamed.status == 0, "\(unnamed.error)")
        }
        #expect(try await Self.faultctl(["reset"], socket: socket).output.contains("2 runtime faults dropped"))
        #expect(try await Self.faultctl(["reload"], socket: socket).output.hasPrefix("reloaded: 1 file, 1 fault, 1 listener"))
        #expect(try await Self.faultctl(["validate", folder], socket: socket).status == 0)
        try "listeners: [{name: x}]".write(toFile: folder + "/bad.yaml", atomically: true, encoding: .utf8)
        #expect(try await Self.faultctl(["validate", folder], socket: socket).status == 4)

        // Usage errors exit 2, as the help says.
        let unknownOption = try await Self.faultctl(["list", "--bogus"], socket: socket)
        #expect(unknownOption.status == 2)
        #expect(unknownOption.error.contains("Unknown option '--bogus'"))
        #expect(try await Self.faultctl(["inject", "latency"], socket: socket).status == 2)
        #expect(try await Self.faultctl(["frobnicate"], socket: socket).status == 2)
        #expect(try await Self.faultctl(["--help"], socket: socket).status == 0)

        let unreachable = try await Self.faultctl(["status"], socket: folder + "/none.sock")
        #expect(unreachable.status == 5)
        #expect(unreachable.error.contains("cannot reach faultlined"))

        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
        #expect(!FileManager.default.fileExists(atPath: socket))
        await echo.stop()
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: folder)
    }
}

extension FaultctlBinaryTests {
    /// Certificate and handshake faults from the command line (`--as` says which), on the wire
    /// against curl; `--as` left out is a usage error.
    @Test func certificateFaultInjectedFromTheCommandLine() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ctl-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/rules", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let (port, demoPort) = (try unusedPort(), try unusedPort())
        try """
            listeners:
              - {name: secure, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(demoPort), tls: {names: [127.0.0.1]}}
            """.write(toFile: folder + "/rules/a.yaml", atomically: true, encoding: .utf8)
        let socket = folder + "/control.sock"
        let daemon = try DaemonProcess([
            "--rules", folder + "/rules", "--no-metrics", "--control-socket", socket, "--demo", "127.0.0.1:\(demoPort)",
            "--state-dir", folder + "/state",
        ])
        #expect(await daemon.waitForLog("started"))
        let ca = try await Self.faultctl(["ca", "export"], socket: socket)
        try ca.output.write(toFile: folder + "/ca.pem", atomically: true, encoding: .utf8)
        let url = "https://127.0.0.1:\(port)/"
        #expect(try await Curl.run(["--cacert", folder + "/ca.pem", url]).status == 0)

        let injected = try await Self.faultctl(
            ["inject", "certificate", "--as", "expired", "--listener", "secure", "--for", "1m"], socket: socket)
        #expect(injected.status == 0, "\(injected.error)")
        // The default name: KIND-LISTENER-<time>-<four hex digits>.
        let name = String(injected.output.prefix { $0 != " " })
        #expect(name.wholeMatch(of: /certificate-secure-[0-9]+-[0-9a-f]{4}/) != nil, "\(name)")
        let expired = try await Curl.run(["--cacert", folder + "/ca.pem", url])
        #expect(expired.status == 60 && expired.log.contains("expired"), "\(expired.log)")
        #expect(try await Self.faultctl(["remove", name], socket: socket).status == 0)
        #expect(try await Self.faultctl(
            ["inject", "handshake", "--as", "close", "--listener", "secure", "--name", "hangup"], socket: socket).status == 0)
        #expect(try await Curl.run(["--cacert", folder + "/ca.pem", url]).status == 35)
        #expect(try await Self.faultctl(["remove", "hangup"], socket: socket).status == 0)
        #expect(try await Curl.run(["--cacert", folder + "/ca.pem", url]).status == 0)

        let missing = try await Self.faultctl(["inject", "certificate", "--listener", "secure"], socket: socket)
        #expect(missing.status == 2 && missing.error.contains("certificate needs --as"), "\(missing.error)")
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }
}

/// Waits for a request's head, writes `answer` and closes: a daemon that breaks off its answer.
private final class AnswerThenCloseHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let answer: String
    private var received = ""

    init(answer: String) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
        guard received.contains("\r\n\r\n") else { return }
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer(string: answer))).whenComplete { _ in channel.close(promise: nil) }
    }
}
