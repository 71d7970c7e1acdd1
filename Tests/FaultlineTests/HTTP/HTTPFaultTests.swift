import Faultline
import FaultlineRules
import Foundation
import Testing

/// Every per-request fault on the wire, with curl as the client.
@Suite struct HTTPFaultTests {
    func fault(_ name: String, _ action: FaultAction, match: RequestMatch = RequestMatch(), probability: Double = 1,
               clients: [CIDR] = []) -> FaultRule {
        FaultRule(name: name, listener: "test", probability: probability, clients: clients, match: match, action: action)
    }

    @Test func abortAnswersWithoutTheUpstream() async throws {
        let abort = HTTPAbort(
            status: 429, headers: [.init(name: "Retry-After", value: "7"), .init(name: "Content-Type", value: "application/json")],
            body: #"{"error":"slow down"}"#)
        try await withHTTPProxy(faults: [fault("busy", .abort(abort))]) { daemon, port, _ in
            let result = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            #expect(result.text.hasPrefix("HTTP/1.1 429 Too Many Requests\r\n"))
            #expect(result.text.contains("Retry-After: 7\r\n"))
            #expect(result.text.contains("Content-Length: 21\r\n"))
            #expect(result.text.hasSuffix("\r\n\r\n" + #"{"error":"slow down"}"#))
            #expect(await daemon.injections("busy") == 1)
            #expect(await daemon.metric(#"faultline_http_requests_total{listener="test",code="4xx"}"#) == 1)
            // The answer made once for the rule, twice on one kept connection.
            let twice = try await Curl.run(["-v", "http://127.0.0.1:\(port)/a", "http://127.0.0.1:\(port)/b"])
            #expect(twice.text == #"{"error":"slow down"}{"error":"slow down"}"#)
            #expect(twice.log.contains("Re-using existing connection"))
            // Made for the request: a HEAD gets no body, a client that closes hears so, and an
            // HTTP/1.0 client hears that its connection stays.
            let head = try await Curl.run(["-I", "http://127.0.0.1:\(port)/"])
            #expect(head.text.hasPrefix("HTTP/1.1 429 Too Many Requests\r\n"))
            #expect(head.text.contains("Content-Length: 21\r\n"))
            #expect(head.text.hasSuffix("\r\n\r\n"))
            let closing = await RawClient.exchange(
                port: port, Array("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8), timeout: .seconds(5))
            #expect(closing.status == 429)
            #expect(closing.body == #"{"error":"slow down"}"#)
            let http10 = try await Curl.run(["-i", "--http1.0", "-H", "Connection: keep-alive", "http://127.0.0.1:\(port)/"])
            #expect(http10.text.contains("Connection: keep-alive\r\n"))
            #expect(await daemon.injections("busy") == 6)
        }
    }

    /// A client that sent `Expect: 100-continue` hears the abort at once and never sends its
    /// body (curl told to wait 20 s for a 100 that only the upstream would send); the connection
    /// closes after the answer. A request without the header keeps its connection.
    @Test func abortAnswersAClientThatAwaitsContinueAtOnce() async throws {
        let abort = HTTPAbort(status: 503, headers: [], body: "down\n")
        try await withHTTPProxy(faults: [fault("down", .abort(abort))]) { daemon, port, _ in
            let body = String(repeating: "x", count: 100_000)
            let start = ContinuousClock.now
            let awaited = try await Curl.run([
                "-v", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "--expect100-timeout", "20",
                "-H", "Expect: 100-continue", "--data-binary", body, "http://127.0.0.1:\(port)/upload",
            ], maxTime: 30)
            #expect(awaited.text == "503 0", "curl: \(awaited.log)")
            #expect(ContinuousClock.now - start < .seconds(10))
            #expect(awaited.log.contains("Connection: close"))
            let sent = try await Curl.run([
                "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-H", "Expect:", "--data-binary", body,
                "http://127.0.0.1:\(port)/upload",
            ])
            #expect(sent.text == "503 100000")
            #expect(await daemon.injections("down") == 2)
        }
    }

    /// A delayed response must not hold up the next request on the same kept-alive connection
    /// (found by the soak: the upstream's reads stayed held after a small delayed response).
    @Test func delayedResponsesOnOneKeptAliveConnection() async throws {
        let slow = fault("slow", .latency(LatencyFault(delay: .milliseconds(50), point: .response)))
        try await withHTTPProxy(faults: [slow]) { daemon, port, _ in
            let url = "http://127.0.0.1:\(port)"
            let result = try await Curl.run([
                "-w", "%{http_code} %{num_connects}\n", "\(url)/", "\(url)/bytes/10", "\(url)/status/204", "\(url)/",
            ])
            #expect(result.status == 0, "\(result.log)")
            // Four answers, the last three on the first connection (no new connect).
            let codes = result.text.split(separator: "\n").map { String($0.suffix(5)) }.filter { $0.hasPrefix("200 ") || $0.hasPrefix("204 ") }
            #expect(codes == ["200 1", "200 0", "204 0", "200 0"], "\(result.text)")
            #expect(await daemon.injections("slow") == 4)
        }
    }

    @Test func requestAndResponseDelays() async throws {
        let onRequest = fault(
            "slow-request", .latency(LatencyFault(delay: .milliseconds(200), point: .request)), match: RequestMatch(path: .exact("/")))
        let onResponse = fault(
            "slow-response", .latency(LatencyFault(delay: .milliseconds(200), point: .response)),
            match: RequestMatch(path: .prefix("/bytes/")))
        try await withHTTPProxy(faults: [onRequest, onResponse]) { daemon, port, _ in
            for path in ["/", "/bytes/10"] {
                let start = ContinuousClock.now
                let result = try await Curl.run(["http://127.0.0.1:\(port)\(path)"])
                let took = ContinuousClock.now - start
                #expect(result.status == 0)
                #expect(took >= .milliseconds(200) && took < .seconds(3), "\(path) took \(took)")
            }
            // A request neither rule matches is not delayed: the counts stay at one each
            // (a timing check here would measure curl's start on a busy machine).
            _ = try await Curl.run(["http://127.0.0.1:\(port)/status/204"])
            #expect(await daemon.injections("slow-request") == 1)
            #expect(await daemon.injections("slow-response") == 1)
        }
    }

    @Test func resetInsteadOfAnswering() async throws {
        try await withHTTPProxy(faults: [fault("rst", .reset(after: .zero, afterBytes: nil))]) { _, port, _ in
            let result = try await Curl.run(["http://127.0.0.1:\(port)/"])
            #expect(result.status == 56, "curl: \(result.log)")  // "Recv failure: Connection reset by peer"
            #expect(result.body.isEmpty)
        }
    }

    @Test func resetPartWayThroughTheBody() async throws {
        try await withHTTPProxy(faults: [fault("rst", .reset(after: .zero, afterBytes: 1000))]) { _, port, _ in
            let result = try await Curl.run(["http://127.0.0.1:\(port)/bytes/100000"])
            #expect(result.status == 56 || result.status == 18, "curl: \(result.log)")
            #expect(result.body.count <= 1000)
        }
    }

    @Test func truncatedBody() async throws {
        try await withHTTPProxy(faults: [fault("short", .limit(bytes: 1000))]) { _, port, _ in
            let result = try await Curl.run(["http://127.0.0.1:\(port)/bytes/100000"])
            #expect(result.status == 18, "curl: \(result.log)")  // "transfer closed with outstanding read data"
            #expect(result.body.count == 1000)
            // A body shorter than the limit is not touched.
            let small = try await Curl.run(["http://127.0.0.1:\(port)/bytes/10"])
            #expect(small.status == 0 && small.body.count == 10)
        }
    }

    @Test func blackholeNeverAnswers() async throws {
        try await withHTTPProxy(faults: [fault("void", .blackhole(closeAfter: nil))]) { daemon, port, _ in
            let start = ContinuousClock.now
            // curl gives up after 3 s: time enough, even for a sanitizer build on a busy machine,
            // to see the request in flight before that.
            async let hanging = Curl.run(["http://127.0.0.1:\(port)/"], maxTime: 3)
            // The request is in flight while it hangs (polled, at most 3 s).
            let inFlight = #"faultline_http_requests_in_flight{listener="test"}"#
            var seen = await daemon.metric(inFlight)
            while seen != 1, ContinuousClock.now - start < .seconds(3) {
                try await Task.sleep(for: .milliseconds(20))
                seen = await daemon.metric(inFlight)
            }
            #expect(seen == 1)
            let result = try await hanging
            #expect(result.status == 28)  // curl's own timeout
            #expect(result.body.isEmpty)
            #expect(ContinuousClock.now - start >= .seconds(3))
            // The client gave up: nothing in flight, and no status was ever sent.
            var after = await daemon.metric(inFlight)
            while after != 0, ContinuousClock.now - start < .seconds(5) {
                try await Task.sleep(for: .milliseconds(20))
                after = await daemon.metric(inFlight)
            }
            #expect(after == 0)
            #expect(await daemon.metric(#"faultline_http_request_duration_seconds_count{listener="test"}"#) == 0)
        }
    }

    @Test func throttledBody() async throws {
        try await withHTTPProxy(faults: [fault("thin", .bandwidth(bytesPerSecond: 1 << 20))]) { _, port, _ in
            let start = ContinuousClock.now
            let result = try await Curl.run(["http://127.0.0.1:\(port)/bytes/2097152"])
            let took = ContinuousClock.now - start
            #expect(result.body.count == 2 << 20)
            #expect(took >= .milliseconds(1500) && took < .seconds(6), "2 MiB at 1 MiB/s took \(took)")
        }
    }

    @Test func matchingByEachField() async throws {
        let teapot = HTTPAbort(status: 418)
        let faults = [
            fault("by-method", .abort(HTTPAbort(status: 501)), match: RequestMatch(methods: ["DELETE"])),
            fault("by-exact", .abort(HTTPAbort(status: 502)), match: RequestMatch(path: .exact("/status/200"))),
            fault("by-glob", .abort(HTTPAbort(status: 503)), match: RequestMatch(path: .glob("/bytes/*0"))),
            fault("by-header", .abort(HTTPAbort(status: 504)),
                  match: RequestMatch(headers: [HeaderMatch(name: "x-test", test: .equals("yes"))])),
            fault("by-header-glob", .abort(HTTPAbort(status: 505)),
                  match: RequestMatch(headers: [HeaderMatch(name: "authorization", test: .glob("Bearer test-*"))])),
            fault("by-presence", .abort(HTTPAbort(status: 506)),
                  match: RequestMatch(headers: [HeaderMatch(name: "x-chaos", test: .present)])),
            fault("other-clients", .abort(teapot), clients: [CIDR("10.0.0.0/8")!]),
            fault("never", .abort(teapot), probability: 0),
            fault("by-prefix", .abort(HTTPAbort(status: 507)), match: RequestMatch(path: .prefix("/status/"))),
            fault("shadowed", .abort(teapot), match: RequestMatch(path: .prefix("/status/"))),
        ]
        try await withHTTPProxy(faults: faults) { daemon, port, _ in
            func status(_ arguments: [String]) async -> String {
                (try? await Curl.run(["-o", "/dev/null", "-w", "%{http_code}"] + arguments).text) ?? "curl failed"
            }
            let url = "http://127.0.0.1:\(port)"
            #expect(await status(["-X", "DELETE", "\(url)/"]) == "501")
            #expect(await status(["\(url)/status/200"]) == "502")
            #expect(await status(["\(url)/bytes/10"]) == "503")
            #expect(await status(["\(url)/bytes/11"]) == "200")
            #expect(await status(["-H", "x-test: yes", "\(url)/"]) == "504")
            #expect(await status(["-H", "x-test: no", "\(url)/"]) == "200")
            #expect(await status(["-H", "Authorization: Bearer test-42", "\(url)/"]) == "505")
            #expect(await status(["-H", "Authorization: Bearer prod-42", "\(url)/"]) == "200")
            #expect(await status(["-H", "x-chaos;", "\(url)/"]) == "506")
            // First match wins: "by-prefix" comes before "shadowed", which never fires.
            #expect(await status(["\(url)/status/201"]) == "507")
            #expect(await daemon.injections("shadowed") == 0)
            #expect(await daemon.injections("never") == 0)
            #expect(await daemon.injections("other-clients") == 0)
        }
    }

    @Test func probabilityOneAlwaysAndAFailedDrawFallsThrough() async throws {
        let faults = [
            fault("half", .abort(HTTPAbort(status: 503)), probability: 0.5),
            fault("rest", .abort(HTTPAbort(status: 500))),
        ]
        try await withHTTPProxy(faults: faults) { daemon, port, _ in
            var seen: [String: Int] = [:]
            for _ in 0..<40 {
                let code = try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/"]).text
                seen[code, default: 0] += 1
            }
            // Every request gets one of the two; with p = 0.5 over 40 draws both show up.
            #expect(seen.keys.sorted() == ["500", "503"])
            #expect(await daemon.injections("half") + daemon.injections("rest") == 40)
        }
    }

    @Test func headerTriggeredFaultsOnlyWhenTheListenerOptsIn() async throws {
        try await withHTTPProxy { _, port, _ in
            let ignored = try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-H", "x-faultline-abort: 503",
                                              "http://127.0.0.1:\(port)/"])
            #expect(ignored.text == "200")
        }
        try await withHTTPProxy(configure: { $0.http.headerFaults = HeaderFaults(enabled: true) }) { daemon, port, _ in
            let url = "http://127.0.0.1:\(port)/"
            let aborted = try await Curl.run(["-i", "-H", "x-faultline-abort: 503", url])
            #expect(aborted.text.hasPrefix("HTTP/1.1 503 Service Unavailable"))
            let start = ContinuousClock.now
            let delayed = try await Curl.run(["-H", "x-faultline-delay: 200ms", url])
            #expect(delayed.text == "hello from the Faultline demo service\n")
            #expect(ContinuousClock.now - start >= .milliseconds(200))
            let bad = try await Curl.run(["-i", "-H", "x-faultline-delay: soon", url])
            #expect(bad.text.hasPrefix("HTTP/1.1 400 Bad Request"))
            #expect(bad.text.contains(#"x-faultline-delay: "soon" is not a duration"#))
            #expect(await daemon.metric(#"faultline_faults_injected_total{listener="test",fault="header",kind="abort",source="header"}"#) == 1)
        }
        // Limited to other clients: the header is ignored for 127.0.0.1.
        try await withHTTPProxy(configure: {
            $0.http.headerFaults = HeaderFaults(enabled: true, clients: [CIDR("10.0.0.0/8")!])
        }) { _, port, _ in
            let ignored = try await Curl.run(["-o", "/dev/null", "-w", "%{http_code}", "-H", "x-faultline-abort: 503",
                                              "http://127.0.0.1:\(port)/"])
            #expect(ignored.text == "200")
        }
    }

    @Test func ruleSwitchedOnReachesTheNextRequestOfAnOpenConnection() async throws {
        try await withHTTPProxy { daemon, port, _ in
            let rule = daemon.proxy.listener(named: "test")!.rule
            // One curl, two requests on one connection; the rule arrives between them (the
            // first request is held 3 s by a rule so that there is time, even in a sanitizer
            // build on a busy machine).
            try await daemon.proxy.updateFaults(RuleSet(listeners: [rule], faults: [
                fault("first-slow", .latency(LatencyFault(delay: .seconds(3))), match: RequestMatch(path: .exact("/"))),
            ]))
            async let both = Curl.run(["-v", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
                                       "http://127.0.0.1:\(port)/", "http://127.0.0.1:\(port)/bytes/1"])
            // Once the first request is held (its fault counted), the rules change.
            let start = ContinuousClock.now
            while await daemon.injections("first-slow") == 0, ContinuousClock.now - start < .seconds(5) {
                try await Task.sleep(for: .milliseconds(5))
            }
            try await daemon.proxy.updateFaults(RuleSet(listeners: [rule], faults: [
                fault("first-slow", .latency(LatencyFault(delay: .seconds(3))), match: RequestMatch(path: .exact("/"))),
                fault("now-down", .abort(HTTPAbort(status: 503)), match: RequestMatch(path: .prefix("/bytes/"))),
            ]))
            let result = try await both
            #expect(result.text == "200 503 ")
            #expect(result.log.contains("Re-using existing connection"))
        }
    }
}
