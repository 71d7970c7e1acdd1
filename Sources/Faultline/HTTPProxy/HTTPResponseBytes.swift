import NIOCore
import NIOHTTP1

/// Response bytes on their way to a client, as an exchange queues them while a fault holds or
/// paces the response, or while the client is not writable.
enum HTTPResponseBytes {
    /// A response head, interim or final.
    case head(ByteBuffer)
    /// Body content: what truncation and throttling count.
    case body(ByteBuffer)
    /// Chunked framing between pieces of content.
    case framing(ByteBuffer)
    /// The response is complete, with its last bytes if it has any (the last chunk and trailers).
    case end(ByteBuffer?)

    /// An answer of Faultline's own (an abort, 502, 504): an HTTP/1.1 head with the given fields
    /// and a `Content-Length`, then the body unless the request was a HEAD. Header names and
    /// values have been checked when the rules were read (no line breaks, token names).
    static func answer(status: Int, headers: [(name: String, value: String)], body: String, isHead: Bool) -> ByteBuffer {
        let reason = HTTPResponseStatus(statusCode: status).reasonPhrase
        var buffer = ByteBufferAllocator().buffer(capacity: 128 + body.utf8.count)
        buffer.writeString("HTTP/1.1 \(status) \(reason)\r\n")
        for header in headers where header.name.lowercased() != "content-length" {
            buffer.writeString(header.name)
            buffer.writeStaticString(": ")
            buffer.writeString(header.value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeString("Content-Length: \(body.utf8.count)\r\n\r\n")
        if !isHead { buffer.writeString(body) }
        return buffer
    }
}
