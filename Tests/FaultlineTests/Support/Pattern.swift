import NIOCore

/// A byte stream whose every byte is known from its offset, so that a receiver can check
/// a transfer byte for byte without keeping a copy of what was sent.
enum Pattern {
    @inline(__always)
    static func byte(at offset: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: offset &* 31 &+ (offset >> 11))
    }

    static func chunk(from offset: Int, count: Int, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: count)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            for index in 0..<count { raw[index] = byte(at: offset + index) }
            return count
        }
        return buffer
    }

    /// Checks `buffer` against the pattern starting at `offset`; returns the first bad offset.
    static func firstMismatch(in buffer: ByteBuffer, at offset: Int) -> Int? {
        buffer.withUnsafeReadableBytes { raw in
            for index in 0..<raw.count where raw[index] != byte(at: offset + index) {
                return offset + index
            }
            return nil
        }
    }
}
