import ArgumentParser
import FaultlineRules
import Logging

extension ListenerProtocol: ExpressibleByArgument {}

extension HostPort: ExpressibleByArgument {
    public init?(argument: String) {
        guard case .success(let value) = HostPort.parse(argument, allowPortZero: true) else { return nil }
        self = value
    }
}

/// A duration flag written as rule files write them: `10s`, `250ms`.
struct DurationArgument: ExpressibleByArgument, Sendable {
    var value: Duration

    init(_ value: Duration) {
        self.value = value
    }

    init?(argument: String) {
        guard let value = DurationText.parse(argument) else { return nil }
        self.value = value
    }

    var defaultValueDescription: String { DurationText.format(value) }
}

extension Logger.Level: @retroactive ExpressibleByArgument {
    public init?(argument: String) {
        self.init(rawValue: argument.lowercased())
    }
}
