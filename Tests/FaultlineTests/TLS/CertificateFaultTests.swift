import Faultline
import FaultlineRules
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// TLS termination with Faultline's CA and every certificate fault, checked by real clients:
/// curl and `openssl s_client`.
@Suite struct CertificateFaultTests {
    /// A TLS listener in front of the demo service, its CA written to a file for the clients.
    func withTLSProxy(
        faults: [CertificateFaultKind] = [], handshake: [HandshakeFault] = [], protocol proto: ListenerProtocol = .tcp,
        handshakeTimeout: Duration = TLSSettings.defaultHandshakeTimeout,
        _ body: (_ daemon: Daemon, _ port: Int, _ caFile: String) async throws -> Void
    ) async throws {
        try await withHTTPProxy(
            faults: faults.map { kind in
                FaultRule(
                    name: kind.rawValue, listener: "test",
                    action: .certificate(CertificateFault(kind: kind, within: .seconds(7200))))
            } + handshake.map { FaultRule(name: $0.kind.rawValue, listener: "test", action: .handshake($0)) },
            configure: { rule in
                rule.protocol = proto
                rule.tls = TLSSettings(names: ["localhost", "127.0.0.1"], handshakeTimeout: handshakeTimeout)
            }
        ) { daemon, port, _ in
            let caFile = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ca-\(UUID().uuidString).pem").path
            try daemon.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: caFile) }
            try await body(daemon, port, caFile)
        }
    }

    func curl(_ port: Int, _ caFile: String) async throws -> Curl.Result {
        try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/"])
    }

    @Test(arguments: [ListenerProtocol.tcp, .http])
    func goodCertificateFromTheOwnCA(_ proto: ListenerProtocol) async throws {
        try await withTLSProxy(protocol: proto) { _, port, caFile in
            let result = try await curl(port, caFile)
            #expect(result.status == 0, "\(result.log)")
            #expect(result.text == "hello from the Faultline demo service\n")
            // An independent client agrees.
            let verified = try await OpenSSL.verifyResult(port: port, caFile: caFile)
            #expect(verified.contains("Verify return code: 0 (ok)"))
        }
    }

    @Test(arguments: [
        (CertificateFaultKind.expired, "certificate has expired", String?("Verify return code: 10 (certificate has expired)")),
        (.not_yet_valid, "certificate is not yet valid", "Verify return code: 9 (certificate is not yet valid)"),
        (.wrong_host, "no alternative certificate subject name matches target host name 'localhost'", "Verify return code: 62 (hostname mismatch)"),
        (.self_signed, "self-signed certificate", "Verify return code: 18 (self-signed certificate)"),
        // openssl reports 20 for the leaf, then 21 for the chain as a whole.
        (.untrusted_root, "unable to get local issuer certificate", "verify error:num=20:unable to get local issuer certificate"),
    ])
    func badCertificatesAreRefusedByClients(_ kind: CertificateFaultKind, _ curlMessage: String, _ openSSLResult: String?) async throws {
        try await withTLSProxy(faults: [kind]) { daemon, port, caFile in
            let result = try await curl(port, caFile)
            #expect(result.status == 60, "\(result.log)")
            #expect(result.log.contains(curlMessage), "\(result.log)")
            if let openSSLResult {
                #expect(try await OpenSSL.verifyResult(port: port, caFile: caFile).contains(openSSLResult))
            }
            #expect(await daemon.injections(kind.rawValue) >= 1)
        }
    }

    @Test(arguments: [
        (HandshakeFault(kind: .close), Int32(35), "SSL_ERROR_SYSCALL"),
        (HandshakeFault(kind: .old_protocol), Int32(35), "SSL routines"),
        (HandshakeFault(kind: .client_certificate), Int32(56), "alert certificate required"),
        (HandshakeFault(kind: .alert), Int32(35), "tlsv1 alert internal error"),
    ])
    func handshakeFaultsAsTheClientSeesThem(_ fault: HandshakeFault, _ curlStatus: Int32, _ message: String) async throws {
        try await withTLSProxy(handshake: [fault]) { daemon, port, caFile in
            let result = try await curl(port, caFile)
            #expect(result.status == curlStatus, "\(result.log)")
            #expect(result.log.contains(message), "\(result.log)")
            #expect(result.body.isEmpty)
            #expect(await daemon.injections(fault.kind.rawValue) >= 1)
        }
    }

    /// `http://` to a TLS port: an http listener answers a plain-text 400 that says so (as
    /// nginx does), a tcp listener, which may carry any protocol, only closes; both count the
    /// handshake as `not_tls`.
    @Test(arguments: [ListenerProtocol.tcp, .http])
    func plainHTTPToATLSPortIsToldSo(_ proto: ListenerProtocol) async throws {
        try await withTLSProxy(protocol: proto) { daemon, port, caFile in
            let plain = try await Curl.run(["-i", "http://127.0.0.1:\(port)/"])
            if proto == .http {
                #expect(plain.text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(plain.log)")
                #expect(plain.text.hasSuffix("a plain HTTP request was sent to it\n"))
            } else {
                #expect(plain.status != 0 && plain.body.isEmpty, "\(plain.log)")
            }
            #expect(await daemon.metric(#"faultline_tls_handshakes_total{listener="test",result="not_tls"}"#) == 1)
            // TLS clients are not affected.
            #expect(try await curl(port, caFile).status == 0)
        }
    }

    /// TLS 1.0 and 1.1 are refused unless the `old_protocol` fault offers TLS 1.0 (and then
    /// only that): `openssl s_client` allowed to speak them (security level 0) is the client.
    @Test func oldProtocolsOnlyThroughTheFault() async throws {
        func oldClient(_ port: Int, _ version: String) async throws -> (status: Int32, output: String) {
            try await OpenSSL.run(["s_client", "-connect", "127.0.0.1:\(port)", version, "-cipher", "DEFAULT:@SECLEVEL=0"])
        }
        try await withTLSProxy { _, port, _ in
            for version in ["-tls1", "-tls1_1"] {
                let refused = try await oldClient(port, version)
                #expect(refused.status != 0, "\(version): \(refused.output)")
                #expect(refused.output.contains("alert protocol version"), "\(version): \(refused.output)")
            }
            let current = try await OpenSSL.run(["s_client", "-connect", "127.0.0.1:\(port)", "-tls1_2"])
            #expect(current.output.contains("Protocol  : TLSv1.2"), "\(current.output)")
        }
        try await withTLSProxy(handshake: [HandshakeFault(kind: .old_protocol)]) { _, port, _ in
            let accepted = try await oldClient(port, "-tls1")
            #expect(accepted.output.contains("Protocol  : TLSv1\n"), "\(accepted.output)")
        }
    }

    /// A client that connects and says nothing is closed at the handshake timeout, counted
    /// as `timeout`; a handshake the `delay` fault holds gets its delay on top.
    @Test func handshakeTimeoutClosesSilentClients() async throws {
        try await withTLSProxy(handshakeTimeout: .seconds(1)) { daemon, port, caFile in
            let silent = await RawClient.run(port: port, timeout: .seconds(10))
            #expect(silent.end == .eof)
            #expect(silent.elapsed >= .seconds(1) && silent.elapsed < .seconds(8), "\(silent.elapsed)")
            #expect(await daemon.metric(#"faultline_tls_handshakes_total{listener="test",result="timeout"}"#) == 1)
            let afterwards = try await curl(port, caFile)
            #expect(afterwards.status == 0, "\(afterwards.log)")
        }
        try await withTLSProxy(
            handshake: [HandshakeFault(kind: .delay, delay: .milliseconds(1500))], handshakeTimeout: .seconds(1)
        ) { daemon, port, caFile in
            let result = try await curl(port, caFile)
            #expect(result.text == "hello from the Faultline demo service\n", "\(result.log)")
            #expect(await daemon.metric(#"faultline_tls_handshakes_total{listener="test",result="timeout"}"#) == 0)
        }
    }

    @Test func delayedHandshakeStillSucceeds() async throws {
        try await withTLSProxy(handshake: [HandshakeFault(kind: .delay, delay: .milliseconds(300))]) { _, port, caFile in
            let start = ContinuousClock.now
            let result = try await curl(port, caFile)
            let took = ContinuousClock.now - start
            #expect(result.text == "hello from the Faultline demo service\n", "\(result.log)")
            #expect(took >= .milliseconds(300) && took < .seconds(5), "took \(took)")
        }
    }

    @Test func expiringSoonIsValidButExpiresWithinTheStatedTime() async throws {
        try await withTLSProxy(faults: [.expiring_soon]) { _, port, caFile in
            #expect(try await curl(port, caFile).status == 0)
            let certificate = try await OpenSSL.serverCertificate(port: port)
            // Valid for another hour, gone within two (the rule says within: 2h).
            #expect(try await OpenSSL.checkEnd(certificate, seconds: 3600) == 0)
            #expect(try await OpenSSL.checkEnd(certificate, seconds: 7201) == 1)
        }
    }
}

/// The system's openssl as an independent TLS client.
enum OpenSSL {
    static func run(_ arguments: [String], input: String = "") async throws -> (status: Int32, output: String) {
        let result = try await ChildProcess.run("openssl", arguments, input: input, mergeError: true, deadline: .seconds(15))
        return (result.status, result.text)
    }

    /// What `openssl s_client` says of the server's certificate, checking the host name too
    /// (as the issue's `-verify_hostname` asks), with `-verify_return_error` off so that the
    /// verify code is printed whatever it is.
    static func verifyResult(port: Int, caFile: String) async throws -> String {
        try await run([
            "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", caFile,
            "-verify_hostname", "localhost",
        ]).output
    }

    static func serverCertificate(port: Int) async throws -> String {
        let output = try await run(["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost"]).output
        guard let start = output.range(of: "-----BEGIN CERTIFICATE-----"),
            let end = output.range(of: "-----END CERTIFICATE-----")
        else { return "" }
        return String(output[start.lowerBound..<end.upperBound]) + "\n"
    }

    /// `openssl x509 -checkend`: 0 if the certificate is still valid `seconds` from now, 1 if not.
    static func checkEnd(_ certificate: String, seconds: Int) async throws -> Int32 {
        try await run(["x509", "-noout", "-checkend", "\(seconds)"], input: certificate).status
    }
}

/// `faultlined ca export` with the built binary: the CA is made once, its key is 0600, and
/// the daemon's TLS listeners present certificates that chain to it.
@Suite(.serialized)
struct CAExportTests {
    /// A certificate and key of the user's own (`tls: {certificate, key}`) are what clients
    /// get; certificate faults still present Faultline's bad ones.
    @Test func ownCertificateAndKey() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fl-own-cert-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let made = try await OpenSSL.run([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", folder + "/key.pem", "-out", folder + "/cert.pem", "-days", "30", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost",
        ])
        #expect(made.status == 0, "\(made.output)")
        let expired = FaultRule(name: "expired", listener: "test", enabled: false,
                                action: .certificate(CertificateFault(kind: .expired, within: .seconds(1))))
        try await withHTTPProxy(faults: [expired], configure: {
            $0.tls = TLSSettings(names: ["localhost"], certificateFile: folder + "/cert.pem", keyFile: folder + "/key.pem")
        }) { daemon, port, _ in
            let result = try await Curl.run(["--cacert", folder + "/cert.pem", "https://localhost:\(port)/"])
            #expect(result.status == 0, "\(result.log)")
            #expect(result.text == "hello from the Faultline demo service\n")
            var rules = RuleSet(listeners: [daemon.proxy.listener(named: "test")!.rule], faults: [expired])
            rules.faults[0].enabled = true
            try await daemon.proxy.apply(rules)
            let caFile = folder + "/faultline-ca.pem"
            try daemon.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            let bad = try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/"])
            #expect(bad.log.contains("certificate has expired"), "\(bad.log)")
        }
    }

    /// The user's own CA (here made by openssl) in the state folder is used as it is.
    @Test func ownCAInTheStateFolderSignsTheLeaves() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("fl-own-ca-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: state) }
        let made = try await OpenSSL.run([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", state + "/ca-key.pem", "-out", state + "/ca.pem", "-days", "30", "-subj", "/CN=Our own CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        #expect(made.status == 0, "\(made.output)")
        let exported = try await DaemonProcess.run(["ca", "export", "--state-dir", state])
        #expect(exported.stdout == (try String(contentsOfFile: state + "/ca.pem", encoding: .utf8)))
        let demo = try unusedPort()
        let port = try unusedPort()
        try "listeners:\n  - {name: s, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(demo), tls: {names: [localhost]}}\n"
            .write(toFile: state + "/rules.yaml", atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess([
            "--rules", state, "--demo", "127.0.0.1:\(demo)", "--no-metrics", "--state-dir", state,
        ])
        #expect(await daemon.waitForLog("started"))
        let result = try await Curl.run(["-v", "--cacert", state + "/ca.pem", "https://localhost:\(port)/"])
        #expect(result.status == 0, "\(result.log)")
        #expect(result.log.contains("issuer: CN=Our own CA") || result.log.contains("issuer: CN = Our own CA"), "\(result.log)")
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }

    @Test func exportCreatesTheCAOnceAndTheDaemonUsesIt() async throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("fl-state-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let first = try await DaemonProcess.run(["ca", "export", "--state-dir", state])
        #expect(first.status == 0)
        #expect(first.stdout.hasPrefix("-----BEGIN CERTIFICATE-----"))
        let second = try await DaemonProcess.run(["ca", "export", "--state-dir", state])
        #expect(second.stdout == first.stdout)
        var info = stat()
        #expect(stat(state + "/ca-key.pem", &info) == 0 && info.st_mode & 0o777 == 0o600)

        let caFile = state + "/exported.pem"
        try first.stdout.write(toFile: caFile, atomically: true, encoding: .utf8)
        let demo = try unusedPort()
        let port = try unusedPort()
        let rules = state + "/rules"
        try FileManager.default.createDirectory(atPath: rules, withIntermediateDirectories: true)
        try "listeners:\n  - {name: s, listen: 127.0.0.1:\(port), upstream: 127.0.0.1:\(demo), tls: {names: [localhost]}}\n"
            .write(toFile: rules + "/a.yaml", atomically: true, encoding: .utf8)
        let socket = state + "/control.sock"
        let daemon = try DaemonProcess([
            "--rules", rules, "--demo", "127.0.0.1:\(demo)", "--no-metrics", "--state-dir", state, "--control-socket", socket,
        ])
        #expect(await daemon.waitForLog("started"))
        // faultctl gets the same CA from the running daemon.
        let fromDaemon = try await FaultctlBinaryTests.faultctl(["ca", "export"], socket: socket)
        #expect(fromDaemon.status == 0 && fromDaemon.output == first.stdout)
        let result = try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/"])
        #expect(result.text == "hello from the Faultline demo service\n", "\(result.log)")
        daemon.signal(SIGTERM)
        await daemon.expectCleanExit()
    }
}

/// `faultline_tls_handshakes_total` by result, certificates minted, and the CA's expiry.
@Suite struct TLSMetricsTests {
    @Test func handshakesAreCountedByHowTheyEnded() async throws {
        let faults = [
            FaultRule(name: "expired", listener: "test", enabled: false,
                      action: .certificate(CertificateFault(kind: .expired, within: .seconds(1)))),
        ]
        try await withHTTPProxy(faults: faults, configure: { $0.tls = TLSSettings(names: ["localhost"]) }) { daemon, port, _ in
            let caFile = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ca-\(UUID().uuidString).pem").path
            try daemon.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: caFile) }
            func series(_ result: String) -> String { #"faultline_tls_handshakes_total{listener="test",result="\#(result)"}"# }

            #expect(try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/"]).status == 0)
            #expect(await daemon.metric(series("ok")) == 1)
            // curl refuses the expired certificate with an alert.
            var rules = RuleSet(listeners: [daemon.proxy.listener(named: "test")!.rule], faults: faults)
            rules.faults[0].enabled = true
            try await daemon.proxy.apply(rules)
            #expect(try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/"]).status != 0)
            // A client that goes away before its handshake, and one that speaks plain HTTP.
            _ = await RawClient.run(port: port, halfClose: true)
            _ = await RawClient.send(port: port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            var counts: [Double?] = []
            let deadline = ContinuousClock.now + .seconds(5)
            while counts != [1, 1, 1], ContinuousClock.now < deadline {
                counts = [
                    await daemon.metric(series("client_rejected")), await daemon.metric(series("closed")),
                    await daemon.metric(series("not_tls")),
                ]
                if counts != [1, 1, 1] { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(counts == [1, 1, 1], "client_rejected, closed, not_tls")
            #expect(await daemon.metric(series("other")) == 0)
            // Two leaves minted per rule set (the good one and the expired one), twice.
            #expect((await daemon.metric("faultline_tls_certificates_minted_total") ?? 0) >= 2)
            let expiry = await daemon.metric("faultline_tls_ca_expiry_seconds") ?? 0
            // Ten years from its creation; certificate times have whole seconds, so a CA made
            // moments ago can read a fraction of a second over (seen under ThreadSanitizer).
            #expect(expiry > 9 * 365 * 86400 && expiry <= 10 * 365 * 86400 + 60, "\(expiry)")
        }
    }
}

/// A `tls:` block without `names`: each client gets a certificate for the name it asks for.
@Suite struct SNICertificateTests {
    @Test func certificatesForTheNameAskedForMintedOnceAndFaultsToo() async throws {
        let faults = [
            FaultRule(name: "expired", listener: "test", enabled: false,
                      action: .certificate(CertificateFault(kind: .expired, within: .seconds(1)))),
        ]
        try await withHTTPProxy(faults: faults, configure: { $0.tls = .fromSNI }) { daemon, port, _ in
            let caFile = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ca-\(UUID().uuidString).pem").path
            try daemon.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: caFile) }
            let mintedBefore = await daemon.metric("faultline_tls_certificates_minted_total") ?? 0
            for name in ["api.faultline.test", "db.faultline.test", "api.faultline.test"] {
                let result = try await Curl.run([
                    "--cacert", caFile, "--resolve", "\(name):\(port):127.0.0.1", "https://\(name):\(port)/",
                ])
                #expect(result.status == 0, "\(name): \(result.log)")
                #expect(result.text == "hello from the Faultline demo service\n")
            }
            // One leaf per new name; the second visit of a name reuses its leaf.
            #expect(await daemon.metric("faultline_tls_certificates_minted_total") == mintedBefore + 2)
            let verified = try await OpenSSL.run([
                "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "other.faultline.test", "-CAfile", caFile,
                "-verify_return_error", "-verify_hostname", "other.faultline.test",
            ]).output
            #expect(verified.contains("Verify return code: 0 (ok)"), "\(verified)")

            // The certificate faults follow the name too: expired, for the name asked for.
            var rules = RuleSet(listeners: [daemon.proxy.listener(named: "test")!.rule], faults: faults)
            rules.faults[0].enabled = true
            try await daemon.proxy.apply(rules)
            let expired = try await OpenSSL.run([
                "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "api.faultline.test", "-CAfile", caFile,
                "-verify_hostname", "api.faultline.test",
            ]).output
            #expect(expired.contains("Verify return code: 10 (certificate has expired)"), "\(expired)")
            #expect(expired.contains("CN=api.faultline.test") || expired.contains("CN = api.faultline.test"))
        }
    }
}

/// Switching a certificate fault on never breaks a TLS connection that is already
/// established: its next request goes through, and only new connections see the fault.
@Suite struct TLSSwitchTests {
    @Test func establishedConnectionSurvivesACertificateFaultSwitchedOn() async throws {
        let hold = FaultRule(
            name: "hold-first", listener: "test", match: RequestMatch(path: .exact("/")),
            action: .latency(LatencyFault(delay: .seconds(1), point: .request)))
        let expired = FaultRule(
            name: "expired", listener: "test", enabled: false,
            action: .certificate(CertificateFault(kind: .expired, within: .seconds(1))))
        try await withHTTPProxy(faults: [hold, expired], configure: {
            $0.protocol = .http
            $0.tls = TLSSettings(names: ["localhost"])
        }) { daemon, port, _ in
            let caFile = FileManager.default.temporaryDirectory.appendingPathComponent("fl-ca-\(UUID().uuidString).pem").path
            try daemon.proxy.authorities.main().pem.write(toFile: caFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: caFile) }
            // One curl, two requests on one TLS connection; the fault is switched on while
            // the first is held.
            async let both = Curl.run([
                "-v", "--cacert", caFile, "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
                "https://localhost:\(port)/", "https://localhost:\(port)/bytes/1",
            ])
            let start = ContinuousClock.now
            while await daemon.injections("hold-first") == 0, ContinuousClock.now - start < .seconds(5) {
                try await Task.sleep(for: .milliseconds(5))
            }
            var rules = RuleSet(listeners: [daemon.proxy.listener(named: "test")!.rule], faults: [hold, expired])
            rules.faults[1].enabled = true
            try await daemon.proxy.apply(rules)
            let result = try await both
            #expect(result.text == "200 200 ", "\(result.log)")
            #expect(result.log.contains("Re-using existing connection"))
            // A new connection gets the expired certificate.
            let fresh = try await Curl.run(["--cacert", caFile, "https://localhost:\(port)/bytes/1"])
            #expect(fresh.status != 0)
            #expect(fresh.log.contains("certificate has expired"))
        }
    }
}
