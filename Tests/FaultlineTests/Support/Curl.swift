import Foundation

/// The real curl as the HTTP client of tests, run off the concurrency pool. Every run is
/// bounded by `--max-time`.
enum Curl {
    struct Result: Sendable {
        var status: Int32
        var body: [UInt8]
        /// curl's own messages (and with `-v` the exchange).
        var log: String
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    static func run(_ arguments: [String], maxTime: Int = 10) async throws -> Result {
        try await offThePool {
            let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("curl-\(UUID().uuidString).log").path
            defer { try? FileManager.default.removeItem(atPath: logPath) }
            FileManager.default.createFile(atPath: logPath, contents: nil)
            let log = FileHandle(forWritingAtPath: logPath)!
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["curl", "-sS", "--max-time", "\(maxTime)"] + arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = log
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let data = pipe.fileHandleForReading.readAllRetryingInterrupts()
            process.waitUntilExit()
            try? log.close()
            let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            return Result(status: process.terminationStatus, body: Array(data), log: text)
        }
    }
}
