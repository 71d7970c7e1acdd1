import Faultline
import FaultlineRules
import NIOCore
import Testing

/// Probability and client addresses decide which connections a fault acts on.
@Suite struct TargetingTests {
    @Test func probabilityZeroNeverFiresAndOneAlwaysDoes() async throws {
        let never = FaultRule.on("never", .refuse, probability: 0)
        try await withFaultProxy(faults: [never]) { daemon, port, group in
            for _ in 0..<20 {
                let result = try await TestClient.transfer(port: port, group: group, send: 10, halfClose: true)
                #expect(result.received == 10 && !result.reset)
            }
            #expect(await daemon.injections("never") == 0)
        }
        try await withFaultProxy(faults: [.on("always", .refuse, probability: 1)]) { daemon, port, _ in
            for _ in 0..<20 {
                #expect(await RawClient.run(port: port, send: 10).end == .reset)
            }
            #expect(await daemon.injections("always") == 20)
        }
    }

    @Test func clientBlocksChooseWhoIsHit() async throws {
        var elsewhere = FaultRule.on("elsewhere", .refuse)
        elsewhere.clients = [CIDR("10.0.0.0/8")!, CIDR("::1/128")!]
        try await withFaultProxy(faults: [elsewhere]) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: 10, halfClose: true)
            #expect(result.received == 10 && !result.reset)
        }
        var here = FaultRule.on("here", .refuse)
        here.clients = [CIDR("127.0.0.0/8")!]
        try await withFaultProxy(faults: [here]) { _, port, _ in
            #expect(await RawClient.run(port: port, send: 10).end == .reset)
        }
    }

    @Test func disabledRuleDoesNothing() async throws {
        var off = FaultRule.on("off", .refuse)
        off.enabled = false
        try await withFaultProxy(faults: [off]) { _, port, group in
            let result = try await TestClient.transfer(port: port, group: group, send: 10, halfClose: true)
            #expect(result.received == 10)
        }
    }
}
