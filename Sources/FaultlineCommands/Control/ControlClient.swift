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
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        // A daemon that accepts and never answers ends the wait: the channel
                        // closes, the reply is incomplete, and the command says so.
                        try channel.pipeline.syncOperations.addHandler(
                            IdleStateHandler(readTimeout: .nanoseconds(timeout.nanoseconds)))
                        try channel.pipeline.syncOperations.addHandler(IdleConnectionCloser())
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            // The system's words for a socket error ("No such file or directory"), not the
            // description of the NIO call that met it.
            let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
            throw ControlFailure.unreachable(socketPath, reason)
        }
        return try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders([("Host", "faultline"), ("Connection", "close")])
            if json != nil {
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: "\(body.count)")
            }
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)))
            if !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))
            var reply = Reply(status: 0, body: Data())
            for try await part in inbound {
                switch part {
                case .head(let head): reply.status = Int(head.status.code)
                case .body(let buffer): reply.body.append(contentsOf: buffer.readableBytesView)
                case .end: return reply
                }
            }
            throw ControlFailure.noAnswer(socketPath, DurationText.format(timeout))
        }
    }
}

/// Why a faultctl command failed, with its documented exit code.
enum ControlFailure: Error, CustomStringConvertible {
    case unreachable(String, String)
    /// Connected, but no complete answer within `--timeout`.
    case noAnswer(String, String)
    case answered(status: Int, code: String, message: String)

    var description: String {
        switch self {
        case .unreachable(let path, let error):
            "cannot reach faultlined at \(path) (\(error)); is it running? (--socket, FAULTLINE_SOCKET)"
        case .noAnswer(let path, let timeout):
            "faultlined at \(path) did not answer within \(timeout) (--timeout)"
        case .answered(_, _, let message):
            message
        }
    }

    /// 0 ok, 1 other errors, 2 usage (argument parser), 3 not found, 4 invalid, 5 unreachable.
    var exitCode: Int32 {
        switch self {
        case .unreachable, .noAnswer: 5
        case .answered(let status, _, _) where status == 404: 3
        case .answered(let status, _, _) where status == 400 || status == 409 || status == 413 || status == 422: 4
        case .answered: 1
        }
    }
}

/// What every faultctl command that talks to the daemon takes.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "The control socket (default: $FAULTLINE_SOCKET or the daemon's default).")
    var socket: String?

    @Flag(name: .long, help: "Print the daemon's JSON reply (exactly one object) instead of a table.")
    var json = false

    @Option(name: .long, help: "Give up (exit 5) when the daemon has not answered after this long.")
    var timeout: String = "30s"

    func validate() throws {
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
                let code = if case .noAnswer = failure { "no_answer" } else { "unreachable" }
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
