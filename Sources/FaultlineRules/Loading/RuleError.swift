/// Where something was written in a rule file. Lines and columns count from 1, as editors do.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One thing wrong with the rules, pinned to the place in the file that is wrong.
/// Printed as `rules/api.yaml:7:15: upstream: "db" is not host:port`, the form compilers use,
/// so that editors and CI logs link straight to it.
public struct RuleError: Error, Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public init(_ message: String, at location: SourceLocation) {
        self.location = location
        self.message = message
    }

    public var description: String { "\(location): \(message)" }
}

/// Every error found in a rule folder: loading reports all of them at once, not just the first,
/// in the order of the files (by file, line and column, as a compiler lists them), whichever
/// check found each.
public struct RuleErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [RuleError]

    public init(_ errors: [RuleError]) {
        // The index keeps errors at one place in the order they were found.
        self.errors = errors.enumerated().sorted { a, b in
            let (x, y) = (a.element.location, b.element.location)
            return (x.file, x.line, x.column, a.offset) < (y.file, y.line, y.column, b.offset)
        }.map(\.element)
    }

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
