@testable import FaultlineRules
import Testing

/// The HTTP parts of rule files: the `http:` block, `match:`, `abort:`, and which fault may
/// go on which kind of listener.
struct HTTPRuleParsingTests {
    let listeners = """
        listeners:
          - name: web
            protocol: http
            listen: 127.0.0.1:8080
            upstream: 127.0.0.1:9000
            http:
              response_timeout: 5s
              head_timeout: 2s
              max_head_size: 16KiB
              header_faults: {clients: [10.0.0.0/8]}
          - name: raw
            listen: 127.0.0.1:8081
            upstream: 127.0.0.1:9000

        """

    func load(_ faults: String) -> Result<RuleSet, RuleErrors> {
        RuleLoader.load(sources: [("rules/h.yaml", listeners + faults)])
    }

    @Test func httpListenerAndFaultsParse() throws {
        let text = """
            faults:
              - name: checkout-down
                listener: web
                probability: 10%
                match:
                  method: [post, PUT]
                  path: {prefix: /checkout}
                  headers:
                    x-test: "1"
                    authorization: {glob: "Bearer test-*"}
                    x-trace: {present: true}
                abort:
                  status: 429
                  headers: {Retry-After: "30"}
                  body: '{"error": "slow down"}'
              - {name: slow, listener: web, match: {path: /exact}, latency: {delay: 200ms, apply: response}}
              - {name: cut, listener: web, limit: {bytes: 1KiB}}
              - {name: rst, listener: web, reset: {after_bytes: 10}}
              - {name: void, listener: web, blackhole: {}}
              - {name: thin, listener: web, bandwidth: {rate: 64KiB}}
            """
        let set = try load(text).get()
        let web = set.listener(named: "web")!
        #expect(web.protocol == .http)
        #expect(web.http.responseTimeout == .seconds(5))
        #expect(web.http.headTimeout == .seconds(2))
        #expect(web.http.maxHeadBytes == 16384)
        #expect(web.http.headerFaults == HeaderFaults(enabled: true, clients: [CIDR("10.0.0.0/8")!]))
        #expect(set.listener(named: "raw")!.http == HTTPSettings())
        let abort = set.faults[0]
        #expect(abort.match == RequestMatch(
            methods: ["POST", "PUT"], path: .prefix("/checkout"),
            headers: [
                HeaderMatch(name: "x-test", test: .equals("1")),
                HeaderMatch(name: "Authorization", test: .glob("Bearer test-*")),
                HeaderMatch(name: "x-trace", test: .present),
            ]))
        #expect(abort.action == .abort(HTTPAbort(
            status: 429, headers: [.init(name: "Retry-After", value: "30")], body: #"{"error": "slow down"}"#)))
        #expect(set.faults[1].match.path == .exact("/exact"))
        #expect(set.faults[1].action == .latency(LatencyFault(delay: .milliseconds(200), point: .response)))
    }

    @Test func faultsMustSuitTheirListener() {
        let text = """
            faults:
              - {name: a, listener: raw, abort: {status: 503}}
              - {name: b, listener: raw, match: {method: GET}, refuse: {}}
              - {name: c, listener: raw, latency: {delay: 1s, apply: response}}
              - {name: d, listener: web, slicer: {size: 10, delay: 1ms}}
              - {name: e, listener: web, direction: upstream, latency: {delay: 1s}}
              - {name: f, listener: web, latency: {delay: 1s, apply: chunk}}
              - {name: g, listener: web, reset: {after: 1s}}
            """
        #expect(load(text).errorDescriptions == [
            #"rules/h.yaml:15:5: fault "a": abort needs a listener with protocol: http"#,
            #"rules/h.yaml:16:5: fault "b": match needs a listener with protocol: http"#,
            #"rules/h.yaml:17:5: fault "c": latency.apply: response needs a listener with protocol: http"#,
            #"rules/h.yaml:18:5: fault "d": slicer acts on TCP listeners; on an http listener use one of latency, abort, reset, limit, blackhole, bandwidth, certificate, handshake"#,
            #"rules/h.yaml:19:5: fault "e": direction is for TCP listeners; on an http listener faults act on the request or its response"#,
            #"rules/h.yaml:20:5: fault "f": latency.apply on an http listener is request or response, not chunk"#,
            #"rules/h.yaml:21:5: fault "g": reset.after is for TCP listeners; on an http listener reset at once or after_bytes of the response body"#,
        ])
    }

    @Test func httpValuesArePrecise() {
        let text = """
            faults:
              - {name: a, listener: web, abort: {status: 99}}
              - {name: b, listener: web, abort: {status: 503, headers: {Content-Length: "5"}}}
              - {name: c, listener: web, match: {path: {prefix: api}}, abort: {status: 503}}
              - {name: d, listener: web, match: {path: {prefix: /a, glob: /b*}}, abort: {status: 503}}
              - {name: e, listener: web, match: {method: "GET /"}, abort: {status: 503}}
              - {name: f, listener: web, match: {headers: {x-a: {equal: "1"}}}, abort: {status: 503}}
            """
        #expect(load(text).errorDescriptions == [
            #"rules/h.yaml:15:46: faults[0].abort.status: "99" is not a status from 200 to 599"#,
            #"rules/h.yaml:16:61: faults[1].abort.headers.Content-Length: set by Faultline from the body"#,
            #"rules/h.yaml:17:53: faults[2].match.path.prefix: "api" is not a path (it must start with /)"#,
            #"rules/h.yaml:18:44: faults[3].match.path: give one of exact, prefix, glob"#,
            #"rules/h.yaml:19:46: faults[4].match.method: expected an HTTP method such as GET, found "GET /""#,
            #"rules/h.yaml:20:53: faults[5].match.headers.x-a: give one of present, equals, glob"#,
            #"rules/h.yaml:20:54: unknown key "faults[5].match.headers.x-a.equal"; did you mean "equals"?"#,
        ])
    }

    @Test func httpBlockOnlyOnHTTPListeners() {
        let text = """
            listeners:
              - name: t
                listen: 127.0.0.1:1
                upstream: 127.0.0.1:2
                http: {response_timeout: 1s}
              - name: h
                protocol: http
                listen: 127.0.0.1:3
                upstream: 127.0.0.1:2
                http: {max_head_size: 1MiB, head_timeout: soon}
            """
        #expect(RuleLoader.load(sources: [("r.yaml", text)]).errorDescriptions == [
            #"r.yaml:5:5: listeners[0].http: only for listeners with protocol: http"#,
            #"r.yaml:10:27: listeners[1].http.max_head_size: at most 80KiB"#,
            #"r.yaml:10:47: listeners[1].http.head_timeout: "soon" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
        ])
    }

    @Test func pathsAndHeadersMatch() {
        #expect(PathMatch.glob("/api/*/items").matches("/api/v1/items"))
        #expect(PathMatch.glob("/api/*/items").matches("/api/v1/x/items"))
        #expect(!PathMatch.glob("/api/*/items").matches("/api/v1/items/2"))
        #expect(PathMatch.glob("/a?c").matches("/abc"))
        #expect(PathMatch.prefix("/api/").matches("/api/x"))
        #expect(!PathMatch.exact("/api").matches("/api/"))
        let match = RequestMatch(
            methods: ["GET"], path: .prefix("/"),
            headers: [HeaderMatch(name: "X-Test", test: .glob("yes*")), HeaderMatch(name: "x-on", test: .present)])
        let headers = ["x-test": "yes-please", "x-on": ""]
        #expect(match.matches(method: "GET", path: "/x", header: { headers[$0] }))
        #expect(!match.matches(method: "POST", path: "/x", header: { headers[$0] }))
        #expect(!match.matches(method: "GET", path: "/x", header: { ["x-test": "no"][$0] }))
        #expect(RequestMatch().matches(method: "DELETE", path: "/", header: { _ in nil }))
    }

    @Test func tlsWithoutNamesMintsForSNIAndUpstreamTLS() throws {
        let text = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: "db.internal:5432", tls: {}, upstream_tls: {ca: /etc/ca.pem}}
              - {name: i, listen: 127.0.0.1:3, upstream: 127.0.0.1:2, tls: ~, upstream_tls: {insecure: true, server_name: x}}
            """
        let set = try RuleLoader.load(sources: [("t.yaml", text)]).get()
        #expect(set.listener(named: "s")?.tls == .fromSNI)
        #expect(set.listener(named: "i")?.tls == .fromSNI)
        #expect(set.listener(named: "s")?.upstreamTLS == UpstreamTLSSettings(caFile: "/etc/ca.pem"))
        #expect(set.listener(named: "i")?.upstreamTLS == UpstreamTLSSettings(insecure: true, serverName: "x"))
        let unknown = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: 127.0.0.1:2, upstream_tls: {ca: /x.pem, insecure: true, sni: y}}
            """
        #expect(RuleLoader.load(sources: [("t.yaml", unknown)]).errorDescriptions == [
            #"t.yaml:2:74: listeners[0].upstream_tls: ca and insecure: true exclude each other"#,
            #"t.yaml:2:102: unknown key "listeners[0].upstream_tls.sni"; expected one of ca, insecure, server_name"#,
        ])
        let both = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: 127.0.0.1:2, upstream_tls: {ca: /x.pem, insecure: true}}
            """
        #expect(RuleLoader.load(sources: [("t.yaml", both)]).errorDescriptions == [
            #"t.yaml:2:74: listeners[0].upstream_tls: ca and insecure: true exclude each other"#,
        ])
    }

    @Test func tlsHandshakeTimeout() throws {
        let text = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: 127.0.0.1:2, tls: {handshake_timeout: 3s}}
              - {name: d, listen: 127.0.0.1:3, upstream: 127.0.0.1:2, tls: {}}
            """
        let set = try RuleLoader.load(sources: [("t.yaml", text)]).get()
        #expect(set.listener(named: "s")?.tls?.handshakeTimeout == .seconds(3))
        #expect(set.listener(named: "d")?.tls?.handshakeTimeout == .seconds(10))
        let bad = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: 127.0.0.1:2, tls: {handshake_timeout: 10}}
            """
        #expect(RuleLoader.load(sources: [("t.yaml", bad)]).errorDescriptions == [
            #"t.yaml:2:84: listeners[0].tls.handshake_timeout: "10" is not a duration (write it with a unit: 250ms, 1.5s, 2m)"#,
        ])
    }

    @Test func tlsBlockAndCertificateFaults() throws {
        let text = """
            listeners:
              - {name: s, listen: 127.0.0.1:1, upstream: 127.0.0.1:2, tls: {names: [api.test, 10.0.0.1]}}
              - {name: plain, listen: 127.0.0.1:3, upstream: 127.0.0.1:2}
            faults:
              - {name: old, listener: s, certificate: {kind: expired}}
              - {name: soon, listener: s, certificate: {kind: expiring_soon, within: 168h}}
            """
        let set = try RuleLoader.load(sources: [("t.yaml", text)]).get()
        #expect(set.listener(named: "s")?.tls == TLSSettings(names: ["api.test", "10.0.0.1"]))
        #expect(set.listener(named: "plain")?.tls == nil)
        #expect(set.faults[1].action == .certificate(CertificateFault(kind: .expiring_soon, within: .seconds(7 * 86400))))
        let bad = """
            listeners:
              - {name: plain, listen: 127.0.0.1:3, upstream: 127.0.0.1:2}
            faults:
              - {name: a, listener: plain, certificate: {kind: expired}}
              - {name: b, listener: plain, certificate: {kind: expird}}
              - {name: c, listener: plain, certificate: {kind: expired, within: 1h}}
            """
        #expect(RuleLoader.load(sources: [("t.yaml", bad)]).errorDescriptions == [
            #"t.yaml:4:5: fault "a": certificate needs a listener with a tls: block"#,
            #"t.yaml:5:52: faults[1].certificate.kind: "expird" is not one of expired, not_yet_valid, expiring_soon, wrong_host, self_signed, untrusted_root; did you mean "expired"?"#,
            #"t.yaml:6:61: faults[2].certificate.within: only for kind: expiring_soon"#,
        ])
    }
}
