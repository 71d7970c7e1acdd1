import NIOCore

/// Finds where an upstream's responses begin and end in the bytes it sends, so that they go to
/// the client as they came: a response is forwarded as the buffers it was read in (slices, no
/// copy), and only its head is looked at. Decoding the response into header strings and
/// encoding it again for the client cost more than the rest of a keep-alive request's work
/// together; a proxy needs to know only the status, the framing (RFC 9112, section 6.3) and
/// what `Connection` says.
///
/// The framer is fed what the upstream connection reads and hands out `Part`s in order. Bytes
/// of a head, a chunk-size line or a trailer section that arrive split over several reads are
/// collected (up to `maxHeadBytes`) and handed out once complete; everything else is a slice of
/// the buffer read.
struct HTTPResponseFramer {
    /// What a response head says, as far as the proxy cares.
    struct Head {
        var status: Int
        var isHTTP10: Bool
        /// The upstream keeps its connection open after this response: HTTP/1.1 without
        /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`, and a body whose end
        /// is not the connection's end.
        var keepAlive: Bool
        var connection: ConnectionHeader
        /// The body ends when the upstream closes the connection.
        var endsWithClose: Bool
    }

    /// The `Connection` header of a response, as a proxy needs it: whether the head can go to
    /// the client unchanged.
    enum ConnectionHeader: Equatable {
        case absent
        case keepAlive
        case close
        /// Other options (`upgrade`, names of hop-by-hop headers), or more than one.
        case other
    }

    enum Part {
        /// A whole final response with a fixed-length or no body, read in one piece: its head is
        /// the first `headLength` bytes. Most small responses come so, and go on in one write.
        case complete(Head, ByteBuffer, headLength: Int)
        /// A response head, interim (1xx) or final, with its bytes.
        case head(Head, ByteBuffer)
        /// Bytes of the body's content.
        case body(ByteBuffer)
        /// Bytes of the body's framing: chunk-size lines, the line ends after chunks.
        case framing(ByteBuffer)
        /// The response is complete; with the last chunk and trailers of a chunked body.
        case end(ByteBuffer?)
        /// Bytes after a `101 Switching Protocols`: no longer HTTP.
        case tunnel(ByteBuffer)
    }

    struct FramingError: Error, CustomStringConvertible {
        let description: String
    }

    private enum State {
        case head
        case body(HTTPBodyFraming)
        case untilClose
        case tunnel
    }

    /// What follows a head, as it says.
    private enum Next {
        case noBody
        case fixed(Int)
        case chunked
        case untilClose
        case tunnel
    }

    var maxHeadBytes: Int { collector.maxBytes }
    private var state = State.head
    /// The request being answered is a HEAD: its response has no body, whatever it says.
    var answersHeadRequest = false
    /// A head, line or trailer section split over reads.
    private var collector: HTTPBlockCollector
    /// A response's last body bytes (or its head, when it has no body) were handed out: its
    /// end is the next part.
    private var pendingEnd = false
    /// The last chunk's size line, waiting for the trailer section it ends with.
    private var lastChunk: ByteBuffer?

    init(maxHeadBytes: Int) {
        collector = HTTPBlockCollector(maxBytes: maxHeadBytes)
    }

    /// True between responses: no byte of a response has been seen since the last one ended.
    var isBetweenResponses: Bool {
        if case .head = state { return collector.isEmpty && !pendingEnd }
        return false
    }

    /// The next part from `buffer`, or nil when `buffer` is used up (bytes of an incomplete
    /// head or line are kept for the next call).
    mutating func next(_ buffer: inout ByteBuffer) throws -> Part? {
        if pendingEnd {
            pendingEnd = false
            return .end(nil)
        }
        switch state {
        case .head:
            let assembled = !collector.isEmpty
            guard let head = try takeBlock(&buffer) else { return nil }
            let parsed = try Self.parseHead(head, answersHeadRequest: answersHeadRequest)
            if !assembled, parsed.head.status >= 200 {
                // The head is a slice of `buffer`: when the body follows in full, one slice
                // holds the whole response.
                let bodyLength: Int? =
                    switch parsed.next {
                    case .noBody: 0
                    case .fixed(let length) where length <= buffer.readableBytes: length
                    default: nil
                    }
                if let bodyLength {
                    buffer.moveReaderIndex(to: buffer.readerIndex - head.readableBytes)
                    state = .head
                    return .complete(
                        parsed.head, buffer.readSlice(length: head.readableBytes + bodyLength)!, headLength: head.readableBytes)
                }
            }
            switch parsed.next {
            case .noBody:
                // A final response without a body is complete with its head.
                pendingEnd = parsed.head.status >= 200
            case .fixed(let length): state = .body(HTTPBodyFraming(length: length))
            case .chunked: state = .body(.chunked)
            case .untilClose: state = .untilClose
            case .tunnel: state = .tunnel
            }
            return .head(parsed.head, head)

        case .body(var body):
            let piece: HTTPBodyFraming.Piece?
            do {
                piece = try body.next(&buffer, collector: &collector)
            } catch {
                throw FramingError(description: error.description)
            }
            switch piece {
            case nil:
                state = .body(body)
                return nil
            case .content(let bytes, let last):
                state = last ? .head : .body(body)
                pendingEnd = last
                return .body(bytes)
            case .framing(let line):
                state = .body(body)
                return .framing(line)
            case .lastChunk(let line):
                // The last chunk's line goes out with the trailers, as the response's end.
                lastChunk = line
                state = .body(body)
                return try next(&buffer)
            case .trailers(var trailers):
                state = .head
                if var last = lastChunk {
                    lastChunk = nil
                    last.writeBuffer(&trailers)
                    return .end(last)
                }
                return .end(trailers)
            }

        case .untilClose:
            guard buffer.readableBytes > 0 else { return nil }
            return .body(buffer.readSlice(length: buffer.readableBytes)!)

        case .tunnel:
            guard buffer.readableBytes > 0 else { return nil }
            return .tunnel(buffer.readSlice(length: buffer.readableBytes)!)
        }
    }


    /// A body that runs to the connection's end is complete when the connection ends.
    mutating func connectionEnded() -> Bool {
        guard case .untilClose = state else { return false }
        state = .head
        return true
    }

    // MARK: Lines and blocks

    private mutating func takeBlock(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        do {
            return try collector.takeBlock(&buffer)
        } catch {
            throw FramingError(description: "response head over \(maxHeadBytes) bytes")
        }
    }

    // MARK: Heads

    private static func parseHead(_ head: ByteBuffer, answersHeadRequest: Bool) throws -> (head: Head, next: Next) {
        try head.withUnsafeReadableBytes { bytes in
            var lines = HeadLines(bytes)
            guard let statusLine = lines.next() else { throw FramingError(description: "empty response head") }
            // "HTTP/1.1 200 OK": the version, a space, three digits, then a space or the end.
            guard statusLine.count >= 12, HTTPHeadBytes.startsWith(statusLine, "HTTP/1."),
                statusLine[7] == UInt8(ascii: "0") || statusLine[7] == UInt8(ascii: "1"),
                statusLine[8] == UInt8(ascii: " "),
                statusLine[9...11].allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                statusLine.count == 12 || statusLine[12] == UInt8(ascii: " ")
            else { throw FramingError(description: "malformed status line") }
            let isHTTP10 = statusLine[7] == UInt8(ascii: "0")
            let status = statusLine[9...11].reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard status >= 100 else { throw FramingError(description: "status \(status) out of range") }

            var contentLength: Int?
            var chunked = false
            var hasTransferEncoding = false
            var connection = ConnectionHeader.absent
            var closes = false
            var keepsAlive = false
            while let line = lines.next() {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else {
                    throw FramingError(description: "malformed header line")
                }
                let name = line[line.startIndex..<colon]
                guard !name.contains(where: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) else {
                    throw FramingError(description: "white space in a header name")
                }
                let value = HTTPHeadBytes.trimmed(line[(colon + 1)...])
                if HTTPHeadBytes.equalsLowercased(name, "content-length") {
                    guard let length = HTTPHeadBytes.contentLength(value, current: contentLength) else {
                        throw FramingError(description: "invalid or conflicting Content-Length")
                    }
                    contentLength = length
                } else if HTTPHeadBytes.equalsLowercased(name, "transfer-encoding") {
                    hasTransferEncoding = true
                    // Chunked only when it is the last coding applied (RFC 9112, section 6.3).
                    chunked = HTTPHeadBytes.endsWithChunked(value)
                } else if HTTPHeadBytes.equalsLowercased(name, "connection") {
                    HTTPHeadBytes.forEachItem(value) { option in
                        let kind: ConnectionHeader =
                            HTTPHeadBytes.equalsLowercased(option, "close") ? .close : HTTPHeadBytes.equalsLowercased(option, "keep-alive") ? .keepAlive : .other
                        if kind == .close { closes = true }
                        if kind == .keepAlive { keepsAlive = true }
                        connection = connection == .absent ? kind : .other
                    }
                }
            }

            var next: Next
            var endsWithClose = false
            if status < 200 {
                next = status == 101 ? .tunnel : .noBody
            } else if answersHeadRequest || status == 204 || status == 304 {
                next = .noBody
            } else if hasTransferEncoding {
                if chunked {
                    next = .chunked
                } else {
                    next = .untilClose
                    endsWithClose = true
                }
            } else if let contentLength {
                next = contentLength == 0 ? .noBody : .fixed(contentLength)
            } else {
                next = .untilClose
                endsWithClose = true
            }
            let keepAlive = !endsWithClose && (isHTTP10 ? keepsAlive && !closes : !closes)
            let head = Head(
                status: status, isHTTP10: isHTTP10, keepAlive: keepAlive, connection: connection,
                endsWithClose: endsWithClose)
            return (head, next)
        }
    }

    /// Rebuilds a response head for the client with `Connection` set to `value` (or removed):
    /// the upstream's `Connection` header, and the headers it names, are about the upstream's
    /// own connection (RFC 9110, section 7.6.1).
    static func replacingConnection(in head: ByteBuffer, with value: String?) -> ByteBuffer {
        head.withUnsafeReadableBytes { bytes in
            var lines = HeadLines(bytes)
            var out = ByteBufferAllocator().buffer(capacity: bytes.count + 24)
            guard let statusLine = lines.next() else { return head }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: statusLine))
            out.writeStaticString("\r\n")
            var named: Set<String> = []
            var rest = lines
            while let line = rest.next() {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
                if HTTPHeadBytes.equalsLowercased(line[line.startIndex..<colon], "connection") {
                    for item in line[(colon + 1)...].split(separator: UInt8(ascii: ",")) {
                        named.insert(String(decoding: HTTPHeadBytes.trimmed(item), as: UTF8.self).lowercased())
                    }
                }
            }
            // Never dropped on a `Connection` option's say-so: the response's framing.
            named.subtract(["content-length", "transfer-encoding", "close"])
            while let line = lines.next() {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
                let name = line[line.startIndex..<colon]
                if HTTPHeadBytes.equalsLowercased(name, "connection") || HTTPHeadBytes.equalsLowercased(name, "keep-alive")
                    || HTTPHeadBytes.equalsLowercased(name, "proxy-connection")
                    || named.contains(String(decoding: name, as: UTF8.self).lowercased())
                {
                    continue
                }
                out.writeBytes(UnsafeRawBufferPointer(rebasing: line))
                out.writeStaticString("\r\n")
            }
            if let value { out.writeString("Connection: \(value)\r\n") }
            out.writeStaticString("\r\n")
            return out
        }
    }
}
