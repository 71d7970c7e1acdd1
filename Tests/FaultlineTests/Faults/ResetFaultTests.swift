import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Reset: RST at once, after a delay, or after N bytes.
@Suite struct ResetFaultTests {
    @Test func resetRightAwayGivesTheClientECONNRESET() async throws {
        try await withFaultProxy(faults: [.on("rst", .reset(after: .zero, afterBytes: nil))]) { daemon, port, group in
            let result = await RawClient.run(port: port, send: 100)
            #expect(result.end == .reset)
            #expect(result.received == 0)
            #expect(await daemon.injections("rst") == 1)
        }
    }

    @Test func resetAfterADelay() async throws {
        try await withFaultProxy(faults: [.on("rst", .reset(after: .milliseconds(300), afterBytes: nil))]) { _, port, group in
            let result = await RawClient.run(port: port, send: 100)
            #expect(result.end == .reset)
            #expect(result.received == 100)  // the echo came back before the reset
            #expect(result.elapsed >= .milliseconds(300))
            #expect(result.elapsed < .seconds(3))
        }
    }

    @Test func resetAfterBytes() async throws {
        let faults = [FaultRule.on("rst", .reset(after: .zero, afterBytes: 5000), direction: .downstream)]
        try await withFaultProxy(upstream: { PushHandler(total: 1 << 20) }, faults: faults) { _, port, group in
            let result = await RawClient.run(port: port)
            #expect(result.end == .reset)
            #expect(result.received <= 5000)
        }
    }
}
