import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

extension ListenerConfiguration.Upstream {
    /// Dials the upstream with `bootstrap`, whose group is the connection's own event loop.
    ///
    /// An upstream on loopback (the usual sidecar) is connected when connect(2) returns: the
    /// kernel runs the whole handshake inside the call. `ClientBootstrap` still waits for the
    /// socket to turn writable: it registers for writability, arms the connect timeout, goes
    /// back to epoll, and on the event asks the socket for its error and addresses and takes
    /// the writability interest off again. For a loopback address the socket is connected
    /// here, poll(2) with a zero timeout says whether it is done, and NIO takes the connected
    /// socket (`withConnectedSocket`), so that the channel starts active: two system calls
    /// fewer per connection (NIO's taking over costs two fcntl calls, the check a poll) and
    /// no loop iteration waiting for the connect. Anything else (another
    /// host, a name, a loopback connect not done at once because the upstream's accept queue
    /// is full) goes through the bootstrap.
    func connect(_ bootstrap: ClientBootstrap, on eventLoop: EventLoop) -> EventLoopFuture<Channel> {
        switch self {
        case .loopback(let address):
            switch LoopbackConnect.attempt(address) {
            case .connected(let socket): return bootstrap.withConnectedSocket(socket)
            case .failed(let error): return eventLoop.makeFailedFuture(error)
            case .pending: return bootstrap.connect(to: address)
            }
        case .address(let address):
            return bootstrap.connect(to: address)
        case .name(let host, let port):
            return bootstrap.connect(host: host, port: port)
        }
    }
}

/// One non-blocking connect to a loopback address, done or not at once.
enum LoopbackConnect {
    enum Outcome {
        /// A connected, non-blocking socket for NIO to take over.
        case connected(CInt)
        /// Refused (nothing listens there) or another error: the dial failed.
        case failed(IOError)
        /// Not done within the call (the upstream's accept queue is full, so the SYN was
        /// dropped and waits for its retransmission): the socket is closed before the upstream
        /// has seen a connection, and the bootstrap dials again and waits.
        case pending
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            // 127.0.0.0/8; s_addr is in network byte order.
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6(let v6):
            var loopback = in6addr_loopback
            var own = v6.address.sin6_addr
            return memcmp(&own, &loopback, MemoryLayout<in6_addr>.size) == 0
        case .unixDomainSocket:
            return false
        }
    }

    static func attempt(_ address: SocketAddress) -> Outcome {
        let family = address.protocol == .inet6 ? AF_INET6 : AF_INET
        let socket = Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        // Out of descriptors, say: the bootstrap tries and reports it as it would have.
        guard socket >= 0 else { return .pending }
        let result = address.withSockAddr { pointer, size in Glibc.connect(socket, pointer, socklen_t(size)) }
        if result == 0 { return .connected(socket) }
        let error = errno
        guard error == EINPROGRESS else {
            close(socket)
            return .failed(IOError(errnoCode: error, reason: "connect"))
        }
        var poll = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
        guard Glibc.poll(&poll, 1, 0) == 1 else {
            close(socket)
            return .pending
        }
        if poll.revents & Int16(POLLERR | POLLHUP) == 0 { return .connected(socket) }
        var socketError: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        getsockopt(socket, SOL_SOCKET, SO_ERROR, &socketError, &length)
        close(socket)
        return .failed(IOError(errnoCode: socketError != 0 ? socketError : ECONNREFUSED, reason: "connect"))
    }
}
