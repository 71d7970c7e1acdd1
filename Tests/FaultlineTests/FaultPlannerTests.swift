import Faultline
import FaultlineRules
import Testing

/// The fault decisions without sockets: draws, targeting, folding, and the latency sampler.
struct FaultPlannerTests {
    let latency = FaultRule.on("lat", .latency(LatencyFault(delay: .milliseconds(100))), direction: .downstream)

    @Test func drawIsKeptWhenOtherRulesChange() {
        var random = FaultRandom(seed: 7)
        var draws: [String: Double] = [:]
        let half = FaultRule.on("half", .bandwidth(bytesPerSecond: 1000), probability: 0.5)
        let first = FaultPlanner.plan(faults: [half], clientAddress: [127, 0, 0, 1], draws: &draws, random: &random)
        let kept = draws["half"]!
        // Another rule arrives: the draw for "half" is not re-rolled, so the outcome stays.
        let second = FaultPlanner.plan(faults: [half, latency], clientAddress: [127, 0, 0, 1], draws: &draws, random: &random)
        #expect(draws["half"] == kept)
        #expect((first.upstream.bandwidth != nil) == (second.upstream.bandwidth != nil))
        #expect(second.downstream.chunkLatency.count == 1)
    }

    @Test func seededRandomIsRepeatable() {
        var a = FaultRandom(seed: 99)
        var b = FaultRandom(seed: 99)
        #expect((0..<100).map { _ in a.next() } == (0..<100).map { _ in b.next() })
    }

    @Test func probabilityOverManyConnectionsIsNearTheRate() {
        var random = FaultRandom(seed: 42)
        let rule = FaultRule.on("p30", .refuse, probability: 0.3)
        var fired = 0
        for _ in 0..<10_000 {
            var draws: [String: Double] = [:]
            if FaultPlanner.plan(faults: [rule], clientAddress: nil, draws: &draws, random: &random).refuse != nil {
                fired += 1
            }
        }
        // 99.9 % binomial interval for n = 10,000, p = 0.3: ±3.29 σ, about ±150.
        #expect((2850...3150).contains(fired))
    }

    @Test func rulesFoldPerDirection() {
        var random = FaultRandom(seed: 3)
        var draws: [String: Double] = [:]
        let rules = [
            FaultRule.on("bw1", .bandwidth(bytesPerSecond: 5000), direction: .upstream),
            FaultRule.on("bw2", .bandwidth(bytesPerSecond: 2000), direction: .both),
            FaultRule.on("lim", .limit(bytes: 10), direction: .downstream),
            FaultRule.on("rst", .reset(after: .zero, afterBytes: 5), direction: .downstream),
            FaultRule.on("cut", .cut(after: .seconds(1), mode: .fin)),
        ]
        let plan = FaultPlanner.plan(faults: rules, clientAddress: nil, draws: &draws, random: &random)
        #expect(plan.upstream.bandwidth == 2000)
        #expect(plan.downstream.bandwidth == 2000)
        #expect(plan.downstream.endAfterBytes?.bytes == 5)
        #expect(plan.downstream.endAfterBytes?.reset == true)
        #expect(plan.upstream.endAfterBytes == nil)
        #expect(plan.timedEnds.map(\.rule) == ["cut"] && plan.timedEnds[0].after == .seconds(1) && !plan.timedEnds[0].reset)
        #expect(plan.firing.count == 5)
    }

    @Test func clientBlocksAndDisabledRules() {
        var random = FaultRandom(seed: 3)
        var draws: [String: Double] = [:]
        var targeted = FaultRule.on("t", .refuse)
        targeted.clients = [CIDR("10.1.0.0/16")!]
        var off = FaultRule.on("off", .refuse)
        off.enabled = false
        #expect(FaultPlanner.plan(faults: [targeted, off], clientAddress: [10, 2, 0, 1], draws: &draws, random: &random).isEmpty)
        #expect(FaultPlanner.plan(faults: [targeted], clientAddress: [10, 1, 200, 1], draws: &draws, random: &random).refuse == "t")
        // An IPv4-mapped IPv6 client matches an IPv4 block.
        let mapped: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        #expect(targeted.targets(clientAddress: mapped))
        #expect(CIDR("2001:db8::/32")!.contains(CIDR.parseAddress("2001:db8:1::5")!))
        #expect(!CIDR("2001:db8::/32")!.contains(CIDR.parseAddress("2001:db9::5")!))
    }

    @Test func latencySamplesFollowTheirDistribution() {
        var random = FaultRandom(seed: 11)
        func samples(_ distribution: LatencyDistribution) -> [Double] {
            let fault = LatencyFault(delay: .milliseconds(100), jitter: .milliseconds(50), distribution: distribution)
            return (0..<20_000).map { _ in Double(LatencySampler.sample(fault, using: &random)) / 1e6 }
        }
        let uniform = samples(.uniform)
        #expect(uniform.min()! >= 50 && uniform.max()! <= 150)
        #expect(abs(uniform.reduce(0, +) / Double(uniform.count) - 100) < 2)

        let normal = samples(.normal)
        let mean = normal.reduce(0, +) / Double(normal.count)
        let deviation = (normal.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(normal.count)).squareRoot()
        #expect(abs(mean - 100) < 2)
        #expect(abs(deviation - 50) < 3)  // clamping at 0 trims a little of the lower tail
        #expect(normal.min()! >= 0)

        let pareto = samples(.pareto)
        #expect(pareto.min()! >= 100)
        let excess = pareto.reduce(0, +) / Double(pareto.count) - 100
        #expect(abs(excess - 50) < 5)
        #expect(pareto.max()! <= 100 + 100 * 50)

        let fixed = LatencyFault(delay: .milliseconds(100))
        #expect(LatencySampler.sample(fixed, using: &random) == 100_000_000)
    }
}
