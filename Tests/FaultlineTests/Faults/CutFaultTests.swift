import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Cut: a working connection ends after a duration, with a reset or a FIN as the rule says.
/// The cut comes 2 s after the accept: the echo of the client's bytes must be back before it,
/// also on a machine running the whole suite under AddressSanitizer on two cores, where a
/// connection and its echo took more than 300 ms once.
@Suite struct CutFaultTests {
    @Test func cutWithReset() async throws {
        try await withFaultProxy(faults: [.on("cable", .cut(after: .seconds(2), mode: .reset))]) { _, port, group in
            let result = await RawClient.run(port: port, send: 1000)
            #expect(result.end == .reset)
            #expect(result.received == 1000)
            #expect(result.elapsed >= .seconds(2))
            #expect(result.elapsed < .seconds(10))
        }
    }

    @Test func cutWithFIN() async throws {
        try await withFaultProxy(faults: [.on("cable", .cut(after: .seconds(2), mode: .fin))]) { _, port, group in
            let result = await RawClient.run(port: port, send: 1000)
            #expect(result.end == .eof)
            #expect(result.received == 1000)
            #expect(result.elapsed >= .seconds(2))
        }
    }
}
