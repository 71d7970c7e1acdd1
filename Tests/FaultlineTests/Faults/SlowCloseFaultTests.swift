import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Slow close: the FIN waits; the bytes before it do not.
@Suite struct SlowCloseFaultTests {
    @Test func finIsHeldBack() async throws {
        let faults = [FaultRule.on("linger", .slowClose(delay: .milliseconds(400)), direction: .downstream)]
        try await withFaultProxy(upstream: { ReplyAfterEOFHandler(replyBytes: 1000) }, faults: faults) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: 10, halfClose: true, verifyFrom: nil)
            #expect(result.received == 1008)
            #expect(result.sawEOF)
            #expect(result.closedAfter >= .milliseconds(400))
            // The bytes came well before the FIN, not held with it. (Told apart by the gap
            // between the two rather than by a ceiling on the first byte: under a sanitizer on
            // a busy machine the first byte alone once took 415 ms.)
            let firstByte = try #require(result.firstByteAfter)
            #expect(result.closedAfter - firstByte >= .milliseconds(200), "first byte \(firstByte), FIN \(result.closedAfter)")
        }
    }
}
