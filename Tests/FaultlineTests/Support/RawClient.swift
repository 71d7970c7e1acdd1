#if canImport(Glibc)
import Glibc
#endif

/// A blocking socket client for tests that must tell a reset from a FIN for certain: recv(2)
/// says ECONNRESET for an RST and 0 for a FIN (NIO may report a reset seen through EPOLLHUP
/// as an end of input). Every call is bounded by the socket timeout.
enum RawClient {
    enum End: Equatable {
        case eof
        case reset
        case timeout
        case refused
    }

    struct Result {
        var received = 0
        var end = End.eof
        var elapsed: Duration = .zero
    }

    /// Sends `send` bytes of `a` (or `payload`), half-closes if asked, and reads to the end.
    static func run(
        port: Int, send: Int = 0, payload: [UInt8]? = nil, halfClose: Bool = false, timeout: Duration = .seconds(10)
    ) -> Result {
        let start = ContinuousClock.now
        var result = Result()
        guard let fd = connectedSocket(port: port, timeout: timeout) else {
            result.end = .refused
            return result
        }
        defer { close(fd) }
        if send > 0 || payload != nil {
            let bytes = payload ?? [UInt8](repeating: 0x61, count: send)
            if Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) < 0, errno == ECONNRESET || errno == EPIPE {
                result.end = .reset
                result.elapsed = ContinuousClock.now - start
                return result
            }
        }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count > 0 {
                result.received += count
                continue
            }
            if count == 0 {
                result.end = .eof
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                result.end = .timeout
            } else {
                result.end = .reset
            }
            break
        }
        result.elapsed = ContinuousClock.now - start
        return result
    }

    /// A blocking TCP socket connected to 127.0.0.1:`port`, whose sends and receives give up
    /// after `timeout`; nil when the connection is refused.
    static func connectedSocket(port: Int, timeout: Duration) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let (seconds, attoseconds) = timeout.components
        var time = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            return nil
        }
        return fd
    }
}

import Foundation

/// Runs blocking socket calls on a thread of their own, so that a test waiting in recv(2)
/// never holds one of the few threads Swift concurrency runs every test on.
func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.start()
    }
}

extension RawClient {
    static func run(port: Int, send: Int = 0, halfClose: Bool = false, timeout: Duration = .seconds(10)) async -> Result {
        (try? await offThePool { run(port: port, send: send, halfClose: halfClose, timeout: timeout) as Result }) ?? Result(end: .refused)
    }

    /// Sends `bytes` as they are, half-closes, and reads whatever comes back until the end.
    static func sendBytes(port: Int, _ bytes: [UInt8], timeout: Duration = .seconds(10)) async -> Result {
        (try? await offThePool { run(port: port, payload: bytes, halfClose: true, timeout: timeout) as Result })
            ?? Result(end: .refused)
    }

    struct Reply {
        var status: Int?
        var body: String
    }

    /// One raw HTTP exchange (the request should say `Connection: close`): the status and body
    /// of the answer, or no status if the server closed (or did not answer within `timeout`).
    static func exchange(port: Int, _ request: [UInt8], timeout: Duration = .seconds(1)) async -> Reply {
        let text = (try? await offThePool { receiveAll(port: port, request, timeout: timeout) }) ?? ""
        guard text.hasPrefix("HTTP/1.1 "), let status = Int(text.dropFirst(9).prefix(3)) else { return Reply(status: nil, body: text) }
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return Reply(status: status, body: body)
    }

    private static func receiveAll(port: Int, _ request: [UInt8], timeout: Duration) -> String {
        guard let fd = connectedSocket(port: port, timeout: timeout) else { return "" }
        defer { close(fd) }
        _ = Glibc.send(fd, request, request.count, Int32(MSG_NOSIGNAL))
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            received += buffer[0..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }

    /// Sends `text` as it is (raw HTTP, garbage) and reads whatever comes back until the end.
    static func send(port: Int, _ text: String, timeout: Duration = .seconds(10)) async -> Result {
        let bytes = Array(text.utf8)
        return (try? await offThePool { run(port: port, payload: bytes, timeout: timeout) as Result }) ?? Result(end: .refused)
    }
}
