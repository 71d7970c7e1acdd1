import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Bandwidth: bytes per second per connection and direction, byte-exact.
@Suite struct BandwidthFaultTests {
    @Test func oneMiBPerSecondMovesTwoMiBInAboutTwoSeconds() async throws {
        let total = 2 << 20
        let faults = [FaultRule.on("thin", .bandwidth(bytesPerSecond: 1 << 20), direction: .downstream)]
        try await withFaultProxy(upstream: { PushHandler(total: total) }, faults: faults) { daemon, port, group in
            let result = try await TestClient.transfer(port: port, group: group)
            #expect(result.received == total)
            #expect(result.mismatchAt == nil)
            // 2 MiB at 1 MiB/s: the first 1/20 s worth goes at once, the rest is paced.
            #expect(result.closedAfter >= .milliseconds(1800), "took \(result.closedAfter)")
            #expect(result.closedAfter < .seconds(4), "took \(result.closedAfter)")
            #expect(await daemon.injections("thin") == 1)
        }
    }

    @Test func otherDirectionIsNotLimited() async throws {
        // 4 MiB would take 32 s at the upstream direction's 128 KiB/s; downstream it is not
        // paced at all. The ceiling leaves room for a sanitizer build on a busy machine (8 MiB
        // took 4.1 s there once).
        let total = 4 << 20
        let faults = [FaultRule.on("thin", .bandwidth(bytesPerSecond: 128 << 10), direction: .upstream)]
        try await withFaultProxy(upstream: { PushHandler(total: total) }, faults: faults) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group)
            #expect(result.received == total)
            #expect(result.closedAfter < .seconds(12), "took \(result.closedAfter)")
        }
    }
}
