import NIOCore

/// The back-pressure gate of a channel handler: an outbound `read()` passes only while its
/// connection allows this side to read (the partner is connected and writable, no fault holds
/// too much); otherwise it is held, and issued when the connection resumes reading. NIO asks
/// for a read after every read burst while `autoRead` is on, so holding that request is what
/// stops reading, with no change to the channel's options.
struct ReadGate {
    private var held = false

    /// Passes the read on when `allowed`; holds it otherwise.
    mutating func read(_ context: ChannelHandlerContext, allowed: Bool) {
        if allowed {
            context.read()
        } else {
            held = true
        }
    }

    /// Issues a held read, if any (a handler that has left its pipeline has no context).
    mutating func resume(_ context: ChannelHandlerContext?) {
        guard held, let context else { return }
        held = false
        context.read()
    }
}
