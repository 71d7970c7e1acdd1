#if canImport(Glibc)
import Glibc

/// Unmaps the executable's code pages once the daemon is ready, so that its resident set holds
/// the code it runs from then on, not the code it ran once to start (argument parsing, rule
/// loading, the runtime's and Foundation's set-up: about half of the 11 MiB of code the start
/// leaves resident, because the kernel maps the whole 64 KiB around each page touched).
///
/// `MADV_DONTNEED` on a private, read-only file mapping only drops this process's page table
/// entries: the pages stay in the page cache, and a page used again is mapped again by a minor
/// fault (no disk read). Only the executable's own `r-xp` mappings are touched. Code is never
/// written (the binary has no text relocations), so nothing of ours is lost; the relocated
/// read-only data next to it (`r--p`, RELRO) is private anonymous memory and is left alone.
public enum StartupCodePages {
    public static func unmap() {
        for mapping in codeMappings() {
            _ = madvise(UnsafeMutableRawPointer(bitPattern: mapping.start), Int(mapping.end - mapping.start), MADV_DONTNEED)
        }
    }

    /// The executable's own code mappings (`r-xp`), from /proc/self/maps.
    public static func codeMappings() -> [Mapping] {
        guard let executable = executablePath(), let maps = fopen("/proc/self/maps", "r") else { return [] }
        defer { fclose(maps) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        var found: [Mapping] = []
        while getline(&line, &capacity, maps) > 0, let line {
            if let mapping = Mapping(String(cString: line)), mapping.permissions == "r-xp", mapping.path == executable {
                found.append(mapping)
            }
        }
        return found
    }

    private static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// One line of /proc/self/maps: `start-end perms offset dev inode path`.
    public struct Mapping: Sendable {
        public var start: UInt
        public var end: UInt
        public var permissions: Substring
        public var path: Substring

        init?(_ line: String) {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6 else { return nil }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16), end > start
            else { return nil }
            self.start = start
            self.end = end
            permissions = fields[1]
            path = fields[5].drop { $0 == " " }.prefix { $0 != "\n" }
        }
    }
}
#else
public enum StartupCodePages {
    public static func unmap() {}
}
#endif
