import NIOCore
import NIOHTTP1

/// A request as it goes upstream: its head as the client sent it, or as parsed less the headers
/// Faultline removes, and its body in the framing the client chose. Written straight into one
/// buffer per head, rather than through NIO's request encoder and its extra pipeline step per part.
struct HTTPRequestBytes {
    /// The body goes in chunks: the client sent it so (the decoder hands out the content).
    private(set) var chunked = false

    /// The head's bytes (`bytes` when given: the head as the client sent it); remembers
    /// whether the body that follows is chunked.
    mutating func head(_ head: HTTPRequestHead, as bytes: ByteBuffer?, allocator: ByteBufferAllocator) -> ByteBuffer {
        chunked = Self.isChunked(head)
        if let bytes { return bytes }
        var buffer = allocator.buffer(capacity: 256)
        buffer.writeString(head.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(head.uri)
        buffer.writeStaticString(head.version.minor == 0 && head.version.major == 1 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
        Self.writeFields(head.headers, to: &buffer)
        return buffer
    }

    /// The line before a chunk of `length` bytes (nil when the body is not chunked).
    func chunkHeader(length: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard chunked, length > 0 else { return nil }
        var buffer = allocator.buffer(capacity: 18)
        buffer.writeString(String(length, radix: 16))
        buffer.writeStaticString("\r\n")
        return buffer
    }

    /// What ends the body: the last chunk and trailers of a chunked one, nothing otherwise.
    func end(_ trailers: HTTPHeaders?, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard chunked else { return nil }
        var buffer = allocator.buffer(capacity: 16)
        buffer.writeStaticString("0\r\n")
        Self.writeFields(trailers ?? [:], to: &buffer)
        return buffer
    }

    /// Header or trailer fields, then the empty line that ends them.
    private static func writeFields(_ fields: HTTPHeaders, to buffer: inout ByteBuffer) {
        for (name, value) in fields {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
    }

    /// Chunked when the last transfer coding is (RFC 9112, section 6.1); the request framer has
    /// already refused a request that says both `Transfer-Encoding` and `Content-Length`.
    private static func isChunked(_ head: HTTPRequestHead) -> Bool {
        guard head.version.major == 1, head.version.minor >= 1, head.headers.contains(name: "transfer-encoding") else {
            return false
        }
        let codings = head.headers[canonicalForm: "transfer-encoding"]
        return codings.last.map { $0.lowercased() == "chunked" } ?? false
    }
}
