import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Limit: exactly N bytes pass in the direction, then the connection closes (a truncated stream).
@Suite struct LimitFaultTests {
    @Test func closeAfterNBytesGivesExactlyNBytes() async throws {
        let faults = [FaultRule.on("cut-short", .limit(bytes: 100_000), direction: .downstream)]
        try await withFaultProxy(upstream: { PushHandler(total: 1 << 20) }, faults: faults) { daemon, port, group in
            let result = try await TestClient.transfer(port: port, group: group)
            #expect(result.received == 100_000)
            #expect(result.mismatchAt == nil)
            #expect(result.sawEOF)
            #expect(!result.reset)
            #expect(await daemon.injections("cut-short") == 1)
        }
    }

    @Test func limitOfZeroClosesBeforeAnyByte() async throws {
        try await withFaultProxy(faults: [.on("none", .limit(bytes: 0), direction: .downstream)]) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: 10)
            #expect(result.received == 0)
            #expect(result.sawEOF)
        }
    }
}
