import ArgumentParser
import Faultline
import FaultlineRules
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// One request to the daemon's control socket, as `curl --unix-socket` would send it.
struct ControlClient {
    let socketPath: String
    /// How long the daemon may stay silent before the command gives up (exit 5).
    var timeout: Duration = .seconds(30)

    struct Reply {
        var status: Int
        var body: Data

        var object: [String: Any] {
            ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any]) ?? [:]
        }
    }

    func send(_ method: HTTPMethod, _ path: String, json: [String: Any]? = nil) async throws -> Reply {
        let body = try json.map { try JSONSerialization.data(withJSONObject: $0) } ?? Data()
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        let timeout = self.timeout
        let initializer: @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>> = {
            channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                // A daemon that accepts and never answers ends the wait: the reply
                // stream fails with `AnswerTimeout`, and the command says so.
                try channel.pipeline.syncOperations.addHandler(
                    IdleStateHandler(readTimeout: .nanoseconds(timeout.nanoseconds)))
                try channel.pipeline.syncOperations.addHandler(AnswerTimeoutHandler())
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                    wrappingChannelSynchronously: channel)
            }
        }
        do {
            let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.nanoseconds(timeout.nanoseconds))
            if let address = Self.tcpAddress(socketPath) {
                channel = try await bootstrap.connect(host: address.host, port: address.port, channelInitializer: initializer)
            } else {
                channel = try await bootstrap.connect(unixDomainSocketPath: socketPath, channelInitializer: initializer)
            }
        } catch {
            // The system's words for a socket error ("No such file or directory"), not the
            // description of the NIO call that met it.
            let cause = (error as? NIOConnectionError)?.connectionErrors.first?.error ?? error
            let reason: String
            if let ioError = cause as? IOError {
                reason = String(cString: strerror(ioError.errnoCode))
            } else if let channelError = cause as? ChannelError, case .connectTimeout = channelError {
                reason = "connect timed out"
            } else {
                reason = "\(cause)"
            }
            throw ControlFailure.unreachable(socketPath, reason)
        }
        do {
            return try await exchange(on: channel, method, path, body: json == nil ? nil : body)
        } catch is AnswerTimeout {
            throw ControlFailure.noAnswer(socketPath, DurationText.format(timeout))
        } catch HTTPParserError.invalidEOFState {
            // The connection closed in the middle of the answer's head or body.
            throw ControlFailure.brokenAnswer(socketPath, "closed the connection before its answer was complete")
        } catch let error as HTTPParserError {
            throw ControlFailure.brokenAnswer(socketPath, "sent an answer that is not HTTP/1.1 (\(error))")
        } catch let error as IOError {
            throw ControlFailure.brokenAnswer(socketPath, "broke the connection (\(String(cString: strerror(error.errnoCode))))")
        } catch ChannelError.ioOnClosedChannel, ChannelError.outputClosed, ChannelError.alreadyClosed {
            throw ControlFailure.brokenAnswer(socketPath, "closed the connection before reading the request")
        }
    }

    private func exchange(
        on channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>,
        _ method: HTTPMethod, _ path: String, body: Data?
    ) async throws -> Reply {
        try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders([("Host", "faultline"), ("Connection", "close")])
            if let body {
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: "\(body.count)")
            }
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)))
            if let body, !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))
            var reply = Reply(status: 0, body: Data())
            for try await part in inbound {
                switch part {
                case .head(let head): reply.status = Int(head.status.code)
                case .body(let buffer): reply.body.append(contentsOf: buffer.readableBytesView)
                case .end: return reply
                }
            }
            throw ControlFailure.brokenAnswer(socketPath, "closed the connection before its answer was complete")
        }
    }
}

extension ControlClient {
    /// `tcp://HOST:PORT`: the daemon's `--control-address`, for a client that cannot reach its
    /// UNIX socket (another container of the pod); anything else is a socket path.
    static func tcpAddress(_ target: String) -> HostPort? {
        guard target.hasPrefix("tcp://") else { return nil }
        return try? HostPort.parse(String(target.dropFirst("tcp://".count))).get()
    }
}

/// The reply stream's error when the daemon stayed silent for `--timeout`: told apart from a
/// connection the daemon closed, which ends the stream early with no error.
struct AnswerTimeout: Error {}

/// Turns the idle event of the read timeout into `AnswerTimeout` on the reply stream, then closes.
final class AnswerTimeoutHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        context.fireErrorCaught(AnswerTimeout())
        context.close(promise: nil)
    }
}

/// Why a faultctl command failed, with its documented exit code.
enum ControlFailure: Error, CustomStringConvertible {
    case unreachable(String, String)
    /// Connected, but silent for `--timeout`.
    case noAnswer(String, String)
    /// Connected, but the answer broke off or was not HTTP (a daemon that crashed mid-answer,
    /// or something else listening on the socket).
    case brokenAnswer(String, String)
    case answered(status: Int, code: String, message: String)

    var description: String {
        switch self {
        case .unreachable(let path, let error):
            "cannot reach faultlined at \(path) (\(error)); is it running? (--socket, FAULTLINE_SOCKET)"
        case .noAnswer(let path, let timeout):
            "faultlined at \(path) did not answer within \(timeout) (--timeout)"
        case .brokenAnswer(let path, let what):
            "faultlined at \(path) \(what)"
        case .answered(_, _, let message):
            message
        }
    }

    /// 0 ok, 1 other errors, 2 usage (argument parser), 3 not found, 4 invalid, 5 unreachable.
    var exitCode: Int32 {
        switch self {
        case .unreachable, .noAnswer, .brokenAnswer: 5
        case .answered(let status, _, _) where status == 404: 3
        case .answered(let status, _, _) where status == 400 || status == 409 || status == 413 || status == 422: 4
        case .answered: 1
        }
    }
}

/// What every faultctl command that talks to the daemon takes.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "The control socket (default: $FAULTLINE_SOCKET or the daemon's default), or tcp://HOST:PORT for the daemon's --control-address.")
    var socket: String?

    @Flag(name: .long, help: "Print the daemon's JSON reply (exactly one object) instead of a table.")
    var json = false

    @Option(name: .long, help: "Give up (exit 5) when the daemon has not answered after this long.")
    var timeout: String = "30s"

    func validate() throws {
        let target = ControlSocketPath.resolve(socket)
        if target.hasPrefix("tcp://"), ControlClient.tcpAddress(target) == nil {
            throw ValidationError("--socket: expected a path or tcp://HOST:PORT, found '\(target)'")
        }
        guard let duration = DurationText.parse(timeout), duration > .zero else {
            throw ValidationError("--timeout: expected a duration such as 30s, found '\(timeout)'")
        }
    }

    var client: ControlClient {
        ControlClient(socketPath: ControlSocketPath.resolve(socket), timeout: DurationText.parse(timeout) ?? .seconds(30))
    }

    /// Sends the request; on success prints the JSON (with --json) or hands the reply over for a
    /// table; on failure prints the error (the daemon's JSON with --json) and exits with its code.
    func call(
        _ method: HTTPMethod, _ path: String, body: [String: Any]? = nil, show: ([String: Any]) -> String
    ) async throws {
        let reply: ControlClient.Reply
        do {
            reply = try await client.send(method, path, json: body)
        } catch let failure as ControlFailure {
            if json {
                let code = switch failure {
                case .noAnswer: "no_answer"
                case .brokenAnswer: "broken_answer"
                default: "unreachable"
                }
                let object: [String: Any] = ["error": ["code": code, "message": failure.description, "field": NSNull()]]
                print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
            } else {
                printToStandardError("faultctl: \(failure)")
            }
            throw ExitCode(failure.exitCode)
        }
        let object = reply.object
        if json {
            print(String(decoding: reply.body, as: UTF8.self).trimmingCharacters(in: .newlines))
        }
        guard (200..<300).contains(reply.status) else {
            let error = object["error"] as? [String: Any]
            let failure = ControlFailure.answered(
                status: reply.status, code: error?["code"] as? String ?? "error",
                message: error?["message"] as? String ?? "HTTP \(reply.status)")
            if !json { printToStandardError("faultctl: \(failure)") }
            throw ExitCode(failure.exitCode)
        }
        if !json {
            let text = show(object)
            if !text.isEmpty { print(text) }
        }
    }
}

/// Columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}
