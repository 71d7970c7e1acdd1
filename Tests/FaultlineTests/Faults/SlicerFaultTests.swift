import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Slicer: small delayed writes, the stream byte-exact.
@Suite struct SlicerFaultTests {
    @Test func slicedStreamStaysByteExact() async throws {
        let size = 64 * 1024
        let faults = [FaultRule.on("slices", .slicer(size: 512, variation: 256, delay: .milliseconds(1)), direction: .both)]
        try await withFaultProxy(faults: faults) { daemon, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: size, halfClose: true)
            #expect(result.received == size)
            #expect(result.mismatchAt == nil)
            #expect(result.sawEOF)
            // At least size / 768 slices in each direction (they overlap), 1 ms apart.
            #expect(result.closedAfter >= .milliseconds(size / 768))
            #expect(await daemon.injections("slices") == 1)
        }
    }
}
