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
            #expect(result.firstByteAfter! < .milliseconds(300))
            #expect(result.closedAfter >= .milliseconds(400))
        }
    }
}
