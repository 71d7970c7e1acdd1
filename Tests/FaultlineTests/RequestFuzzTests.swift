import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// Property tests where libFuzzer cannot reach (Tests/Fuzz covers the rule parsers): mutated
/// client bytes through a real HTTP listener, and mutated requests to the control API and the
/// Toxiproxy API. Whatever arrives, the daemon answers or closes, never crashes, keeps the
/// error shapes, and serves a good request afterwards. Seeded, so a failure replays.
struct RequestFuzzTests {
    /// Byte-level mutations of seed inputs: flips, insertions, deletions, duplications, cuts.
    struct Mutator {
        var state: UInt64

        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }

        mutating func below(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(next() % UInt64(bound)) }

        mutating func mutate(_ seed: [UInt8]) -> [UInt8] {
            var bytes = seed
            for _ in 0..<(1 + below(4)) {
                let at = below(bytes.count + 1)
                switch below(6) {
                case 0 where !bytes.isEmpty: bytes[min(at, bytes.count - 1)] ^= UInt8(1 << below(8))
                case 1: bytes.insert(UInt8(truncatingIfNeeded: next()), at: at)
                case 2: bytes.insert(contentsOf: Array(":\r\n{}\"0 -".utf8).shuffledBy(&self).prefix(1 + below(3)), at: at)
                case 3 where at < bytes.count: bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(16)))
                case 4 where at < bytes.count: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + below(64))], at: at)
                default: bytes = Array(bytes.prefix(at))
                }
            }
            return bytes
        }
    }

    static let httpSeeds: [String] = [
        "GET /bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-faultline-delay: 1ms\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HEAD / HTTP/1.0\r\n\r\n",
    ]

    @Test func mutatedRequestsThroughAnHTTPListener() async throws {
        let demoPort = try unusedPort()
        var options = DaemonOptions()
        options.seed = 3
        options.metricsAddress = nil
        options.eventLoops = 2
        options.demoAddress = HostPort(host: "127.0.0.1", port: demoPort)
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .critical
        var rule = TestDaemon.listener(upstreamPort: demoPort)
        rule.protocol = .http
        rule.http.headerFaults.enabled = true
        rule.http.headTimeout = .milliseconds(500)
        let daemon = try await Daemon.start(rules: RuleSet(listeners: [rule]), options: options, logger: logger)
        let demo = Task { await daemon.demoServer!.run() }
        let port = daemon.port()
        var mutator = Mutator(state: 20261201)
        var answered = 0
        for round in 0..<300 {
            let seed = Array(Self.httpSeeds[round % Self.httpSeeds.count].utf8)
            let bytes = mutator.mutate(seed)
            let result = await RawClient.sendBytes(port: port, bytes, timeout: .seconds(5))
            #expect(result.end != .timeout, "round \(round): no answer and no close for \(bytes.map { String($0, radix: 16) }.joined(separator: " "))")
            if result.received > 0 { answered += 1 }
        }
        #expect(answered > 0)
        // Still serving, and nothing is left open.
        let good = await RawClient.sendBytes(port: port, Array("GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        #expect(good.received > 10 && good.end == .eof)
        var open = -1
        let deadline = ContinuousClock.now + .seconds(5)
        while open != 0, ContinuousClock.now < deadline {
            open = await daemon.proxy.listener(named: "test")!.openConnections()
            if open != 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(open == 0)
        await daemon.demoServer!.close()
        await demo.value
        await daemon.shutdown()
    }

    @Test func mutatedControlAndToxiproxyRequests() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let echo = try await TestServer.start(group: group) { EchoHandler() }
        var options = DaemonOptions()
        options.metricsAddress = nil
        options.eventLoops = 1
        options.controlAddress = HostPort(host: "127.0.0.1", port: 0)
        options.toxiproxyAddress = HostPort(host: "127.0.0.1", port: 0)
        var logger = Logger(label: "faultline.test")
        logger.logLevel = .critical
        let daemon = try await Daemon.start(
            rules: RuleSet(listeners: [TestDaemon.listener("api", upstreamPort: echo.port)]), options: options, logger: logger)
        let reloading = Task { try await daemon.reloader.run() }
        let servingControl = Task { await daemon.controlTCPServer!.run() }
        let servingToxiproxy = Task { await daemon.toxiproxyServer!.run() }
        let controlPort = daemon.controlTCPServer!.localAddress.port!
        let toxiproxyPort = daemon.toxiproxyServer!.localAddress.port!

        func request(_ method: String, _ path: String, _ body: String) -> [UInt8] {
            frame(Array(method.utf8), Array(path.utf8), Array(body.utf8))
        }
        func frame(_ method: [UInt8], _ path: [UInt8], _ body: [UInt8]) -> [UInt8] {
            method + Array(" ".utf8) + path + Array(" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
        }
        let controlSeeds: [(String, String, String)] = [
            ("POST", "/v1/faults", #"{"fault": {"name": "f", "listener": "api", "latency": {"delay": "5ms"}}, "for": "30s"}"#),
            ("POST", "/v1/faults", #"{"fault": {"name": "g", "listener": "api", "abort": {"status": 503}}}"#),
            ("POST", "/v1/faults/f/enable", #"{"for": "1s"}"#),
            ("DELETE", "/v1/faults/f", ""),
            ("GET", "/v1/status", ""),
            ("POST", "/v1/reset", ""),
        ]
        let toxiproxySeeds: [(String, String, String)] = [
            ("POST", "/proxies", #"{"name":"p","listen":"127.0.0.1:0","upstream":"127.0.0.1:\#(echo.port)"}"#),
            ("POST", "/proxies/p/toxics", #"{"type":"latency","stream":"upstream","toxicity":0.5,"attributes":{"latency":5,"jitter":1}}"#),
            ("POST", "/proxies/p/toxics", #"{"name":"s","type":"slicer","attributes":{"average_size":10,"size_variation":2,"delay":5}}"#),
            ("PATCH", "/proxies/p/toxics/latency_upstream", #"{"attributes":{"latency":7}}"#),
            ("POST", "/populate", #"[{"name":"q","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"}]"#),
            ("DELETE", "/proxies/p", ""),
            ("POST", "/reset", ""),
        ]
        var mutator = Mutator(state: 42)
        for round in 0..<400 {
            let toxiproxy = round % 2 == 1
            let seeds = toxiproxy ? toxiproxySeeds : controlSeeds
            let (method, path, body) = seeds[mutator.below(seeds.count)]
            let bytes: [UInt8]
            switch round % 5 {
            case 0:  // as it is, so that the state the mutants meet changes
                bytes = request(method, path, body)
            case 1:  // the whole request, framing included
                bytes = mutator.mutate(request(method, path, body))
            case 2:
                bytes = frame(Array(method.utf8), mutator.mutate(Array(path.utf8)), Array(body.utf8))
            default:  // the body, correctly framed: what the APIs decode
                bytes = frame(Array(method.utf8), Array(path.utf8), mutator.mutate(Array(body.utf8)))
            }
            let reply = await RawClient.exchange(port: toxiproxy ? toxiproxyPort : controlPort, bytes, timeout: .milliseconds(300))
            guard let status = reply.status else { continue }  // closed, or waiting for a body that never comes: fine
            #expect(status < 500 || (toxiproxy && reply.body.contains("\"error\"")), "round \(round): \(status) \(reply.body)")
            if status >= 400, status != 405, !reply.body.hasPrefix("404 page not found"), !reply.body.hasPrefix("User agent") {
                #expect(reply.body.contains("\"error\""), "round \(round): \(status) without the error shape: \(reply.body)")
            }
        }
        // Both APIs still answer, and the listener still forwards.
        #expect(await RawClient.exchange(port: controlPort, request("GET", "/v1/status", "")).status == 200)
        #expect(await RawClient.exchange(port: toxiproxyPort, request("GET", "/version", "")).status == 200)
        let client = try await LineClient.connect(port: daemon.port("api"), group: group)
        _ = await RawClient.exchange(port: controlPort, request("POST", "/v1/reset", ""))
        #expect(try await client.exchange("alive") == "alive")
        try await client.close()

        reloading.cancel()
        _ = await reloading.result
        await daemon.controlTCPServer!.close()
        await daemon.toxiproxyServer!.close()
        await servingControl.value
        await servingToxiproxy.value
        await daemon.shutdown()
        await echo.stop()
        try await group.shutdownGracefully()
    }
}

extension Array where Element == UInt8 {
    func shuffledBy(_ mutator: inout RequestFuzzTests.Mutator) -> [UInt8] {
        var copy = self
        for index in copy.indices.reversed() where index > 0 { copy.swapAt(index, mutator.below(index + 1)) }
        return copy
    }
}
