import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Collects the bytes of a head, a chunk-size line or a trailer section, which may arrive split
/// over several reads, up to `maxBytes`. Used by both framers (`HTTPRequestFramer`,
/// `HTTPResponseFramer`): a complete line or block found in one read is a slice of it, no copy.
struct HTTPBlockCollector {
    struct TooLong: Error {}

    let maxBytes: Int
    /// A line or block split over reads: the bytes so far.
    private var partial: ByteBuffer?
    /// Where the last incomplete line in `partial` starts: the next read's scan goes on from there.
    private var partialLineStart = 0

    init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// No bytes of an incomplete line or block are held.
    var isEmpty: Bool { partial == nil }

    /// The bytes of the incomplete line or block held so far (empty when none).
    func withPartialBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        guard let partial else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return try partial.withUnsafeReadableBytes(body)
    }

    /// Up to and including the first line end; nil when it has not come yet.
    mutating func takeLine(_ buffer: inout ByteBuffer) throws(TooLong) -> ByteBuffer? {
        try take(&buffer, block: false)
    }

    /// Up to and including the first empty line (a head, or a trailer section).
    mutating func takeBlock(_ buffer: inout ByteBuffer) throws(TooLong) -> ByteBuffer? {
        try take(&buffer, block: true)
    }

    private mutating func take(_ buffer: inout ByteBuffer, block: Bool) throws(TooLong) -> ByteBuffer? {
        if partial == nil {
            let found = buffer.withUnsafeReadableBytes { Self.scan($0, from: 0, block: block) }
            switch found {
            case .end(let end):
                guard end <= maxBytes else { throw TooLong() }
                return buffer.readSlice(length: end)
            case .incomplete(let lineStart):
                guard buffer.readableBytes > 0 else { return nil }
                guard buffer.readableBytes <= maxBytes else { throw TooLong() }
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
            guard end <= maxBytes else { throw TooLong() }
            buffer.moveReaderIndex(forwardBy: end - before)
            partial = nil
            partialLineStart = 0
            return collected.readSlice(length: end)
        case .incomplete(let lineStart):
            buffer.moveReaderIndex(forwardBy: incoming)
            guard collected.readableBytes <= maxBytes else { throw TooLong() }
            partial = collected
            partialLineStart = lineStart
            return nil
        }
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
        while let index = HTTPHeadBytes.lineEnd(bytes, from: lineStart) {
            let length = index - lineStart
            if !block || length == 0 || (length == 1 && bytes[lineStart] == UInt8(ascii: "\r")) {
                return .end(index + 1)
            }
            lineStart = index + 1
        }
        return .incomplete(lineStart: lineStart)
    }
}

/// Byte-level pieces of HTTP/1.1 heads that both framers read: lines, comma-separated items,
/// case-insensitive names, chunk sizes. They work on the bytes read, without making strings.
enum HTTPHeadBytes {
    typealias Bytes = Slice<UnsafeRawBufferPointer>

    /// The offset of the first LF at or after `start` (memchr: a head is scanned twice per
    /// message, and a byte loop was a tenth of the proxy's own time).
    static func lineEnd(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard start < bytes.count, let base = bytes.baseAddress,
            let found = memchr(base + start, Int32(UInt8(ascii: "\n")), bytes.count - start)
        else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }

    /// A line of just its line end (LF, or CR LF).
    static func isEmptyLine(_ line: ByteBuffer) -> Bool {
        line.readableBytes == 1
            || (line.readableBytes == 2 && line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: "\r"))
    }

    struct InvalidChunkSize: Error {
        let tooLarge: Bool
    }

    /// The size of a chunk from its line: hex digits, maybe extensions after `;`.
    static func chunkSize(_ line: ByteBuffer) throws(InvalidChunkSize) -> Int {
        try line.withUnsafeReadableBytes { bytes throws(InvalidChunkSize) in
            var size = 0
            var digits = 0
            for byte in bytes {
                let value: Int
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a")) + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A")) + 10
                default:
                    guard digits > 0,
                        byte == UInt8(ascii: ";") || byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
                            || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n")
                    else { throw InvalidChunkSize(tooLarge: false) }
                    return size
                }
                digits += 1
                guard digits <= 15 else { throw InvalidChunkSize(tooLarge: true) }
                size = size * 16 + value
            }
            throw InvalidChunkSize(tooLarge: false)
        }
    }

    /// A `Content-Length` value: decimal digits; a list of them (`5, 5`) only if all agree.
    /// nil when invalid.
    static func contentLength(_ value: Bytes, current: Int?) -> Int?? {
        var length = current
        var valid = true
        forEachItem(value) { digits in
            guard valid, !digits.isEmpty, digits.count <= 18,
                digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
            else {
                valid = false
                return
            }
            let parsed = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            if let length, length != parsed { valid = false }
            length = parsed
        }
        return valid ? .some(length) : .none
    }

    /// Whether `chunked` is the last of the transfer codings listed (RFC 9112, section 6.3).
    static func endsWithChunked(_ value: Bytes) -> Bool {
        var chunked = false
        forEachItem(value) { coding in chunked = equalsLowercased(coding, "chunked") }
        return chunked
    }

    /// Calls `body` with each comma-separated item of a header value, trimmed (no array made:
    /// this runs for every message).
    static func forEachItem<E: Error>(_ value: Bytes, _ body: (Bytes) throws(E) -> Void) throws(E) {
        var start = value.startIndex
        while start <= value.endIndex {
            var end = start
            while end < value.endIndex, value[end] != UInt8(ascii: ",") { end += 1 }
            try body(trimmed(value[start..<end]))
            start = end + 1
        }
    }

    static func startsWith(_ bytes: Bytes, _ prefix: StaticString) -> Bool {
        guard bytes.count >= prefix.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount)
        return zip(bytes, expected).allSatisfy { $0 == $1 }
    }

    static func trimmed(_ bytes: Bytes) -> Bytes {
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
        while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
        return bytes[start..<end]
    }

    /// ASCII case-insensitive comparison with a lowercase name (letters and `-` only).
    static func equalsLowercased(_ bytes: Bytes, _ name: StaticString) -> Bool {
        guard bytes.count == name.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        var index = bytes.startIndex
        for byte in expected {
            guard bytes[index] | 0x20 == byte else { return false }
            index += 1
        }
        return true
    }

    /// A token character (RFC 9110, section 5.6.2): what methods and field names are made of.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
            UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}

/// The lines of a head, without their line ends, up to the empty line that ends it.
struct HeadLines {
    private let bytes: UnsafeRawBufferPointer
    private var position = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func next() -> Slice<UnsafeRawBufferPointer>? {
        guard position < bytes.count else { return nil }
        let end = HTTPHeadBytes.lineEnd(bytes, from: position) ?? bytes.count
        var lineEnd = end
        if lineEnd > position, bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
        let line = bytes[position..<lineEnd]
        position = end + 1
        return line.isEmpty ? nil : line
    }
}

/// A message body after its head, in the framing the head gave it (RFC 9112, sections 6 and
/// 7.1): a fixed length, or chunks, each after a size line, then a trailer section. Both
/// framers follow bodies with it; each decides what to do with the framing it hands back.
struct HTTPBodyFraming {
    enum Piece {
        /// Bytes of the body's content; `last` when they complete a fixed-length body.
        case content(ByteBuffer, last: Bool)
        /// The size line of a chunk with content, or the line end after a chunk's content.
        case framing(ByteBuffer)
        /// The size line of the last (empty) chunk: the trailer section comes next.
        case lastChunk(ByteBuffer)
        /// The trailer section and the empty line that ends it: the body is complete.
        case trailers(ByteBuffer)
    }

    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    private enum State {
        case fixed(remaining: Int)
        case chunkSizeLine
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
    }

    private var state: State

    /// A body of `length` bytes (more than 0).
    init(length: Int) {
        state = .fixed(remaining: length)
    }

    /// A chunked body.
    static var chunked: HTTPBodyFraming {
        var framing = HTTPBodyFraming(length: 1)
        framing.state = .chunkSizeLine
        return framing
    }

    /// The next piece from `buffer`, or nil when it is used up (an incomplete line or trailer
    /// section waits in `collector`).
    mutating func next(_ buffer: inout ByteBuffer, collector: inout HTTPBlockCollector) throws(Malformed) -> Piece? {
        switch state {
        case .fixed(let remaining):
            guard buffer.readableBytes > 0 else { return nil }
            let length = min(remaining, buffer.readableBytes)
            state = .fixed(remaining: remaining - length)
            return .content(buffer.readSlice(length: length)!, last: length == remaining)

        case .chunkData(let remaining):
            guard buffer.readableBytes > 0 else { return nil }
            let length = min(remaining, buffer.readableBytes)
            state = length == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - length)
            return .content(buffer.readSlice(length: length)!, last: false)

        case .chunkSizeLine:
            guard let line = try take(&buffer, &collector, block: false) else { return nil }
            let size: Int
            do {
                size = try HTTPHeadBytes.chunkSize(line)
            } catch {
                throw Malformed(description: error.tooLarge ? "chunk size too large" : "invalid chunk size")
            }
            if size == 0 {
                state = .trailers
                return .lastChunk(line)
            }
            state = .chunkData(remaining: size)
            return .framing(line)

        case .chunkDataEnd:
            guard let line = try take(&buffer, &collector, block: false) else { return nil }
            guard HTTPHeadBytes.isEmptyLine(line) else { throw Malformed(description: "no line end after a chunk") }
            state = .chunkSizeLine
            return .framing(line)

        case .trailers:
            guard let block = try take(&buffer, &collector, block: true) else { return nil }
            return .trailers(block)
        }
    }

    private func take(
        _ buffer: inout ByteBuffer, _ collector: inout HTTPBlockCollector, block: Bool
    ) throws(Malformed) -> ByteBuffer? {
        do {
            return block ? try collector.takeBlock(&buffer) : try collector.takeLine(&buffer)
        } catch {
            throw Malformed(description: "\(block ? "trailer section" : "chunk line") over \(collector.maxBytes) bytes")
        }
    }
}
