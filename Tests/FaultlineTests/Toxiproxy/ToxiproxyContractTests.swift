import Faultline
import FaultlineRules
import Foundation
import NIOCore
import Testing

/// What Toxiproxy 2.x's clients rely on, endpoint by endpoint (the list is in the README's
/// Toxiproxy section), checked with curl against the real listener.
@Suite struct ToxiproxyContractTests {
    static let errorType = "text/plain; charset=utf-8"

    @Test func versionIsJSONAtLeast2_6() async throws {
        try await ToxiproxyHarness.with { api in
            let reply = try await api.call("GET", "/version")
            #expect(reply.status == 200)
            #expect(reply.body == "{\"version\": \"2.12.0\"}\n")
            #expect(reply.headers["content-type"] == "application/json;charset=utf-8")
            #expect(reply.headers["x-toxiproxy-request-id"] != nil)
        }
    }

    @Test func createReadListDeleteProxy() async throws {
        try await ToxiproxyHarness.with { api in
            let created = try await api.call(
                "POST", "/proxies", #"{"name":"redis","listen":"localhost:0","upstream":"127.0.0.1:\#(api.echoPort)"}"#)
            #expect(created.status == 201)
            #expect(created.headers["content-type"] == "application/json")
            let listen = created.object["listen"] as? String ?? ""
            #expect(listen.hasPrefix("127.0.0.1:") && !listen.hasSuffix(":0"))  // resolved, port chosen
            #expect(created.object["upstream"] as? String == "127.0.0.1:\(api.echoPort)")
            #expect(created.object["enabled"] as? Bool == true)
            #expect((created.object["toxics"] as? [Any])?.isEmpty == true)
            // It listens already, and forwards.
            let port = try #require(listen.split(separator: ":").last.flatMap { Int($0) }, "\(created.status) \(created.body)")
            let client = try await LineClient.connect(port: port, group: api.group)
            #expect(try await client.exchange("ping") == "ping")

            let duplicate = try await api.call("POST", "/proxies", #"{"name":"redis","upstream":"127.0.0.1:1"}"#)
            #expect(duplicate.status == 409)
            #expect(duplicate.body == "{\"error\":\"proxy already exists\",\"status\":409}\n")
            #expect(duplicate.headers["content-type"] == Self.errorType)

            let list = try await api.call("GET", "/proxies")
            #expect(list.status == 200)
            #expect((list.object["redis"] as? [String: Any])?["listen"] as? String == listen)
            #expect(try await api.call("GET", "/proxies/redis").object["name"] as? String == "redis")

            let deleted = try await api.call("DELETE", "/proxies/redis")
            #expect(deleted.status == 204 && deleted.body.isEmpty)
            let gone = try await api.call("GET", "/proxies/redis")
            #expect(gone.status == 404)
            #expect(gone.body == "{\"error\":\"proxy not found\",\"status\":404}\n")
            #expect(try await api.call("DELETE", "/proxies/redis").status == 404)
            #expect(await RawClient.run(port: port).end == .refused)
            // Deleting the proxy cut its open connection, as Toxiproxy does.
            await #expect(throws: (any Error).self) { _ = try await client.exchange("again") }
            #expect(try await api.call("GET", "/proxies").body == "{}\n")
        }
    }

    /// A deleted proxy's series (its listener's and its toxics') leave /metrics once its
    /// connections are gone and the retention (zero here) has passed; a kept one's stay.
    @Test func seriesOfADeletedProxyGo() async throws {
        try await ToxiproxyHarness.with(retiredSeriesRetention: .zero) { api in
            func lines(_ proxy: String) async -> Int {
                await api.daemon.metricsText().split(separator: "\n").filter { $0.contains(#"listener="\#(proxy)""#) }.count
            }
            for name in ["kept", "gone"] {
                let port = try await api.createProxy(name)
                #expect(try await api.call("POST", "/proxies/\(name)/toxics", #"{"type":"latency","attributes":{"latency":1}}"#).status == 200)
                #expect(await RawClient.run(port: port, send: 3, halfClose: true).received == 3)
            }
            let before = await lines("gone")
            let kept = await lines("kept")
            #expect(before > 10 && before == kept)
            #expect(try await api.call("DELETE", "/proxies/gone").status == 204)
            // The removed listener drains first (polled, at most 5 s): its series stay meanwhile.
            let start = ContinuousClock.now
            while await lines("gone") > 0, ContinuousClock.now - start < .seconds(5) {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(await lines("gone") == 0)
            #expect(await lines("kept") == kept)
        }
    }

    @Test func badProxyRequests() async throws {
        try await ToxiproxyHarness.with { api in
            let noName = try await api.call("POST", "/proxies", #"{"upstream":"127.0.0.1:1"}"#)
            #expect(noName.status == 400)
            #expect(noName.body == "{\"error\":\"missing required field: name\",\"status\":400}\n")
            let noUpstream = try await api.call("POST", "/proxies", #"{"name":"a"}"#)
            #expect(noUpstream.body == "{\"error\":\"missing required field: upstream\",\"status\":400}\n")
            let notJSON = try await api.call("POST", "/proxies", "{nope")
            #expect(notJSON.status == 400)
            #expect((notJSON.object["error"] as? String)?.hasPrefix("bad request body: ") == true)
            let empty = try await api.call("POST", "/proxies", "")
            #expect(empty.object["error"] as? String == "bad request body: EOF")
            // Keys in any case; unknown keys ignored (Go's decoder).
            let anyCase = try await api.call(
                "POST", "/proxies", #"{"Name":"a","UPSTREAM":"127.0.0.1:\#(api.echoPort)","Listen":"127.0.0.1:0","extra":1}"#)
            #expect(anyCase.status == 201)
            // An address another proxy holds: 500 with the reason, nothing half-made.
            let taken = try await api.call("GET", "/proxies/a").object["listen"] as! String
            let clash = try await api.call("POST", "/proxies", #"{"name":"b","listen":"\#(taken)","upstream":"127.0.0.1:1"}"#)
            #expect(clash.status == 500)
            #expect(try await api.call("GET", "/proxies/b").status == 404)
            // Browsers are refused; unknown paths and wrong methods get the router's answers.
            let browser = try await api.call("GET", "/proxies", headers: ["User-Agent: Mozilla/5.0 (X11; Linux x86_64)"])
            #expect(browser.status == 403 && browser.body == "User agent not allowed\n")
            let unknown = try await api.call("GET", "/nothing/here")
            #expect(unknown.status == 404 && unknown.body == "404 page not found\n")
            let wrongMethod = try await api.call("PUT", "/proxies")
            #expect(wrongMethod.status == 405 && wrongMethod.body.isEmpty)
        }
    }

    @Test func disabledProxyRefusesAndResetEnablesIt() async throws {
        try await ToxiproxyHarness.with { api in
            let port = try await api.createProxy("db")
            let open = try await LineClient.connect(port: port, group: api.group)
            #expect(try await open.exchange("1") == "1")
            // Toxiproxy's old POST update and the PATCH of clients from 2.6.0 on.
            let down = try await api.call("POST", "/proxies/db", #"{"enabled":false}"#)
            #expect(down.status == 200 && down.object["enabled"] as? Bool == false)
            #expect(down.object["listen"] as? String == "127.0.0.1:\(port)")
            #expect(await RawClient.run(port: port).end == .refused)
            await #expect(throws: (any Error).self) { _ = try await open.exchange("2") }
            let up = try await api.call("PATCH", "/proxies/db", #"{"enabled":true}"#)
            #expect(up.object["enabled"] as? Bool == true)
            let again = try await LineClient.connect(port: port, group: api.group)
            #expect(try await again.exchange("3") == "3")
            _ = try await api.call("PATCH", "/proxies/db", #"{"enabled":false}"#)
            _ = try await api.call("POST", "/proxies/db/toxics", #"{"type":"latency","attributes":{"latency":10}}"#)
            let reset = try await api.call("POST", "/reset")
            #expect(reset.status == 204)
            let after = try await api.call("GET", "/proxies/db").object
            #expect(after["enabled"] as? Bool == true)
            #expect((after["toxics"] as? [Any])?.isEmpty == true)
            let back = try await LineClient.connect(port: port, group: api.group)
            #expect(try await back.exchange("4") == "4")
        }
    }

    @Test func toxicsCreateReadUpdateDelete() async throws {
        try await ToxiproxyHarness.with { api in
            _ = try await api.createProxy("svc")
            let created = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"latency","attributes":{"latency":100}}"#)
            #expect(created.status == 200)  // not 201
            #expect(created.object["name"] as? String == "latency_downstream")
            #expect(created.object["stream"] as? String == "downstream")
            #expect(created.object["toxicity"] as? Double == 1)
            #expect(created.object["attributes"] as? [String: Int] == ["latency": 100, "jitter": 0])

            // Names are unique per proxy across both streams.
            let clash = try await api.call(
                "POST", "/proxies/svc/toxics", #"{"name":"latency_downstream","type":"latency","stream":"upstream"}"#)
            #expect(clash.status == 409)
            #expect(clash.body == "{\"error\":\"toxic already exists\",\"status\":409}\n")

            let upstream = try await api.call(
                "POST", "/proxies/svc/toxics",
                #"{"Name":"cut","Type":"limit_data","Stream":"upstream","Toxicity":0.5,"Attributes":{"Bytes":1024}}"#)
            #expect(upstream.status == 200)
            #expect(upstream.object["attributes"] as? [String: Int] == ["bytes": 1024])
            // Upstream toxics are listed first.
            let list = try await api.call("GET", "/proxies/svc/toxics").json as? [[String: Any]] ?? []
            #expect(list.map { $0["name"] as? String } == ["cut", "latency_downstream"])

            // Updates merge attributes and keep an omitted toxicity.
            let patched = try await api.call("PATCH", "/proxies/svc/toxics/cut", #"{"attributes":{"bytes":2048}}"#)
            #expect(patched.status == 200)
            #expect(patched.object["attributes"] as? [String: Int] == ["bytes": 2048])
            #expect(patched.object["toxicity"] as? Double == 0.5)
            let posted = try await api.call("POST", "/proxies/svc/toxics/latency_downstream", #"{"attributes":{"jitter":5}}"#)
            #expect(posted.object["attributes"] as? [String: Int] == ["latency": 100, "jitter": 5])
            #expect(posted.object["stream"] as? String == "downstream")
            let read = try await api.call("GET", "/proxies/svc/toxics/latency_downstream")
            #expect(read.object["attributes"] as? [String: Int] == ["latency": 100, "jitter": 5])

            #expect(try await api.call("DELETE", "/proxies/svc/toxics/cut").status == 204)
            let missing = try await api.call("DELETE", "/proxies/svc/toxics/cut")
            #expect(missing.status == 404)
            #expect(missing.body == "{\"error\":\"toxic not found\",\"status\":404}\n")
            #expect(try await api.call("GET", "/proxies/svc/toxics/cut").status == 404)
            let noProxy = try await api.call("POST", "/proxies/nope/toxics", #"{"type":"latency"}"#)
            #expect(noProxy.status == 404 && noProxy.object["error"] as? String == "proxy not found")
        }
    }

    @Test func badToxics() async throws {
        try await ToxiproxyHarness.with { api in
            _ = try await api.createProxy("svc")
            let type = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"meteor"}"#)
            #expect(type.status == 400 && type.object["error"] as? String == "invalid toxic type")
            let stream = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"latency","stream":"sideways"}"#)
            #expect(stream.status == 400)
            #expect(stream.object["error"] as? String == "stream was invalid, can be either upstream or downstream")
            let fraction = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"latency","attributes":{"latency":1.5}}"#)
            #expect(fraction.status == 400)
            let negative = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"latency","attributes":{"latency":-1}}"#)
            #expect(negative.status == 400)
            let toxicity = try await api.call("POST", "/proxies/svc/toxics", #"{"type":"latency","toxicity":2}"#)
            #expect(toxicity.status == 400)
            #expect((try await api.call("GET", "/proxies/svc/toxics").json as? [Any])?.isEmpty == true)
        }
    }

    @Test func populateKeepsAnUnchangedProxyAndReplacesAChangedOne() async throws {
        try await ToxiproxyHarness.with { api in
            let port = try await api.createProxy("a")
            _ = try await api.call("POST", "/proxies/a/toxics", #"{"type":"latency","attributes":{"latency":1}}"#)
            let same = #"{"name":"a","listen":"127.0.0.1:\#(port)","upstream":"127.0.0.1:\#(api.echoPort)"}"#
            let other = #"{"name":"b","listen":"127.0.0.1:0","upstream":"127.0.0.1:\#(api.echoPort)"}"#
            let first = try await api.call("POST", "/populate", "[\(same),\(other)]")
            #expect(first.status == 201)
            let proxies = first.object["proxies"] as? [[String: Any]] ?? []
            #expect(proxies.map { $0["name"] as? String } == ["a", "b"])
            #expect((proxies.first?["toxics"] as? [Any])?.count == 1)  // kept, toxics and all
            // A changed upstream replaces the proxy (its toxics go with it).
            let changed = #"{"name":"a","listen":"127.0.0.1:\#(port)","upstream":"127.0.0.1:1"}"#
            let second = try await api.call("POST", "/populate", "[\(changed)]")
            let replaced = (second.object["proxies"] as? [[String: Any]])?.first
            #expect(replaced?["upstream"] as? String == "127.0.0.1:1")
            #expect((replaced?["toxics"] as? [Any])?.isEmpty == true)
            // Every item is checked before anything changes.
            let bad = try await api.call("POST", "/populate", #"[{"name":"c","upstream":"127.0.0.1:1"},{"name":"d"}]"#)
            #expect(bad.status == 400)
            #expect(bad.object["error"] as? String == "missing required field: upstream at proxy 2")
            #expect(try await api.call("GET", "/proxies/c").status == 404)
            let none = try await api.call("POST", "/populate", "[]")
            #expect(none.status == 201 && none.body == "{\"proxies\":null}\n")
        }
    }

    /// `/reset` and the toxics touch only what came through this API: a file listener and
    /// its fault stay as they are.
    @Test func resetLeavesFileRulesAlone() async throws {
        let files = RuleSet(
            listeners: [TestDaemon.listener("file", upstreamPort: 1)],
            faults: [FaultRule(name: "slow", listener: "file", action: .latency(LatencyFault(delay: .milliseconds(5))))])
        try await ToxiproxyHarness.with(files: files) { api in
            _ = try await api.createProxy("x")
            _ = try await api.call("POST", "/proxies/x/toxics", #"{"type":"slow_close","attributes":{"delay":10}}"#)
            let listed = try await api.call("GET", "/proxies")
            #expect(listed.object.keys.sorted() == ["x"])  // file listeners are not Toxiproxy proxies
            #expect(try await api.call("POST", "/reset").status == 204)
            let rules = api.daemon.reloader.effectiveRules
            #expect(rules.faults.map(\.name) == ["slow"])
            #expect(rules.listeners.map(\.name) == ["file", "x"])
            // A toxic shows in the rules in force, marked as the Toxiproxy API's.
            _ = try await api.call("POST", "/proxies/x/toxics", #"{"type":"bandwidth","attributes":{"rate":100}}"#)
            let fault = api.daemon.reloader.overlay.faults.first
            #expect(fault?.origin == "toxiproxy" && fault?.rule.name == "x:bandwidth_downstream")
            #expect(fault?.rule.action == .bandwidth(bytesPerSecond: 100_000))
        }
    }

    @Test func latencyToxicDelaysAnOpenConnectionAndGoesAwayWithoutClosingIt() async throws {
        try await ToxiproxyHarness.with { api in
            let port = try await api.createProxy("lat")
            let client = try await LineClient.connect(port: port, group: api.group)
            #expect(try await client.exchange("before") == "before")
            _ = try await api.call("POST", "/proxies/lat/toxics", #"{"type":"latency","attributes":{"latency":200}}"#)
            let slow = try await client.timedExchange("during")
            #expect(slow.reply == "during")
            #expect(slow.took >= .milliseconds(200) && slow.took < .seconds(3))
            // Counted like any other fault, marked as the Toxiproxy API's.
            let metrics = await api.daemon.metricsText()
            #expect(metrics.contains(
                #"faultline_faults_injected_total{listener="lat",fault="lat:latency_downstream",kind="latency",source="toxiproxy"} 1"#))
            // A `timeout` toxic swallows; deleting it lets the same connection talk again
            // (Toxiproxy closes the connection instead).
            #expect(try await api.call("DELETE", "/proxies/lat/toxics/latency_downstream").status == 204)
            _ = try await api.call("POST", "/proxies/lat/toxics", #"{"type":"timeout","stream":"upstream","attributes":{"timeout":0}}"#)
            #expect(try await api.call("DELETE", "/proxies/lat/toxics/timeout_upstream").status == 204)
            let fast = try await client.fastestExchange("after")
            #expect(fast.allEchoed)
            #expect(fast.fastest < .milliseconds(200))
        }
    }

    /// Toxics added and removed over and over on a proxy while a long transfer runs through
    /// it: the transfer ends byte-exact and nothing is closed.
    @Test func longTransferStaysByteExactWhileToxicsComeAndGo() async throws {
        try await ToxiproxyHarness.with { api in
            let port = try await api.createProxy("bulk")
            let size = 32 << 20
            let transfer = Task { try await TestClient.transfer(port: port, group: api.group, send: size, halfClose: true) }
            var rounds = 0
            let deadline = ContinuousClock.now + .seconds(20)
            let toxics = [
                #"{"name":"l","type":"latency","attributes":{"latency":2,"jitter":1}}"#,
                #"{"name":"s","type":"slicer","stream":"upstream","attributes":{"average_size":512,"size_variation":100,"delay":20}}"#,
                #"{"name":"b","type":"bandwidth","attributes":{"rate":50000}}"#,
            ]
            while rounds < 200, ContinuousClock.now < deadline {
                rounds += 1
                for toxic in toxics { _ = try await api.call("POST", "/proxies/bulk/toxics", toxic) }
                _ = try await api.call("PATCH", "/proxies/bulk/toxics/l", #"{"attributes":{"latency":\#(rounds % 3)}}"#)
                for name in ["l", "s", "b"] { _ = try await api.call("DELETE", "/proxies/bulk/toxics/\(name)") }
                if rounds >= 5, await api.daemon.proxy.listener(named: "bulk")?.openConnections() == 0 { break }
            }
            let result = try await transfer.value
            #expect(rounds >= 5)
            #expect(result.received == size)
            #expect(result.mismatchAt == nil)
            #expect(result.sawEOF && !result.reset)
        }
    }
}
