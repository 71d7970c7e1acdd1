import FaultlineRules

/// Turns a latency rule into one concrete delay. Pure: the same random source gives the same
/// delays, which is what the fidelity benchmark and the tests rely on.
public enum LatencySampler {
    /// Pareto shape: a tail heavy enough to look like real stragglers, with a finite mean.
    static let paretoShape = 2.5

    public static func sample(_ latency: LatencyFault, using random: inout FaultRandom) -> Int64 {
        let delay = Double(latency.delay.nanoseconds)
        let jitter = Double(latency.jitter.nanoseconds)
        guard jitter > 0 else { return Int64(delay) }
        let value: Double
        switch latency.distribution {
        case .uniform:
            value = delay + jitter * (2 * random.unit() - 1)
        case .normal:
            // Box-Muller; one of the pair is enough here.
            let u1 = max(random.unit(), .leastNonzeroMagnitude)
            let u2 = random.unit()
            let standard = (-2 * _log(u1)).squareRoot() * _cos(2 * .pi * u2)
            value = delay + jitter * standard
        case .pareto:
            // Excess over `delay` is Pareto-distributed with mean `jitter`; capped at 100
            // times that so that one draw cannot stall a connection for hours.
            let scale = jitter * (paretoShape - 1)
            let u = max(random.unit(), .leastNonzeroMagnitude)
            let excess = scale * (_pow(u, -1 / paretoShape) - 1)
            value = delay + min(excess, 100 * jitter)
        }
        return Int64(max(0, value))
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
@inline(__always) func _pow(_ x: Double, _ y: Double) -> Double { Glibc.pow(x, y) }
#elseif canImport(Darwin)
import Darwin
@inline(__always) func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Darwin.cos(x) }
@inline(__always) func _pow(_ x: Double, _ y: Double) -> Double { Darwin.pow(x, y) }
#endif
