import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A short-lived child (curl, openssl, faultctl, chaos) run to completion.
///
/// Its output goes to files, so that nothing has to drain a pipe while it runs, and it is
/// killed at its deadline, so that no test waits on a child longer than that.
enum ChildProcess {
    struct Result: Sendable {
        var status: Int32
        var output: [UInt8]
        var error: String
        var timedOut: Bool
        var text: String { String(decoding: output, as: UTF8.self) }
    }

    static func run(
        _ executable: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil,
        mergeError: Bool = false, deadline: Duration = .seconds(30)
    ) async throws -> Result {
        try await offThePool { try runBlocking(executable, arguments, input: input, environment: environment, mergeError: mergeError, deadline: deadline) }
    }

    static func runBlocking(
        _ executable: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil,
        mergeError: Bool = false, deadline: Duration = .seconds(30)
    ) throws -> Result {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("fl-child-\(UUID().uuidString)").path
        let paths = (out: base + ".out", err: base + ".err", input: base + ".in")
        defer { for path in [paths.out, paths.err, paths.input] { try? FileManager.default.removeItem(atPath: path) } }
        _ = FileManager.default.createFile(atPath: paths.input, contents: Data((input ?? "").utf8))
        let stdin = try openCloseOnExec(paths.input, O_RDONLY)
        defer { close(stdin) }
        let out = try openCloseOnExec(paths.out, O_WRONLY | O_CREAT | O_TRUNC)
        defer { close(out) }
        let err = try openCloseOnExec(paths.err, O_WRONLY | O_CREAT | O_TRUNC)
        defer { close(err) }

        let child = try SpawnedProcess(executable, arguments, environment: environment, stdin: stdin, stdout: out, stderr: mergeError ? out : err)
        let timedOut = child.waitBlocking(deadline: deadline)
        let output = (try? Data(contentsOf: URL(fileURLWithPath: paths.out))) ?? Data()
        let error = (try? String(contentsOfFile: paths.err, encoding: .utf8)) ?? ""
        return Result(status: child.exitCode ?? -1, output: Array(output), error: error, timedOut: timedOut)
    }
}
