import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Refuse: the accepted connection is reset at once and no upstream is dialed.
@Suite struct RefuseFaultTests {
    @Test func refusedClientSeesResetAndUpstreamSeesNothing() async throws {
        let before = CountingHandler.accepted.count
        try await withFaultProxy(upstream: { CountingHandler() }, faults: [.on("down", .refuse)]) { daemon, port, group in
            for _ in 0..<5 {
                let result = await RawClient.run(port: port, send: 10)
                #expect(result.end == .reset)
                #expect(result.received == 0)
            }
            #expect(await daemon.injections("down") == 5)
        }
        #expect(CountingHandler.accepted.count == before)
    }
}
