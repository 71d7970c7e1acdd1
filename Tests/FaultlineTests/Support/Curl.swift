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
        let result = try await ChildProcess.run(
            "curl", ["-sS", "--max-time", "\(maxTime)"] + arguments, deadline: .seconds(maxTime + 20))
        return Result(status: result.status, body: result.output, log: result.error)
    }
}
