import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Cut: a working connection ends after a duration, with a reset or a FIN as the rule says.
@Suite struct CutFaultTests {
    @Test func cutWithReset() async throws {
        try await withFaultProxy(faults: [.on("cable", .cut(after: .milliseconds(300), mode: .reset))]) { _, port, group in
            let result = await RawClient.run(port: port, send: 1000)
            #expect(result.end == .reset)
            #expect(result.received == 1000)
            #expect(result.elapsed >= .milliseconds(300))
            #expect(result.elapsed < .seconds(3))
        }
    }

    @Test func cutWithFIN() async throws {
        try await withFaultProxy(faults: [.on("cable", .cut(after: .milliseconds(300), mode: .fin))]) { _, port, group in
            let result = await RawClient.run(port: port, send: 1000)
            #expect(result.end == .eof)
            #expect(result.received == 1000)
            #expect(result.elapsed >= .milliseconds(300))
        }
    }
}
