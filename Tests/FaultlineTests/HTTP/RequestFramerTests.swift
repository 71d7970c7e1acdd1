import NIOCore
import NIOHTTP1
import Testing

@testable import Faultline

/// `HTTPRequestFramer` cuts a client's bytes into requests. Each stream is fed whole and split
/// at every read size from 1 byte up: the parts must say the same, and the body bytes handed
/// out must be the body the client sent.
@Suite struct RequestFramerTests {
    /// What the parts of a stream say, with consecutive body bytes merged (where a read ends
    /// is not part of the answer), and the bytes held for an upgrade.
    struct Framed: Equatable {
        var events: [String] = []
        var body: [UInt8] = []
        /// The heads' bytes as handed out.
        var heads: [UInt8] = []
        var held = 0
    }

    func frame(_ text: String, readSize: Int? = nil, maxHeadBytes: Int = 1024) throws(HTTPRequestFramer.MalformedRequest) -> Framed {
        var framer = HTTPRequestFramer(maxHeadBytes: maxHeadBytes)
        let input = Array(text.utf8)
        var framed = Framed()
        var offset = 0
        var held: ByteBuffer?
        repeat {
            let end = min(input.count, offset + (readSize ?? input.count))
            // Each read in a buffer of its own, as a channel hands them out.
            var buffer = ByteBuffer(bytes: input[offset..<end])
            offset = end
            if var before = held {
                before.writeBuffer(&buffer)
                buffer = before
            }
            while let part = try framer.next(&buffer) {
                switch part {
                case .head(let head, let bytes):
                    framed.heads += bytes.readableBytesView
                    let fields = head.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ",")
                    framed.events.append("head \(head.method.rawValue) \(head.uri) \(head.version) [\(fields)]")
                case .body(let bytes):
                    if let last = framed.events.last, last.hasPrefix("body ") {
                        framed.events[framed.events.count - 1] = "body \(Int(last.dropFirst(5))! + bytes.readableBytes)"
                    } else {
                        framed.events.append("body \(bytes.readableBytes)")
                    }
                    framed.body += bytes.readableBytesView
                case .end(let trailers):
                    framed.events.append("end" + (trailers.map { " " + $0.map { "\($0.name)=\($0.value)" }.joined(separator: ",") } ?? ""))
                }
            }
            held = framer.isWaitingForUpgrade && buffer.readableBytes > 0 ? buffer : nil
            if !framer.isWaitingForUpgrade { #expect(buffer.readableBytes == 0) }
        } while offset < input.count
        framed.held = held?.readableBytes ?? 0
        return framed
    }

    func expectFramed(_ text: String, _ expected: [String], body: String = "", held: Int = 0) throws {
        for readSize in [nil] + Array(1...9) {
            let framed = try frame(text, readSize: readSize)
            #expect(framed.events == expected, "read size \(String(describing: readSize))")
            #expect(framed.body == Array(body.utf8), "read size \(String(describing: readSize))")
            #expect(framed.held == held, "read size \(String(describing: readSize))")
        }
    }

    @Test func headsAndBodiesOfPipelinedRequests() throws {
        try expectFramed(
            "GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Tag:  spaced value \r\n\r\n"
                + "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                + "HEAD / HTTP/1.0\r\n\r\n"
                + "\r\nPATCH /c HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            [
                "head GET /a?x=1 HTTP/1.1 [Host=h,X-Tag=spaced value]", "end",
                "head POST /b HTTP/1.1 [Content-Length=5]", "body 5", "end",
                "head HEAD / HTTP/1.0 []", "end",
                "head PATCH /c HTTP/1.1 [Content-Length=0]", "end",
            ], body: "hello")
    }

    /// A head's bytes are the client's own, so that an unchanged head goes upstream as it came.
    @Test func headBytesAreTheClientsOwn() throws {
        let first = "GET /a HTTP/1.1\r\nHost: h\r\nX-Tag:  spaced value \r\n\r\n"
        let second = "POST /b HTTP/1.1\nContent-Length: 5\n\n"
        for readSize in [nil, 1, 3, 8] {
            let framed = try frame(first + second + "hello", readSize: readSize)
            #expect(framed.heads == Array((first + second).utf8), "read size \(String(describing: readSize))")
        }
    }

    @Test func chunkedBodiesLoseTheirFramingAndKeepTheirTrailers() throws {
        try expectFramed(
            "PUT /u HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Sum: 3\r\n\r\n"
                + "PUT /v HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            [
                "head PUT /u HTTP/1.1 [Transfer-Encoding=gzip, chunked]", "body 15", "end X-Sum=3",
                "head PUT /v HTTP/1.1 [Transfer-Encoding=chunked]", "body 3", "end",
            ], body: "hello0123456789abc")
    }

    @Test func lineEndsWithoutCarriageReturns() throws {
        try expectFramed(
            "POST /x HTTP/1.1\nContent-Length: 2\n\nokGET / HTTP/1.1\n\n",
            ["head POST /x HTTP/1.1 [Content-Length=2]", "body 2", "end", "head GET / HTTP/1.1 []", "end"], body: "ok")
    }

    /// After an `Upgrade` request nothing is read as HTTP: the bytes behind it wait for the
    /// tunnel (or for `resumeAfterRefusedUpgrade`).
    @Test func upgradeRequestsStopTheFraming() throws {
        try expectFramed(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}binary GET / HTTP/1.1\r\n\r\n",
            ["head GET /ws HTTP/1.1 [Upgrade=websocket,Connection=Upgrade]", "end"], held: 27)
        var framer = HTTPRequestFramer(maxHeadBytes: 1024)
        var buffer = ByteBuffer(string: "GET /ws HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        while try framer.next(&buffer) != nil {}
        #expect(framer.isWaitingForUpgrade && framer.isBetweenRequests)
        framer.resumeAfterRefusedUpgrade()
        guard case .head(let head, _) = try framer.next(&buffer) else {
            Issue.record("the next request is read once the upgrade is refused")
            return
        }
        #expect(head.uri == "/next")
    }

    @Test func aRequestCutShortIsNotBetweenRequests() throws {
        for text in ["G", "GET / HTTP/1.1\r\n", "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"] {
            var framer = HTTPRequestFramer(maxHeadBytes: 1024)
            var buffer = ByteBuffer(string: text)
            while try framer.next(&buffer) != nil {}
            #expect(!framer.isBetweenRequests, "\(text)")
        }
        var framer = HTTPRequestFramer(maxHeadBytes: 1024)
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        while try framer.next(&buffer) != nil {}
        #expect(framer.isBetweenRequests)
    }

    /// Each is refused whole and however it is split: what lets one request pass as two
    /// (RFC 9112, section 11.2), and what is not HTTP/1.x at all.
    @Test func malformedRequestsAreRefused() throws {
        let malformed = [
            "NOT HTTP AT ALL\r\n\r\n",
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1 \r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET /a\u{7F}b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\u{1}b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n",
        ]
        for text in malformed {
            for readSize in [nil] + Array(1...7) {
                #expect(throws: HTTPRequestFramer.MalformedRequest.self, "\(text.debugDescription) read size \(String(describing: readSize))") {
                    _ = try frame(text, readSize: readSize)
                }
            }
        }
    }

    /// A head whose first bytes cannot begin a request line is refused before it is complete
    /// (nothing else would end it before the head timeout); one whose first bytes can is waited for.
    @Test func whatCannotBeARequestIsRefusedBeforeItsEnd() throws {
        for start in ["\u{16}\u{3}\u{1}", "\u{FF}", " GET", "GE(", "GET\t/", "\r\n\u{0}"] {
            var framer = HTTPRequestFramer(maxHeadBytes: 1024)
            var buffer = ByteBuffer(string: start)
            #expect(throws: HTTPRequestFramer.MalformedRequest.self, "\(start.debugDescription)") { _ = try framer.next(&buffer) }
        }
        for start in ["G", "GET", "GET ", "GET /a HTTP/1.1\r\nHost", "\r\n\r\nPOST", "M-SEARCH * HTTP/1.1\r\n"] {
            var framer = HTTPRequestFramer(maxHeadBytes: 1024)
            var buffer = ByteBuffer(string: start)
            #expect(try framer.next(&buffer) == nil, "\(start.debugDescription)")
        }
        var framer = HTTPRequestFramer(maxHeadBytes: 1024)
        var hello = ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x00, 0xa0])
        do {
            _ = try framer.next(&hello)
            Issue.record("a ClientHello was taken for the start of a request")
        } catch {
            #expect(error.description == "a TLS handshake; this listener has no tls: block")
        }
    }

    @Test func headsOverTheLimitAreTooLarge() {
        let text = "GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 300))\r\n\r\n"
        for readSize in [nil, 1, 7, 100] {
            do {
                _ = try frame(text, readSize: readSize, maxHeadBytes: 256)
                Issue.record("a 330-byte head passed a 256-byte limit")
            } catch {
                #expect(error.tooLarge, "read size \(String(describing: readSize))")
            }
        }
        #expect((try? frame(text, maxHeadBytes: 512)) != nil)
    }

    /// Seeded streams of valid and broken requests, fed whole and in reads of random sizes:
    /// both ways give the same parts and body bytes, or both fail.
    @Test func whereReadsEndDoesNotChangeTheOutcome() throws {
        let pieces = [
            "GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nhi\r\n0\r\nT: 1\r\n\r\n",
            "\r\n",
            "DELETE /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET /e HTTP/1.1\r\nX: a\r\n",  // cut short
            "BAD\r\n\r\n",
            "POST /f HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ]
        var random = FaultRandom(seed: 20261202)
        for _ in 0..<2000 {
            let count = 1 + Int(random.next() % 4)
            let text = (0..<count).map { _ in pieces[Int(random.next() % UInt64(pieces.count))] }.joined()
            let whole = Result { try frame(text) }
            let pieced = Result { try frame(text, readSize: 1 + Int(random.next() % 17)) }
            switch (whole, pieced) {
            case (.success(let a), .success(let b)): #expect(a == b, "\(text.debugDescription)")
            case (.failure, .failure): break
            default: Issue.record("whole and split disagree for \(text.debugDescription)")
            }
        }
    }
}
