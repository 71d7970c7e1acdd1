import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
        case fixedBody(remaining: Int)
        case chunkSizeLine
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
        case tunnel
    }

    let maxHeadBytes: Int
    private var state = State.head
    /// The request being answered is a HEAD: its response has no body, whatever it says.
    var answersHeadRequest = false
    /// A head, line or trailer section split over reads: the bytes so far.
    private var partial: ByteBuffer?
    /// Where the last incomplete line in `partial` starts: the next read's scan goes on from there.
    private var partialLineStart = 0
    /// A response's last body bytes (or its head, when it has no body) were handed out: its
    /// end is the next part.
    private var pendingEnd = false
    /// The last chunk's size line, waiting for the trailer section it ends with.
    private var lastChunk: ByteBuffer?

    init(maxHeadBytes: Int) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// True between responses: no byte of a response has been seen since the last one ended.
    var isBetweenResponses: Bool {
        if case .head = state { return partial == nil && !pendingEnd }
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
            let assembled = partial != nil
            guard let head = try takeBlock(&buffer) else { return nil }
            let parsed = try Self.parseHead(head, answersHeadRequest: answersHeadRequest)
            if !assembled, parsed.head.status >= 200 {
                // The head is a slice of `buffer`: when the body follows in full, one slice
                // holds the whole response.
                let bodyLength: Int? =
                    switch parsed.next {
                    case .head: 0
                    case .fixedBody(let length) where length <= buffer.readableBytes: length
                    default: nil
                    }
                if let bodyLength {
                    buffer.moveReaderIndex(to: buffer.readerIndex - head.readableBytes)
                    state = .head
                    return .complete(
                        parsed.head, buffer.readSlice(length: head.readableBytes + bodyLength)!, headLength: head.readableBytes)
                }
            }
            state = parsed.next
            // A final response without a body is complete with its head.
            if parsed.head.status >= 200, case .head = parsed.next { pendingEnd = true }
            return .head(parsed.head, head)

        case .fixedBody(let remaining):
            guard buffer.readableBytes > 0 else { return nil }
            let length = min(remaining, buffer.readableBytes)
            let slice = buffer.readSlice(length: length)!
            if length == remaining {
                state = .head
                pendingEnd = true
            } else {
                state = .fixedBody(remaining: remaining - length)
            }
            return .body(slice)

        case .chunkSizeLine:
            guard let line = try takeLine(&buffer) else { return nil }
            let size = try Self.chunkSize(line)
            state = size == 0 ? .trailers : .chunkData(remaining: size)
            if size == 0 {
                // The last chunk's line goes out with the trailers, as the response's end.
                lastChunk = line
                return try next(&buffer)
            }
            return .framing(line)

        case .chunkData(let remaining):
            guard buffer.readableBytes > 0 else { return nil }
            let length = min(remaining, buffer.readableBytes)
            state = length == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - length)
            return .body(buffer.readSlice(length: length)!)

        case .chunkDataEnd:
            guard let line = try takeLine(&buffer) else { return nil }
            guard Self.isEmptyLine(line) else { throw FramingError(description: "no line end after a chunk") }
            state = .chunkSizeLine
            return .framing(line)

        case .trailers:
            guard var trailers = try takeBlock(&buffer) else { return nil }
            state = .head
            if var last = lastChunk {
                lastChunk = nil
                last.writeBuffer(&trailers)
                return .end(last)
            }
            return .end(trailers)

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

    /// Up to and including the first line end.
    private mutating func takeLine(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        try take(&buffer, block: false)
    }

    /// Up to and including the first empty line (a head, or a trailer section).
    private mutating func takeBlock(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        try take(&buffer, block: true)
    }

    private mutating func take(_ buffer: inout ByteBuffer, block: Bool) throws -> ByteBuffer? {
        if partial == nil {
            let found = buffer.withUnsafeReadableBytes { Self.scan($0, from: 0, block: block) }
            switch found {
            case .end(let end):
                guard end <= maxHeadBytes else { throw tooLong(block) }
                return buffer.readSlice(length: end)
            case .incomplete(let lineStart):
                guard buffer.readableBytes > 0 else { return nil }
                guard buffer.readableBytes <= maxHeadBytes else { throw tooLong(block) }
                // Copied: the read buffer is reused for the next read.
                var copy = ByteBufferAllocator().buffer(capacity: buffer.readableBytes)
                copy.writeBuffer(&buffer)
                partial = copy
                partialLineStart = lineStart
                return nil
            }
        }
        guard buffer.readableBytes > 0, var collected = partial else { return nil }
        let before = collected.readableBytes
        let incoming = buffer.readableBytes
        collected.writeImmutableBuffer(buffer)
        let found = collected.withUnsafeReadableBytes { Self.scan($0, from: partialLineStart, block: block) }
        switch found {
        case .end(let end):
            guard end <= maxHeadBytes else { throw tooLong(block) }
            buffer.moveReaderIndex(forwardBy: end - before)
            partial = nil
            partialLineStart = 0
            return collected.readSlice(length: end)
        case .incomplete(let lineStart):
            buffer.moveReaderIndex(forwardBy: incoming)
            guard collected.readableBytes <= maxHeadBytes else { throw tooLong(block) }
            partial = collected
            partialLineStart = lineStart
            return nil
        }
    }

    private func tooLong(_ block: Bool) -> FramingError {
        FramingError(description: block ? "response head over \(maxHeadBytes) bytes" : "chunk line over \(maxHeadBytes) bytes")
    }

    private enum ScanResult {
        /// The bytes up to this offset are the line or block.
        case end(Int)
        /// No end yet; the last line begins here.
        case incomplete(lineStart: Int)
    }

    /// Finds the first line end, or (`block`) the end of the first empty line; a line ends with
    /// LF, and a CR before it is part of the line end.
    private static func scan(_ bytes: UnsafeRawBufferPointer, from start: Int, block: Bool) -> ScanResult {
        var lineStart = start
        while let index = lineEnd(bytes, from: lineStart) {
            let length = index - lineStart
            if !block || length == 0 || (length == 1 && bytes[lineStart] == UInt8(ascii: "\r")) {
                return .end(index + 1)
            }
            lineStart = index + 1
        }
        return .incomplete(lineStart: lineStart)
    }

    /// The offset of the first LF at or after `start` (memchr: a head is scanned twice per
    /// response, and a byte loop was a tenth of the proxy's own time).
    static func lineEnd(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard start < bytes.count, let base = bytes.baseAddress,
            let found = memchr(base + start, Int32(UInt8(ascii: "\n")), bytes.count - start)
        else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }

    private static func isEmptyLine(_ line: ByteBuffer) -> Bool {
        line.readableBytes == 1 || (line.readableBytes == 2 && line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: "\r"))
    }

    // MARK: Heads

    private static func parseHead(_ head: ByteBuffer, answersHeadRequest: Bool) throws -> (head: Head, next: State) {
        try head.withUnsafeReadableBytes { bytes in
            var lines = HeadLines(bytes)
            guard let statusLine = lines.next() else { throw FramingError(description: "empty response head") }
            // "HTTP/1.1 200 OK": the version, a space, three digits, then a space or the end.
            guard statusLine.count >= 12, startsWith(statusLine, "HTTP/1."),
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
                let value = trimmed(line[(colon + 1)...])
                if equalsLowercased(name, "content-length") {
                    try forEachItem(value) { digits in
                        guard !digits.isEmpty, digits.count <= 18,
                            digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
                        else { throw FramingError(description: "invalid Content-Length") }
                        let length = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
                        if let contentLength, contentLength != length {
                            throw FramingError(description: "conflicting Content-Length values")
                        }
                        contentLength = length
                    }
                } else if equalsLowercased(name, "transfer-encoding") {
                    hasTransferEncoding = true
                    // Chunked only when it is the last coding applied (RFC 9112, section 6.3).
                    chunked = false
                    forEachItem(value) { coding in chunked = equalsLowercased(coding, "chunked") }
                } else if equalsLowercased(name, "connection") {
                    forEachItem(value) { option in
                        let kind: ConnectionHeader =
                            equalsLowercased(option, "close") ? .close : equalsLowercased(option, "keep-alive") ? .keepAlive : .other
                        if kind == .close { closes = true }
                        if kind == .keepAlive { keepsAlive = true }
                        connection = connection == .absent ? kind : .other
                    }
                }
            }

            var next: State
            var endsWithClose = false
            if status < 200 {
                next = status == 101 ? .tunnel : .head
            } else if answersHeadRequest || status == 204 || status == 304 {
                next = .head
            } else if hasTransferEncoding {
                if chunked {
                    next = .chunkSizeLine
                } else {
                    next = .untilClose
                    endsWithClose = true
                }
            } else if let contentLength {
                next = contentLength == 0 ? .head : .fixedBody(remaining: contentLength)
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

    /// The size of a chunk from its line: hex digits, maybe extensions after `;`.
    private static func chunkSize(_ line: ByteBuffer) throws -> Int {
        try line.withUnsafeReadableBytes { bytes in
            var size = 0
            var digits = 0
            for byte in bytes {
                let value: Int
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a")) + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A")) + 10
                default:
                    guard digits > 0, [UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n")].contains(byte)
                    else { throw FramingError(description: "invalid chunk size") }
                    return size
                }
                digits += 1
                guard digits <= 15 else { throw FramingError(description: "chunk size too large") }
                size = size * 16 + value
            }
            throw FramingError(description: "invalid chunk size")
        }
    }

    /// Calls `body` with each comma-separated item of a header value, trimmed (no array made:
    /// this runs for every response).
    private static func forEachItem(
        _ value: Slice<UnsafeRawBufferPointer>, _ body: (Slice<UnsafeRawBufferPointer>) throws -> Void
    ) rethrows {
        var start = value.startIndex
        while start <= value.endIndex {
            var end = start
            while end < value.endIndex, value[end] != UInt8(ascii: ",") { end += 1 }
            try body(trimmed(value[start..<end]))
            start = end + 1
        }
    }

    private static func startsWith(_ bytes: Slice<UnsafeRawBufferPointer>, _ prefix: StaticString) -> Bool {
        guard bytes.count >= prefix.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount)
        return zip(bytes, expected).allSatisfy { $0 == $1 }
    }

    private static func trimmed(_ bytes: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
        while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
        return bytes[start..<end]
    }

    /// ASCII case-insensitive comparison with a lowercase name (letters and `-` only).
    private static func equalsLowercased(_ bytes: Slice<UnsafeRawBufferPointer>, _ name: StaticString) -> Bool {
        guard bytes.count == name.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        var index = bytes.startIndex
        for byte in expected {
            guard bytes[index] | 0x20 == byte else { return false }
            index += 1
        }
        return true
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
                if equalsLowercased(line[line.startIndex..<colon], "connection") {
                    for item in line[(colon + 1)...].split(separator: UInt8(ascii: ",")) {
                        named.insert(String(decoding: trimmed(item), as: UTF8.self).lowercased())
                    }
                }
            }
            // Never dropped on a `Connection` option's say-so: the response's framing.
            named.subtract(["content-length", "transfer-encoding", "close"])
            while let line = lines.next() {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
                let name = line[line.startIndex..<colon]
                if equalsLowercased(name, "connection") || equalsLowercased(name, "keep-alive")
                    || equalsLowercased(name, "proxy-connection")
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

/// The lines of a head, without their line ends, up to the empty line that ends it.
private struct HeadLines {
    private let bytes: UnsafeRawBufferPointer
    private var position = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func next() -> Slice<UnsafeRawBufferPointer>? {
        guard position < bytes.count else { return nil }
        let end = HTTPResponseFramer.lineEnd(bytes, from: position) ?? bytes.count
        var lineEnd = end
        if lineEnd > position, bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
        let line = bytes[position..<lineEnd]
        position = end + 1
        return line.isEmpty ? nil : line
    }
}
