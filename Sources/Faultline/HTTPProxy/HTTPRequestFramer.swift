import NIOCore
import NIOHTTP1

/// Cuts what a client sends into requests: the head parsed into an `HTTPRequestHead` (what
/// fault matching and the connection read), the body handed out as slices of the buffers read
/// (no copy), whatever its framing (RFC 9112, section 6): fixed length or chunked, with the
/// chunk framing taken off (the request writer frames the body again for the upstream).
///
/// It does the job of NIO's request decoder, which took a twelfth of the proxy's CPU time per
/// keep-alive request (the C parser's callbacks, a string per header piece, the decoder's
/// pipeline step); here a head is found with `memchr` and read once. A malformed request is a
/// `MalformedRequest` (400), a head over `maxHeadBytes` a `tooLarge` one (431). What it refuses
/// is what lets one request pass as two (RFC 9112, section 11.2): white space before a colon,
/// folded lines, control bytes, `Transfer-Encoding` beside `Content-Length`, a last transfer
/// coding other than chunked, differing `Content-Length` values.
///
/// After a request that asks for `Upgrade` it stops: the bytes behind it are the tunnel's if
/// the upstream switches protocols (`resumeAfterRefusedUpgrade` when it does not).
struct HTTPRequestFramer {
    enum Part {
        /// A request head, parsed, and its bytes as the client sent them (written upstream as
        /// they are when Faultline changes nothing in the head).
        case head(HTTPRequestHead, ByteBuffer)
        /// Bytes of the body's content (chunk framing taken off).
        case body(ByteBuffer)
        /// The request is complete; with the trailers of a chunked body, if it had any.
        case end(HTTPHeaders?)
    }

    struct MalformedRequest: Error, CustomStringConvertible {
        let description: String
        /// The head is larger than allowed (431 rather than 400).
        var tooLarge = false
    }

    private enum State {
        case head
        case body(HTTPBodyFraming)
        /// After an `Upgrade` request: nothing more is read as HTTP for now.
        case upgradePending
        /// After a malformed request: the connection is being closed.
        case failed
    }

    private var state = State.head
    private var collector: HTTPBlockCollector
    /// The request's last bytes were handed out: its end is the next part.
    private var pendingEnd = false
    private var upgradeAfterEnd = false

    init(maxHeadBytes: Int) {
        collector = HTTPBlockCollector(maxBytes: maxHeadBytes)
    }

    /// True after a request that asked for `Upgrade`, until `resumeAfterRefusedUpgrade`.
    var isWaitingForUpgrade: Bool {
        if case .upgradePending = state { return true }
        return false
    }

    /// No byte of a request has been read since the last one ended.
    var isBetweenRequests: Bool {
        switch state {
        case .head: collector.isEmpty && !pendingEnd
        case .upgradePending: true
        default: false
        }
    }

    /// The upstream did not switch protocols: what follows is HTTP again.
    mutating func resumeAfterRefusedUpgrade() {
        if case .upgradePending = state { state = .head }
    }

    /// The next part from `buffer`, or nil when `buffer` is used up (bytes of an incomplete
    /// head or line are kept for the next call) or, waiting for an upgrade, left as they are.
    mutating func next(_ buffer: inout ByteBuffer) throws(MalformedRequest) -> Part? {
        do {
            return try nextPart(&buffer)
        } catch {
            state = .failed
            throw error
        }
    }

    private mutating func nextPart(_ buffer: inout ByteBuffer) throws(MalformedRequest) -> Part? {
        if pendingEnd {
            pendingEnd = false
            return end(nil)
        }
        switch state {
        case .head:
            // Empty lines before a request line are ignored (RFC 9112, section 2.2).
            while true {
                guard let block = try take(&buffer, block: true) else {
                    try checkRequestLineStart()
                    return nil
                }
                if HTTPHeadBytes.isEmptyLine(block) { continue }
                let (head, body) = try Self.parseHead(block)
                upgradeAfterEnd = head.headers.contains(name: "upgrade")
                if let body {
                    state = .body(body)
                } else {
                    pendingEnd = true
                }
                return .head(head, block)
            }

        case .body(var body):
            while true {
                let piece: HTTPBodyFraming.Piece?
                do {
                    piece = try body.next(&buffer, collector: &collector)
                } catch {
                    throw MalformedRequest(description: error.description)
                }
                switch piece {
                case nil:
                    state = .body(body)
                    return nil
                case .content(let bytes, let last):
                    state = last ? .head : .body(body)
                    pendingEnd = last
                    return .body(bytes)
                case .framing, .lastChunk:
                    continue  // the request writer frames the body again
                case .trailers(let block):
                    state = .head
                    return end(HTTPHeadBytes.isEmptyLine(block) ? nil : try Self.parseTrailers(block))
                }
            }

        case .upgradePending, .failed:
            return nil
        }
    }

    /// Refuses an incomplete head at once when its first bytes cannot begin a request line
    /// (a method is a token followed by a space), rather than after the head timeout: a TLS
    /// client on a listener without `tls:`, or another protocol, learns at once (as from nginx
    /// or HAProxy) instead of hanging until the head timeout.
    private func checkRequestLineStart() throws(MalformedRequest) {
        let problem: String? = collector.withPartialBytes { bytes in
            var index = 0
            while index < bytes.count, bytes[index] == UInt8(ascii: "\r") || bytes[index] == UInt8(ascii: "\n") {
                index += 1
            }
            let methodStart = index
            while index < bytes.count, bytes[index] != UInt8(ascii: " ") {
                guard HTTPHeadBytes.isTokenByte(bytes[index]) else {
                    // 0x16: a TLS record of type handshake, the first byte of every ClientHello.
                    return index == methodStart && bytes[index] == 0x16
                        ? "a TLS handshake; this listener has no tls: block" : "malformed request line"
                }
                index += 1
            }
            return index < bytes.count && index == methodStart ? "malformed request line" : nil
        }
        if let problem { throw MalformedRequest(description: problem) }
    }

    private mutating func end(_ trailers: HTTPHeaders?) -> Part {
        if upgradeAfterEnd {
            upgradeAfterEnd = false
            state = .upgradePending
        }
        return .end(trailers)
    }

    private mutating func take(_ buffer: inout ByteBuffer, block: Bool) throws(MalformedRequest) -> ByteBuffer? {
        do {
            return block ? try collector.takeBlock(&buffer) : try collector.takeLine(&buffer)
        } catch {
            throw block
                ? MalformedRequest(description: "request head over \(collector.maxBytes) bytes", tooLarge: true)
                : MalformedRequest(description: "chunk line over \(collector.maxBytes) bytes")
        }
    }

    // MARK: Heads

    /// What a head says about its body's framing (RFC 9112, section 6.3).
    private struct Framing {
        var contentLength: Int?
        /// Present: whether chunked is the last coding of every `Transfer-Encoding` field.
        var chunked: Bool?

        mutating func read(name: Slice<UnsafeRawBufferPointer>, value: Slice<UnsafeRawBufferPointer>) throws(MalformedRequest) {
            if HTTPHeadBytes.equalsLowercased(name, "content-length") {
                guard let length = HTTPHeadBytes.contentLength(value, current: contentLength) else {
                    throw MalformedRequest(description: "invalid or conflicting Content-Length")
                }
                contentLength = length
            } else if HTTPHeadBytes.equalsLowercased(name, "transfer-encoding") {
                // A coding after chunked in a later field makes chunked not the last one.
                chunked = HTTPHeadBytes.endsWithChunked(value)
            }
        }

        /// The body that follows the head; nil when there is none.
        func body() throws(MalformedRequest) -> HTTPBodyFraming? {
            if let chunked {
                guard contentLength == nil else { throw MalformedRequest(description: "both Transfer-Encoding and Content-Length") }
                guard chunked else { throw MalformedRequest(description: "a transfer coding other than chunked last") }
                return .chunked
            }
            if let contentLength, contentLength > 0 { return HTTPBodyFraming(length: contentLength) }
            return nil
        }
    }

    private static func parseHead(_ block: ByteBuffer) throws(MalformedRequest) -> (HTTPRequestHead, HTTPBodyFraming?) {
        try block.withUnsafeReadableBytes { bytes throws(MalformedRequest) in
            var lines = HeadLines(bytes)
            guard let requestLine = lines.next() else { throw MalformedRequest(description: "empty request head") }
            let (method, uri, version) = try parseRequestLine(requestLine)
            var framing = Framing()
            let fields = try parseFields(&lines, framing: &framing)
            let head = HTTPRequestHead(version: version, method: method, uri: uri, headers: HTTPHeaders(fields))
            return (head, try framing.body())
        }
    }

    /// "GET /path HTTP/1.1": a method (a token), one space, a target without spaces or control
    /// bytes, one space, HTTP/1.0 or HTTP/1.1.
    private static func parseRequestLine(
        _ line: Slice<UnsafeRawBufferPointer>
    ) throws(MalformedRequest) -> (HTTPMethod, String, HTTPVersion) {
        guard let firstSpace = line.firstIndex(of: UInt8(ascii: " ")), firstSpace > line.startIndex,
            line[line.startIndex..<firstSpace].allSatisfy(HTTPHeadBytes.isTokenByte)
        else { throw MalformedRequest(description: "malformed request line") }
        let targetStart = firstSpace + 1
        guard let secondSpace = line[targetStart...].firstIndex(of: UInt8(ascii: " ")), secondSpace > targetStart,
            line[targetStart..<secondSpace].allSatisfy({ $0 > 0x20 && $0 != 0x7F })
        else { throw MalformedRequest(description: "malformed request line") }
        let versionBytes = line[(secondSpace + 1)...]
        guard versionBytes.count == 8, HTTPHeadBytes.startsWith(versionBytes, "HTTP/1.") else {
            throw MalformedRequest(description: "unsupported HTTP version")
        }
        let version: HTTPVersion
        switch versionBytes[versionBytes.startIndex + 7] {
        case UInt8(ascii: "1"): version = .http1_1
        case UInt8(ascii: "0"): version = .http1_0
        default: throw MalformedRequest(description: "unsupported HTTP version")
        }
        let method = Self.method(line[line.startIndex..<firstSpace])
        return (method, String(decoding: line[targetStart..<secondSpace], as: UTF8.self), version)
    }

    /// The common methods without making a string for them.
    private static func method(_ token: Slice<UnsafeRawBufferPointer>) -> HTTPMethod {
        if HTTPHeadBytes.startsWith(token, "GET"), token.count == 3 { return .GET }
        if HTTPHeadBytes.startsWith(token, "POST"), token.count == 4 { return .POST }
        if HTTPHeadBytes.startsWith(token, "PUT"), token.count == 3 { return .PUT }
        if HTTPHeadBytes.startsWith(token, "HEAD"), token.count == 4 { return .HEAD }
        if HTTPHeadBytes.startsWith(token, "DELETE"), token.count == 6 { return .DELETE }
        return HTTPMethod(rawValue: String(decoding: token, as: UTF8.self))
    }

    /// Header (or trailer) fields: `name: value`, the name a token right before the colon.
    private static func parseFields(
        _ lines: inout HeadLines, framing: inout Framing
    ) throws(MalformedRequest) -> [(String, String)] {
        var fields: [(String, String)] = []
        while let line = lines.next() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else {
                let folded = line.first == UInt8(ascii: " ") || line.first == UInt8(ascii: "\t")
                throw MalformedRequest(description: folded ? "folded header line" : "malformed header line")
            }
            let name = line[line.startIndex..<colon]
            guard name.allSatisfy(HTTPHeadBytes.isTokenByte) else {
                throw MalformedRequest(description: "invalid header name")
            }
            let value = HTTPHeadBytes.trimmed(line[(colon + 1)...])
            // Visible bytes, spaces, tabs and obs-text; a bare CR or any other control byte is refused.
            guard value.allSatisfy({ $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 }) else {
                throw MalformedRequest(description: "control byte in a header value")
            }
            try framing.read(name: name, value: value)
            fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        return fields
    }

    /// A trailer section (its framing fields mean nothing there).
    private static func parseTrailers(_ block: ByteBuffer) throws(MalformedRequest) -> HTTPHeaders {
        try block.withUnsafeReadableBytes { bytes throws(MalformedRequest) in
            var lines = HeadLines(bytes)
            var ignored = Framing()
            return HTTPHeaders(try parseFields(&lines, framing: &ignored))
        }
    }
}
