import Foundation
import Testing
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// The built `faultlined` binary run as a child process, with its log lines readable as they
/// come, for end-to-end tests (exit codes, signals, messages a user sees).
final class DaemonProcess: Sendable {
    private let process: SpawnedProcess
    private let lines: AsyncStream<String>
    private let allOutput = TextBuffer()
    private let stdoutText = TextBuffer()

    static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["FAULTLINED_BIN"] {
            return URL(fileURLWithPath: path)
        }
        // swift test builds the executables next to the test bundle.
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = testBinary.deletingLastPathComponent()
        while directory.path != "/" {
            let candidate = directory.appendingPathComponent("faultlined")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: ".build/debug/faultlined")
    }

    /// `launcher` runs the binary through another program that execs it (`prlimit ... --`).
    init(_ arguments: [String], environment: [String: String] = [:], launcher: [String] = []) throws {
        // Daemons of tests running side by side must not share the default control socket.
        let arguments = arguments.contains("--control-socket") || arguments.first == "ca" ? arguments : arguments + ["--no-control"]
        let errorPipe = try outputPipe()
        let outputPipe = try FaultlineTests.outputPipe()
        let stdin = try openCloseOnExec("/dev/null", O_RDONLY)
        defer {
            close(stdin)
            close(errorPipe.write)
            close(outputPipe.write)
        }
        let (stream, continuation) = AsyncStream<String>.makeStream()
        lines = stream
        let pending = TextBuffer()
        let all = allOutput
        // Plain threads with read(2), retried on EINTR (a test process gets SIGCHLD whenever a
        // child exits); each ends at end of file and closes its descriptor.
        Thread {
            var chunk = [UInt8](repeating: 0, count: 16384)
            while true {
                let count = read(errorPipe.read, &chunk, chunk.count)
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                let text = String(decoding: chunk[0..<count], as: UTF8.self)
                all.text.withLockedValue { $0 += text }
                let complete: [String] = pending.text.withLockedValue { buffer in
                    buffer += text
                    var parts = buffer.components(separatedBy: "\n")
                    buffer = parts.removeLast()
                    return parts
                }
                for line in complete { continuation.yield(line) }
            }
            close(errorPipe.read)
            continuation.finish()
        }.start()
        let out = stdoutText
        Thread {
            var chunk = [UInt8](repeating: 0, count: 16384)
            while true {
                let count = read(outputPipe.read, &chunk, chunk.count)
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                out.text.withLockedValue { $0 += String(decoding: chunk[0..<count], as: UTF8.self) }
            }
            close(outputPipe.read)
        }.start()
        process = try SpawnedProcess(
            launcher.first ?? Self.binary.path, launcher.isEmpty ? arguments : Array(launcher.dropFirst()) + [Self.binary.path] + arguments,
            environment: environment.isEmpty ? nil : ProcessInfo.processInfo.environment.merging(environment) { $1 },
            stdin: stdin, stdout: outputPipe.write, stderr: errorPipe.write)
    }

    /// A test that stops early (a thrown error) must not leave its daemon running.
    deinit {
        process.signal(SIGKILL)
    }

    /// Everything written to standard error so far.
    var standardError: String { allOutput.text.withLockedValue { $0 } }
    var standardOutput: String { stdoutText.text.withLockedValue { $0 } }

    /// Waits (at most `timeout`) for a log line that contains `text`.
    func waitForLog(_ text: String, timeout: Duration = .seconds(20)) async -> Bool {
        let lines = self.lines
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await line in lines where line.contains(text) { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// CPU time (user + system) the process has used so far.
    var cpuSeconds: Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        // Fields after the command name: state is field 3; utime and stime are 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func signal(_ number: Int32) {
        process.signal(number)
    }

    /// Waits for the process to exit (at most `timeout`, then kills it) and returns its status.
    func waitForExit(timeout: Duration = .seconds(30)) async -> Int32 {
        await process.wait(deadline: timeout)
        return process.exitCode ?? -1
    }

    /// Waits for the exit and expects status 0; otherwise the failure shows the daemon's last
    /// output (a sanitizer's report, a crash), which would be gone with the process.
    func expectCleanExit(sourceLocation: SourceLocation = #_sourceLocation) async {
        let status = await waitForExit()
        #expect(status == 0, "the daemon's last output:\n\(standardError.suffix(6000))", sourceLocation: sourceLocation)
    }

    /// Runs the binary to completion (for `--check` and start errors).
    static func run(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let daemon = try DaemonProcess(arguments)
        let status = await daemon.waitForExit()
        // The pipes may still hold the last bytes: wait for end of file on stderr.
        _ = await daemon.waitForLog("\u{0}", timeout: .seconds(2))
        return (status, daemon.standardOutput, daemon.standardError)
    }
}

final class TextBuffer: Sendable {
    let text = NIOLockedValueBox<String>("")
}
