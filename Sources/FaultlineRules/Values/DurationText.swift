/// Durations as rule files write them: `250ms`, `1.5s`, `2m`, `1h30m`, `500us`.
/// A bare number is refused: `timeout: 5` could mean seconds or milliseconds, and a fault
/// injector that guesses wrong by a factor of 1000 ruins the experiment.
public enum DurationText {
    /// The longest duration written anywhere (about 11 years): far beyond any experiment, and
    /// far from where nanoseconds overflow when a deadline is added to it.
    public static let maximum: Duration = .seconds(100_000 * 3600)

    /// Why a text is not a duration, for the message that says so.
    public enum Problem: Error {
        case notADuration
        case tooLong
    }

    public static func parse(_ text: String) -> Duration? {
        try? read(text).get()
    }

    /// The duration, or what is wrong with the text: "99999999h" is too long, not unitless.
    public static func read(_ text: String) -> Result<Duration, Problem> {
        guard let nanoseconds = nanoseconds(text) else { return .failure(.notADuration) }
        guard nanoseconds <= Double(maximum.nanoseconds) else { return .failure(.tooLong) }
        return .success(.nanoseconds(Int64(nanoseconds.rounded())))
    }

    private static func nanoseconds(_ text: String) -> Double? {
        var rest = Substring(text.trimmingASCIIWhitespace())
        guard !rest.isEmpty else { return nil }
        var total: Double = 0  // nanoseconds
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCIIDigit || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { $0.isLetter || $0 == "µ" }
            rest = rest.dropFirst(unit.count)
            let scale: Double
            switch unit {
            case "ns": scale = 1
            case "us", "µs": scale = 1e3
            case "ms": scale = 1e6
            case "s": scale = 1e9
            case "m": scale = 60e9
            case "h": scale = 3600e9
            default: return nil
            }
            total += value * scale
        }
        guard total.isFinite else { return nil }
        return total
    }

    /// The shortest exact rendering: `250ms`, `2s`, `1.5s`, `5m`.
    public static func format(_ duration: Duration) -> String {
        let ns = duration.nanoseconds
        if ns == 0 { return "0s" }
        for (unit, size) in [("h", Int64(3600e9)), ("m", Int64(60e9)), ("s", Int64(1e9)), ("ms", Int64(1e6)), ("us", Int64(1e3))]
        where ns % size == 0 {
            return "\(ns / size)\(unit)"
        }
        if ns >= 1_000_000_000 { return "\(Double(ns) / 1e9)s" }
        if ns >= 1_000_000 { return "\(Double(ns) / 1e6)ms" }
        return "\(ns)ns"
    }
}

/// Byte sizes: `512`, `512B`, `64KiB`, `1.5MiB`, `10KB` (powers of 1000 for KB/MB/GB, of 1024 for KiB/MiB/GiB).
public enum ByteSizeText {
    public static func parse(_ text: String) -> Int? {
        let trimmed = Substring(text.trimmingASCIIWhitespace())
        let number = trimmed.prefix { $0.isASCIIDigit || $0 == "." }
        guard !number.isEmpty, let value = Double(number) else { return nil }
        let unit = trimmed.dropFirst(number.count).trimmingPrefixSpaces()
        let scale: Double
        switch unit {
        case "", "B": scale = 1
        case "KB", "kB": scale = 1e3
        case "MB": scale = 1e6
        case "GB": scale = 1e9
        case "KiB": scale = 1024
        case "MiB": scale = 1024 * 1024
        case "GiB": scale = 1024 * 1024 * 1024
        default: return nil
        }
        let bytes = value * scale
        guard bytes.isFinite, bytes < 1e15, bytes == bytes.rounded() else { return nil }
        return Int(bytes)
    }
}

extension Duration {
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    public var seconds: Double { Double(nanoseconds) / 1e9 }
}

extension StringProtocol {
    func trimmingASCIIWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

extension Substring {
    func trimmingPrefixSpaces() -> Substring { drop { $0 == " " } }
}
