import Faultline
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What faultlined does once it is ready: its code pages leave the resident set, and the code
/// still runs (pages come back from the page cache as they are used). Done here on the test
/// process itself, whose code is its executable's as the daemon's is.
struct StartupCodePagesTests {
    @Test func codePagesLeaveTheResidentSetAndTheCodeStillRuns() throws {
        let mappings = StartupCodePages.codeMappings()
        try #require(!mappings.isEmpty, "no r-xp mapping of /proc/self/exe found")
        let before = try Self.residentKiB(of: mappings)
        // Everything the suite ran so far (Testing, NIO, the daemon's code) is resident.
        try #require(before >= 1024, "only \(before) KiB of code resident before")

        // Reading smaps and the tests running beside this one bring some pages back at once
        // (up to half of them, seen once on a loaded 2-core machine): the lowest of up to three
        // tries is what the unmapping left. Without it, every try stays near `before`.
        var after = Int.max
        for _ in 0..<3 where after >= before / 2 {
            StartupCodePages.unmap()
            after = min(after, try Self.residentKiB(of: mappings))
        }
        #expect(after < before / 2, "resident code: \(before) KiB before, \(after) KiB after")
        // Code on any page still runs: the rest of the suite runs on after this, and so does this.
        #expect(String(describing: (1...3).map { $0 * 2 }) == "[2, 4, 6]")
    }

    /// The `Rss:` of the given mappings in /proc/self/smaps, in KiB. Read line by line with
    /// getline: the file is generated as it is read, and its size says nothing.
    static func residentKiB(of mappings: [StartupCodePages.Mapping]) throws -> Int {
        let starts = Set(mappings.map { String($0.start, radix: 16) })
        guard let smaps = fopen("/proc/self/smaps", "r") else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { fclose(smaps) }
        var buffer: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(buffer) }
        var total = 0
        var inside = false
        while getline(&buffer, &capacity, smaps) > 0, let buffer {
            let line = String(cString: buffer)
            if line.hasPrefix("Rss:") {
                if inside { total += Int(line.split(separator: " ")[1]) ?? 0 }
            } else if let dash = line.firstIndex(of: "-"), dash > line.startIndex, line[..<dash].allSatisfy(\.isHexDigit) {
                // A mapping's first line: `start-end perms offset dev inode path`.
                inside = starts.contains(String(line[..<dash]))
            }
        }
        return total
    }
}
