#if canImport(Glibc)
import Glibc
#endif

/// Makes a control socket path ready to bind: its folder exists (created 0755 if missing), a
/// stale socket left by a crashed daemon is removed, and a live one (another daemon) or a file
/// that is not a socket stops the start instead of being clobbered. A folder that others may
/// write to (world-writable without the sticky bit, or owned by another user) stops the start
/// too: whoever can write there can replace the socket and take the daemon's callers.
enum ControlSocketFile {
    static func prepare(_ path: String) throws {
        guard path.utf8.count < 108 else {
            throw DaemonStartError(description: "control socket path is longer than 107 bytes: \(path)")
        }
        let folder = path.hasPrefix("/") ? String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) : "."
        if !folder.isEmpty, access(folder, F_OK) != 0 {
            guard mkdir(folder, 0o755) == 0 || errno == EEXIST else {
                throw DaemonStartError(description: "cannot create \(folder) for the control socket: \(String(cString: strerror(errno)))")
            }
        }
        try checkFolder(folder.isEmpty ? "/" : folder)
        var info = stat()
        guard lstat(path, &info) == 0 else { return }  // nothing there
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw DaemonStartError(description: "control socket path \(path) exists and is not a socket")
        }
        if isListening(path) {
            throw DaemonStartError(description: "control socket \(path) is in use (is another faultlined running?)")
        }
        unlink(path)
    }

    static func checkFolder(_ folder: String) throws {
        var info = stat()
        guard stat(folder, &info) == 0 else {
            throw DaemonStartError(description: "cannot inspect \(folder), the control socket's folder: \(String(cString: strerror(errno)))")
        }
        let mode = info.st_mode
        if (mode & S_IWOTH) != 0 && (mode & S_ISVTX) == 0 {
            throw DaemonStartError(description: "control socket folder \(folder) is world-writable: anyone could replace the socket; use a private folder (--control-socket)")
        }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            throw DaemonStartError(description: "control socket folder \(folder) belongs to another user (uid \(info.st_uid)); use a folder of your own (--control-socket)")
        }
    }

    static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }
}
