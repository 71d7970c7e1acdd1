import NIOCore
import Testing

@testable import Faultline

/// `HTTPResponseFramer` cuts an upstream's bytes into responses. Each stream is fed whole and
/// split at every size from 1 byte up: the parts must say the same, and their bytes put back
/// together must be the stream itself (a response reaches the client as the upstream sent it).
@Suite struct ResponseFramerTests {
    /// What the parts of a stream say, with consecutive body bytes merged (where a read ends
    /// is not part of the answer).
    struct Framed {
        var events: [String] = []
        var bytes: [UInt8] = []
    }

    func frame(_ text: String, readSize: Int? = nil, answersHead: Bool = false, maxHeadBytes: Int = 1024) throws -> Framed {
        var framer = HTTPResponseFramer(maxHeadBytes: maxHeadBytes)
        framer.answersHeadRequest = answersHead
        let input = Array(text.utf8)
        var framed = Framed()
        var offset = 0
        repeat {
            let end = min(input.count, offset + (readSize ?? input.count))
            // Each read in a buffer of its own, as a channel hands them out.
            var buffer = ByteBuffer(bytes: input[offset..<end])
            offset = end
            while let part = try framer.next(&buffer) {
                switch part {
                case .complete(let head, let bytes, let headLength):
                    // The same as a head, its body and the end.
                    framed.events.append("head \(head.status)\(head.keepAlive ? " keep-alive" : "")\(head.endsWithClose ? " until-close" : "") \(head.connection)")
                    if bytes.readableBytes > headLength { framed.events.append("body \(bytes.readableBytes - headLength)") }
                    framed.events.append("end")
                    framed.bytes += bytes.readableBytesView
                case .head(let head, let bytes):
                    framed.events.append("head \(head.status)\(head.keepAlive ? " keep-alive" : "")\(head.endsWithClose ? " until-close" : "") \(head.connection)")
                    framed.bytes += bytes.readableBytesView
                case .body(let bytes):
                    if let last = framed.events.last, last.hasPrefix("body ") {
                        framed.events[framed.events.count - 1] = "body \(Int(last.dropFirst(5))! + bytes.readableBytes)"
                    } else {
                        framed.events.append("body \(bytes.readableBytes)")
                    }
                    framed.bytes += bytes.readableBytesView
                case .framing(let bytes):
                    framed.bytes += bytes.readableBytesView
                case .end(let last):
                    framed.events.append("end")
                    if let last { framed.bytes += last.readableBytesView }
                case .tunnel(let bytes):
                    framed.events.append("tunnel \(bytes.readableBytes)")
                    framed.bytes += bytes.readableBytesView
                }
            }
            #expect(buffer.readableBytes == 0)
        } while offset < input.count
        if framer.connectionEnded() { framed.events.append("end at close") }
        return framed
    }

    /// Fed whole and in reads of 1 to 9 bytes: the same parts, and every byte passed on.
    func expectFramed(_ text: String, answersHead: Bool = false, _ expected: [String]) throws {
        for readSize in [nil] + Array(1...9) {
            let framed = try frame(text, readSize: readSize, answersHead: answersHead)
            #expect(framed.events == expected, "read size \(readSize.map(String.init) ?? "whole")")
            #expect(framed.bytes == Array(text.utf8), "read size \(readSize.map(String.init) ?? "whole")")
        }
    }

    @Test func fixedLengthBodiesAndBodilessResponsesOnOneConnection() throws {
        try expectFramed(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
                + "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
                + "HTTP/1.1 304 Not Modified\r\n\r\n"
                + "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
            [
                "head 200 keep-alive keepAlive", "body 5", "end", "head 204 keep-alive absent", "end",
                "head 304 keep-alive absent", "end", "head 200 close", "end",
            ])
    }

    @Test func chunkedBodiesWithExtensionsAndTrailers() throws {
        try expectFramed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n"
                + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            ["head 200 keep-alive absent", "body 11", "end", "head 200 keep-alive absent", "body 10", "end"])
    }

    @Test func interimAnswersAndHeadRequests() throws {
        try expectFramed(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ["head 100 keep-alive absent", "head 200 keep-alive absent", "body 2", "end"])
        // The answer to a HEAD has no body, whatever its Content-Length says.
        try expectFramed(
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", answersHead: true,
            ["head 200 keep-alive absent", "end", "head 200 keep-alive absent", "end"])
    }

    @Test func bodiesThatEndWithTheConnection() throws {
        // No length: the body runs to the close, and the upstream does not keep the connection.
        try expectFramed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nabc", ["head 200 until-close keepAlive", "body 3", "end at close"])
        // A coding other than chunked last: the same.
        try expectFramed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz", ["head 200 until-close absent", "body 3", "end at close"])
        // HTTP/1.0 keeps its connection only when it says so.
        try expectFramed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", ["head 200 absent", "end"])
        try expectFramed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", ["head 200 keep-alive keepAlive", "end"])
    }

    @Test func switchingProtocolsHandsOverTheRest() throws {
        let framed = try frame("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{81}\u{2}hi")
        #expect(framed.events == ["head 101 keep-alive other", "tunnel 5"])
    }

    @Test func lineEndsWithoutCarriageReturns() throws {
        try expectFramed("HTTP/1.1 200 OK\nContent-Length: 2\n\nokHTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1\nx\n0\n\n",
            ["head 200 keep-alive absent", "body 2", "end", "head 200 keep-alive absent", "body 1", "end"])
    }

    @Test func malformedResponsesAreErrors() throws {
        let broken = [
            "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "HTTP/1.1 200 OK\r\nName : value\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            "HTTP/1.1 200 OK\r\nX: \(String(repeating: "y", count: 2000))\r\n\r\n",
        ]
        for text in broken {
            for readSize in [nil, 1, 3] {
                #expect(throws: HTTPResponseFramer.FramingError.self, "\(text.prefix(60)) read size \(String(describing: readSize))") {
                    _ = try frame(text, readSize: readSize)
                }
            }
        }
    }

    /// Streams made of valid pieces and broken ones (a seeded generator, 3,000 of them): fed
    /// whole or in reads of random sizes, the framer says the same thing, or fails on both.
    @Test func whereReadsEndDoesNotChangeTheOutcome() throws {
        var random = FaultRandom(seed: 0x5EED)  // the same streams on every run
        let pieces = [
            "HTTP/1.1 200 OK\r\n", "HTTP/1.0 204 No Content\r\n", "HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 304 x\r\n",
            "Content-Length: 3\r\n", "Content-Length: 0\r\n", "content-length: 3, 3\r\n", "Content-Length: 4\r\n",
            "Transfer-Encoding: chunked\r\n", "Connection: close\r\n", "Connection: keep-alive, x\r\n", "X: y\r\n",
            "\r\n", "\n", "abc", "3\r\nabc\r\n", "0\r\n\r\n", "0\r\nT: 1\r\n\r\n", "1;e=1\r\nz\r\n", "zz\r\n",
            ":\r\n", "HTTP/1.1 999 Odd\r\n", " ", "\r",
        ]
        for _ in 0..<3_000 {
            var text = ""
            for _ in 0..<Int.random(in: 1...12, using: &random) { text += pieces.randomElement(using: &random)! }
            let whole = Result { try frame(text, maxHeadBytes: 64) }
            var framer = HTTPResponseFramer(maxHeadBytes: 64)
            var split = Framed()
            let input = Array(text.utf8)
            var offset = 0
            let outcome = Result {
                while offset < input.count {
                    let end = min(input.count, offset + Int.random(in: 1...7, using: &random))
                    var buffer = ByteBuffer(bytes: input[offset..<end])
                    offset = end
                    while let part = try framer.next(&buffer) {
                        switch part {
                        case .complete(let head, let bytes, _):
                            split.events.append("head \(head.status)")
                            split.events.append("end")
                            split.bytes += bytes.readableBytesView
                        case .head(let head, let bytes):
                            split.events.append("head \(head.status)")
                            split.bytes += bytes.readableBytesView
                        case .body(let bytes), .framing(let bytes), .tunnel(let bytes): split.bytes += bytes.readableBytesView
                        case .end(let last):
                            split.events.append("end")
                            if let last { split.bytes += last.readableBytesView }
                        }
                    }
                }
            }
            switch (whole, outcome) {
            case (.success(let framed), .success):
                #expect(framed.bytes == split.bytes, "\(text.debugDescription)")
                #expect(framed.events.filter { $0 == "end" }.count == split.events.filter { $0 == "end" }.count, "\(text.debugDescription)")
            case (.failure, .failure):
                break
            default:
                Issue.record("whole and split disagree on \(text.debugDescription)")
            }
        }
    }

    @Test func connectionHeaderIsReplacedWithWhatItNames() {
        let head = ByteBuffer(
            string: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n"
                + "Content-Length: 3\r\nX-End-To-End: 2\r\n\r\n")
        let replaced = HTTPResponseFramer.replacingConnection(in: head, with: "close")
        #expect(String(buffer: replaced) == "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-End-To-End: 2\r\nConnection: close\r\n\r\n")
        let removed = HTTPResponseFramer.replacingConnection(in: head, with: nil)
        #expect(String(buffer: removed) == "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-End-To-End: 2\r\n\r\n")
    }
}

