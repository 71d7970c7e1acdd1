import FaultlineRules
import Testing

/// Each class of rule error, with its exact message, line and column.
struct RuleFileParserTests {
    func errors(_ text: String, file: String = "rules/api.yaml") -> [String] {
        errors(of: [(file, text)])
    }

    /// The errors of a rule folder given as (file, text) pairs; none when it loads.
    func errors(of sources: [(file: String, text: String)]) -> [String] {
        switch RuleLoader.load(sources: sources) {
        case .success: return []
        case .failure(let errors): return errors.errors.map(\.description)
        }
    }

    @Test func validFileGivesListenersWithDefaults() throws {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: db.internal:5432
              - name: v6
                listen: "[::1]:0"
                upstream: "[::1]:9000"
                protocol: tcp
                timeouts:
                  connect: 250ms
                  idle: 1.5s
            """
        let set = try RuleLoader.load(sources: [("rules/a.yaml", text)]).get()
        #expect(set.listeners.count == 2)
        let api = set.listeners[0]
        #expect(api.name == "api")
        #expect(api.listen == HostPort(host: "127.0.0.1", port: 8080))
        #expect(api.upstream == HostPort(host: "db.internal", port: 5432))
        #expect(api.connectTimeout == ListenerRule.defaultConnectTimeout)
        #expect(api.idleTimeout == ListenerRule.defaultIdleTimeout)
        #expect(api.source == SourceLocation(file: "rules/a.yaml", line: 2, column: 5))
        let v6 = set.listeners[1]
        #expect(v6.listen == HostPort(host: "::1", port: 0))
        #expect(v6.connectTimeout == .milliseconds(250))
        #expect(v6.idleTimeout == .milliseconds(1500))
        #expect(set.summary == "1 file, 2 listeners: api 127.0.0.1:8080 -> db.internal:5432, v6 [::1]:0 -> [::1]:9000")
    }

    /// The summary is one log line at every reload: a rule set of many listeners names the first.
    @Test func summaryOfManyListenersNamesTheFirst() throws {
        let text = "listeners:\n" + (0..<25).map { "  - {name: l\($0), listen: 127.0.0.1:\(20000 + $0), upstream: 127.0.0.1:9}\n" }.joined()
        let summary = try RuleLoader.load(sources: [("rules/a.yaml", text)]).get().summary
        #expect(summary.hasPrefix("1 file, 25 listeners: l0 127.0.0.1:20000 -> 127.0.0.1:9, l1 "))
        #expect(summary.hasSuffix("l19 127.0.0.1:20019 -> 127.0.0.1:9, and 5 more"))
    }

    @Test func commentsOnlyFileIsEmpty() throws {
        let set = try RuleLoader.load(sources: [("rules/off.yaml", "# nothing here\n")]).get()
        #expect(set.listeners.isEmpty)
    }

    @Test func upstreamThatIsNotHostPort() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: db
            """
        #expect(errors(text) == [#"rules/api.yaml:4:15: listeners[0].upstream: "db" is not host:port (it has no port)"#])
    }

    @Test func unknownKeySuggestsTheNearestOne() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstrem: 127.0.0.1:9000
            """
        #expect(errors(text) == [
            #"rules/api.yaml:2:5: listeners[0].upstream: required key is missing"#,
            #"rules/api.yaml:4:5: unknown key "listeners[0].upstrem"; did you mean "upstream"?"#,
        ])
    }

    @Test func unknownTopLevelKeyListsTheKnownOnes() {
        #expect(errors("proxies: []\n") == [#"rules/api.yaml:1:1: unknown key "proxies"; expected one of listeners, faults"#])
    }

    @Test func wrongTypes() {
        let text = """
            listeners:
              name: api
            """
        #expect(errors(text) == [#"rules/api.yaml:2:3: listeners: expected a list, found a mapping"#])
        let text2 = """
            listeners:
              - name: [a, b]
                listen: 127.0.0.1:8080
                upstream: 127.0.0.1:9000
                timeouts: 5s
            """
        #expect(errors(text2) == [
            #"rules/api.yaml:2:11: listeners[0].name: expected a string, found a list"#,
            #"rules/api.yaml:5:15: listeners[0].timeouts: expected a mapping of connect, idle, found "5s""#,
        ])
    }

    @Test func durationsNeedAUnit() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: 127.0.0.1:9000
                timeouts:
                  connect: 5
                  idle: 0s
              - name: web
                listen: 127.0.0.1:8081
                upstream: 127.0.0.1:9000
                timeouts: {idle: 99999999h}
            """
        #expect(errors(text) == [
            #"rules/api.yaml:6:16: listeners[0].timeouts.connect: "5" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
            #"rules/api.yaml:7:13: listeners[0].timeouts.idle: 0s is below the minimum of 1ms"#,
            #"rules/api.yaml:11:22: listeners[1].timeouts.idle: 99999999h is over the maximum of 100000h"#,
        ])
    }

    @Test func portsAndHosts() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:70000
                upstream: ::1:9000
              - name: "bad name!"
                listen: example.com:80
                upstream: 127.0.0.1:0
            """
        #expect(errors(text) == [
            #"rules/api.yaml:3:13: listeners[0].listen: "127.0.0.1:70000" is not host:port (it has a port outside 1-65535)"#,
            #"rules/api.yaml:4:15: listeners[0].upstream: "::1:9000" is not host:port (it is an IPv6 address without brackets (write [::1]:8080))"#,
            #"rules/api.yaml:5:11: listeners[1].name: "bad name!" is not a valid name (letters, digits, '-', '_', '.', at most 64)"#,
            #"rules/api.yaml:6:13: listeners[1].listen: "example.com:80" must listen on an IP address or localhost"#,
            #"rules/api.yaml:7:15: listeners[1].upstream: "127.0.0.1:0" is not host:port (it has a port outside 1-65535)"#,
        ])
    }

    @Test func unknownProtocol() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: 127.0.0.1:9000
                protocol: tcpp
            """
        #expect(errors(text) == [#"rules/api.yaml:5:15: listeners[0].protocol: "tcpp" is not one of tcp, http; did you mean "tcp"?"#])
    }

    @Test func truncatedYAMLIsAnErrorWithItsPosition() {
        let text = """
            listeners:
              - name: api
                listen: "127.0.0.1:8080
            """
        #expect(errors(text) == [
            "rules/api.yaml:3:28: invalid YAML: found unexpected end of stream (while scanning a quoted scalar at 3:13)"
        ])
    }

    /// A name used twice is reported in the same run as the other errors of either declaration,
    /// not only once both are otherwise right.
    @Test func duplicateNamesAreReportedBesideOtherErrors() {
        let a = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: db
            faults:
              - {name: slow, listener: api, latency: {delay: 5x}}
            """
        let b = """
            listeners:
              - name: api
                listen: 127.0.0.1:99999
                upstream: 127.0.0.1:9000
              - name: api
                listen: 127.0.0.1:8082
                upstream: 127.0.0.1:9000
            faults:
              - {name: slow, listener: api, refuse: {}}
            """
        #expect(errors(of: [("rules/a.yaml", a), ("rules/b.yaml", b)]) == [
            #"rules/a.yaml:4:15: listeners[0].upstream: "db" is not host:port (it has no port)"#,
            #"rules/a.yaml:6:50: faults[0].latency.delay: "5x" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
            #"rules/b.yaml:2:5: listener "api" is already declared at rules/a.yaml:2:5"#,
            #"rules/b.yaml:3:13: listeners[0].listen: "127.0.0.1:99999" is not host:port (it has a port outside 1-65535)"#,
            #"rules/b.yaml:5:5: listener "api" is already declared at rules/a.yaml:2:5"#,
            #"rules/b.yaml:9:5: fault "slow" is already declared at rules/a.yaml:6:5"#,
        ])
    }

    /// Faults are checked against what is right of a listener with errors: its protocol when
    /// that is known, and whether it has a `tls:` block; nothing is reported that follows only
    /// from the listener's own error.
    @Test func faultsAreCheckedAgainstListenersWithErrors() {
        let text = """
            listeners:
              - name: web
                protocol: http
                listen: 127.0.0.1:8080
                upstream: db
              - name: typo
                protocol: htp
                listen: 127.0.0.1:8081
                upstream: 127.0.0.1:9000
              - name: secure
                listen: 127.0.0.1:8443
                upstream: 127.0.0.1:9000
                tls: {names: []}
            faults:
              - {name: slices, listener: web, slicer: {size: 10, delay: 1ms}}
              - {name: aborts, listener: typo, abort: {status: 503}}
              - {name: expired, listener: secure, certificate: {kind: expired}}
              - {name: still, listener: secure, bandwidth: {rate: 0}}
              - {name: later, listener: secure, refuse: {after: 1s}}
            """
        #expect(errors(of: [("rules/api.yaml", text)]) == [
            #"rules/api.yaml:5:15: listeners[0].upstream: "db" is not host:port (it has no port)"#,
            #"rules/api.yaml:7:15: listeners[1].protocol: "htp" is not one of tcp, http; did you mean "http"?"#,
            #"rules/api.yaml:13:18: listeners[2].tls.names: give at least one name"#,
            #"rules/api.yaml:15:5: fault "slices": slicer acts on TCP listeners; on an http listener use one of latency, abort, reset, limit, blackhole, bandwidth, certificate, handshake"#,
            #"rules/api.yaml:18:55: faults[3].bandwidth.rate: 0 is below the minimum of 1 byte"#,
            #"rules/api.yaml:19:46: unknown key "faults[4].refuse.after"; refuse takes no keys (write {})"#,
        ])
    }

    @Test func addressClashIsReportedBesideOtherErrors() {
        let text = """
            listeners:
              - name: a
                listen: 127.0.0.1:8080
                upstream: 127.0.0.1:9000
              - name: b
                listen: 127.0.0.1:8080
                upstream: db
              - name: c
                listen: localhost:8080
                upstream: 127.0.0.1:9000
            """
        #expect(errors(of: [("rules/api.yaml", text)]) == [
            #"rules/api.yaml:5:5: listener "b" listens on 127.0.0.1:8080, as does "a" (rules/api.yaml:2:5)"#,
            #"rules/api.yaml:7:15: listeners[1].upstream: "db" is not host:port (it has no port)"#,
            #"rules/api.yaml:8:5: listener "c" listens on 127.0.0.1:8080, as does "a" (rules/api.yaml:2:5)"#,
        ])
    }

    @Test func duplicateNamesAndAddressesAcrossFiles() {
        let a = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: 127.0.0.1:9000
            """
        let b = """
            # another file
            listeners:
              - name: api
                listen: 127.0.0.1:8081
                upstream: 127.0.0.1:9000
              - name: other
                listen: 0.0.0.0:8080
                upstream: 127.0.0.1:9000
            """
        #expect(errors(of: [("rules/a.yaml", a), ("rules/b.yaml", b)]) == [
            #"rules/b.yaml:3:5: listener "api" is already declared at rules/a.yaml:2:5"#,
            #"rules/b.yaml:6:5: listener "other" listens on 0.0.0.0:8080, as does "api" (rules/a.yaml:2:5)"#,
        ])
    }

    @Test func allErrorsOfAFileAreReported() {
        let text = """
            listeners:
              - name: a
                listen: nope
                upstream: nope
              - listen: 127.0.0.1:1
                upstream: 127.0.0.1:2
            """
        #expect(errors(text).count == 3)
    }

    /// Errors found by different checks (one entry, then between entries) come in file order,
    /// as a compiler lists them, not in the order the checks ran.
    @Test func errorsComeInFileOrder() {
        let b = """
            faults:
              - name: slow
                listener: missing
                latency: {delay: 10ms}
              - name: flaky
                listener: api
                probability: 140%
                reset: {}
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: nope
            """
        let a = """
            listeners:
              - name: other
                listen: 127.0.0.1:8081
                upstream: 127.0.0.1:9000
                timeouts: {idle: forever}
            """
        #expect(errors(of: [("rules/b.yaml", b), ("rules/a.yaml", a)]) == [
            #"rules/a.yaml:5:22: listeners[0].timeouts.idle: "forever" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
            #"rules/b.yaml:2:5: fault "slow" names listener "missing", which is not declared"#,
            #"rules/b.yaml:7:18: faults[1].probability: 140% is outside 0 to 1"#,
            #"rules/b.yaml:12:15: listeners[0].upstream: "nope" is not host:port (it has no port)"#,
        ])
    }

    /// A listener with an error is still declared: a fault naming it gets no second error
    /// saying that the listener does not exist.
    @Test func faultOnAListenerWithAnErrorIsNotReportedTwice() {
        let text = """
            listeners:
              - name: api
                listen: 127.0.0.1:8080
                upstream: db
            faults:
              - name: slow
                listener: api
                latency: {delay: 10ms}
            """
        #expect(errors(text) == [#"rules/api.yaml:4:15: listeners[0].upstream: "db" is not host:port (it has no port)"#])
    }
}

/// Anchors and merge keys, as in Docker Compose files: shared settings written once.
struct MergeKeyTests {
    @Test func mergedSettingsFillInWhatAListenerDoesNotSay() throws {
        let text = """
            x-base: &base
              upstream: 127.0.0.1:9000
              timeouts: {connect: 2s, idle: 5m}
            x-slow: &slow
              <<: *base
              timeouts: {connect: 9s}
            listeners:
              - {name: a, listen: 127.0.0.1:8001, <<: *base}
              - <<: *base
                name: b
                listen: 127.0.0.1:8002
                upstream: 127.0.0.1:9001
              - {name: c, listen: 127.0.0.1:8003, <<: [*slow, *base]}
            """
        let set = try RuleLoader.load(sources: [("rules/m.yaml", text)]).get()
        let byName = Dictionary(uniqueKeysWithValues: set.listeners.map { ($0.name, $0) })
        #expect(byName["a"]?.upstream.description == "127.0.0.1:9000")
        #expect(byName["a"]?.connectTimeout == .seconds(2))
        #expect(byName["b"]?.upstream.description == "127.0.0.1:9001")   // its own key wins
        #expect(byName["c"]?.connectTimeout == .seconds(9))   // the first mapping merged wins
        #expect(byName["c"]?.idleTimeout == ListenerRule.defaultIdleTimeout)   // timeouts is one value
        #expect(byName["c"]?.upstream.description == "127.0.0.1:9000")   // through slow's own merge
    }

    @Test func errorsInMergedSettingsPointAtTheAnchor() {
        let text = """
            x-base: &base
              upstrem: 127.0.0.1:9000
            listeners:
              - {name: a, listen: 127.0.0.1:8001, <<: *base}
              - {name: b, listen: 127.0.0.1:8002, upstream: 127.0.0.1:9000, <<: 5}
            """
        #expect(RuleFileParserTests().errors(text) == [
            #"rules/api.yaml:2:3: unknown key "listeners[0].upstrem"; did you mean "upstream"?"#,
            #"rules/api.yaml:4:5: listeners[0].upstream: required key is missing"#,
            #"rules/api.yaml:5:69: listeners[1].<<: expected an alias of a mapping (<<: *name) or a list of them"#,
        ])
    }

    /// Anchors of anchors, each merged many times: the reader stops at its budget instead of
    /// walking an exponential tree.
    @Test func mergesAreBounded() {
        var text = "x-l0: &l0 {upstream: 127.0.0.1:9000}\n"
        for level in 1...20 {
            let previous = Array(repeating: "*l\(level - 1)", count: 10).joined(separator: ", ")
            text += "x-l\(level): &l\(level) {<<: [\(previous)]}\n"
        }
        text += "listeners:\n  - {name: a, listen: 127.0.0.1:8001, <<: *l20}\n"
        let start = ContinuousClock.now
        let errors = RuleFileParserTests().errors(text)
        #expect(errors.contains { $0.contains("more than 64 mappings merged into one") }, "\(errors)")
        #expect(ContinuousClock.now - start < .seconds(5))
    }
}

struct ValueParsingTests {
    @Test func durations() {
        #expect(DurationText.parse("250ms") == .milliseconds(250))
        #expect(DurationText.parse("1.5s") == .milliseconds(1500))
        #expect(DurationText.parse("2m") == .seconds(120))
        #expect(DurationText.parse("1h30m") == .seconds(5400))
        #expect(DurationText.parse("500us") == .microseconds(500))
        #expect(DurationText.parse("5") == nil)
        #expect(DurationText.parse("5 s") == nil)
        #expect(DurationText.parse("ms") == nil)
        #expect(DurationText.parse("") == nil)
        #expect(DurationText.parse("100000h") == DurationText.maximum)
        #expect(DurationText.parse("100000h1s") == nil)
        #expect(DurationText.parse("1e400h") == nil)
        #expect(DurationText.format(.milliseconds(1500)) == "1500ms")
        #expect(DurationText.format(.seconds(120)) == "2m")
    }

    @Test func sizes() {
        #expect(ByteSizeText.parse("64KiB") == 65536)
        #expect(ByteSizeText.parse("1.5MiB") == 1_572_864)
        #expect(ByteSizeText.parse("10KB") == 10_000)
        #expect(ByteSizeText.parse("512") == 512)
        #expect(ByteSizeText.parse("512B") == 512)
        #expect(ByteSizeText.parse("0.5B") == nil)
        #expect(ByteSizeText.parse("12 parsecs") == nil)
    }

    @Test func hostPorts() throws {
        #expect(try HostPort.parse("[::1]:8080").get() == HostPort(host: "::1", port: 8080))
        #expect(try HostPort.parse("127.0.0.1:0", allowPortZero: true).get().port == 0)
        #expect(throws: HostPortError.self) { try HostPort.parse("127.0.0.1:0").get() }
        #expect(throws: HostPortError.self) { try HostPort.parse("[::1]8080").get() }
        #expect(throws: HostPortError.self) { try HostPort.parse("host:port").get() }
        #expect(HostPort(host: "::1", port: 1).description == "[::1]:1")
        #expect(HostPort(host: "10.0.0.1", port: 1).isIPv4Literal)
        #expect(!HostPort(host: "10.0.0.256", port: 1).isIPv4Literal)
    }

    @Test func didYouMean() {
        #expect(RuleLoader.load(sources: [("f", "listenrs: []")]).errorDescriptions
            == [#"f:1:1: unknown key "listenrs"; did you mean "listeners"?"#])
    }
}

extension Result where Success == RuleSet, Failure == RuleErrors {
    var errorDescriptions: [String] {
        if case .failure(let errors) = self { return errors.errors.map(\.description) }
        return []
    }
}

/// The `faults:` part of rule files.
struct FaultRuleParsingTests {
    let listener = """
        listeners:
          - name: api
            listen: 127.0.0.1:8080
            upstream: 127.0.0.1:9000

        """

    func load(_ faults: String) -> Result<RuleSet, RuleErrors> {
        RuleLoader.load(sources: [("rules/f.yaml", listener + faults)])
    }

    @Test func everyKindParses() throws {
        let text = """
            faults:
              - name: slow
                listener: api
                direction: downstream
                probability: 30%
                clients: [127.0.0.0/8, "::1"]
                latency: {delay: 200ms, jitter: 50ms, distribution: normal, apply: first_byte}
              - {name: thin, listener: api, bandwidth: {rate: 1MiB}}
              - {name: slices, listener: api, slicer: {size: 64, variation: 16, delay: 5ms}}
              - {name: rst, listener: api, reset: {after_bytes: 10KiB}}
              - {name: no, listener: api, enabled: false, refuse: {}}
              - {name: void, listener: api, blackhole: {close_after: 30s}}
              - {name: short, listener: api, limit: {bytes: 100}}
              - {name: cable, listener: api, cut: {after: 2s, mode: fin}}
              - {name: linger, listener: api, slow_close: {delay: 1s}}
            """
        let set = try load(text).get()
        #expect(set.faults.count == 9)
        let slow = set.faults[0]
        #expect(slow.probability == 0.3)
        #expect(slow.direction == .downstream)
        #expect(slow.clients.map(\.description) == ["127.0.0.0/8", "0:0:0:0:0:0:0:1/128"])
        #expect(slow.action == .latency(LatencyFault(
            delay: .milliseconds(200), jitter: .milliseconds(50), distribution: .normal, point: .first_byte)))
        #expect(set.faults[1].action == .bandwidth(bytesPerSecond: 1 << 20))
        #expect(set.faults[3].action == .reset(after: .zero, afterBytes: 10240))
        #expect(set.faults[4].enabled == false)
        #expect(set.faults[4].action == .refuse)
        #expect(set.faults[7].action == .cut(after: .seconds(2), mode: .fin))
        #expect(set.summary.hasPrefix("1 file, 9 faults, 1 listener"))
    }

    @Test func faultErrorsArePrecise() {
        let text = """
            faults:
              - name: a
                listener: apii
                probability: 1.5
                latency: {delay: 200}
              - name: b
                listener: api
                latency: {delay: 1s}
                bandwidth: {rate: 1KiB}
              - name: c
                listener: api
                clients: [10.0.0.0/33]
              - name: c
                listener: api
                slicer: {size: 10, variation: 10, delay: 1ms}
            """
        // Fault "a" has errors of its own, and its listener is checked all the same.
        #expect(load(text).errorDescriptions == [
            #"rules/f.yaml:6:5: fault "a" names listener "apii", which is not declared; did you mean "api"?"#,
            #"rules/f.yaml:8:18: faults[0].probability: 1.5 is outside 0 to 1"#,
            #"rules/f.yaml:9:22: faults[0].latency.delay: "200" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
            #"rules/f.yaml:13:5: faults[1]: one action per fault, found latency and bandwidth; write two faults"#,
            #"rules/f.yaml:14:5: faults[2]: a fault needs one action: latency, bandwidth, slicer, reset, refuse, blackhole, limit, cut, slow_close, abort, certificate, handshake"#,
            #"rules/f.yaml:16:15: faults[2].clients[0]: "10.0.0.0/33" is not an address block (10.0.0.0/8, 127.0.0.1, ::1/128)"#,
            #"rules/f.yaml:17:5: fault "c" is already declared at rules/f.yaml:14:5"#,
            #"rules/f.yaml:19:35: faults[3].slicer.variation: must be smaller than size (10)"#,
        ])
        let unknownListener = """
            faults:
              - {name: a, listener: apii, refuse: {}}
              - {name: a, listener: api, refuse: {}}
            """
        #expect(load(unknownListener).errorDescriptions == [
            #"rules/f.yaml:6:5: fault "a" names listener "apii", which is not declared; did you mean "api"?"#,
            #"rules/f.yaml:7:5: fault "a" is already declared at rules/f.yaml:6:5"#,
        ])
    }
}
