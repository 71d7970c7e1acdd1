import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Reports changes to the rule files of a folder with inotify. It runs its own small thread
/// (poll(2) with a short timeout, so that `stop()` is seen promptly) and calls `onChange` for
/// each batch of events that touch a rule file (`*.yaml`, `*.yml`) or a `..name` entry (how
/// Kubernetes swaps a mounted ConfigMap). Editors' scratch files do not count.
final class DirectoryWatcher: Sendable {
    private let fd: Int32
    private let stopped = Atomic<Bool>(false)

    init(directory: String, onChange: @escaping @Sendable () -> Void) throws(DirectoryWatcherError) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw DirectoryWatcherError(reason: String(cString: strerror(errno))) }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_MODIFY)
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw DirectoryWatcherError(reason: reason)
        }
        let thread = WatcherThread(fd: fd, stopped: self, onChange: onChange)
        thread.start()
    }

    var isStopped: Bool { stopped.load(ordering: .acquiring) }

    func stop() {
        stopped.store(true, ordering: .releasing)
    }

    static func isRuleFileEvent(_ name: String) -> Bool {
        if name.hasPrefix("..") { return true }
        return !name.hasPrefix(".") && (name.hasSuffix(".yaml") || name.hasSuffix(".yml"))
    }
}

struct DirectoryWatcherError: Error, CustomStringConvertible {
    var reason: String
    var description: String { "cannot watch the rule folder: \(reason)" }
}

/// The watcher's thread: a plain pthread, so that it never holds a Swift concurrency thread.
private final class WatcherThread: @unchecked Sendable {
    // @unchecked: `fd` and `onChange` are immutable; `watcher` is Sendable. Only the thread reads them.
    let fd: Int32
    let watcher: DirectoryWatcher
    let onChange: @Sendable () -> Void

    init(fd: Int32, stopped watcher: DirectoryWatcher, onChange: @escaping @Sendable () -> Void) {
        self.fd = fd
        self.watcher = watcher
        self.onChange = onChange
    }

    func start() {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { argument in
            let watcher = Unmanaged<WatcherThread>.fromOpaque(argument!).takeRetainedValue()
            watcher.loop()
            return nil
        }, box)
        pthread_detach(thread)
    }

    func loop() {
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while !watcher.isStopped {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, 250)
            guard ready > 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { continue }
            if Self.touchesRuleFiles(buffer, count: count) { onChange() }
        }
    }

    static func touchesRuleFiles(_ buffer: [UInt8], count: Int) -> Bool {
        var offset = 0
        let headerSize = MemoryLayout<inotify_event>.size
        var relevant = false
        while offset + headerSize <= count {
            let length = buffer.withUnsafeBytes { raw in
                Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
            }
            let nameBytes = buffer[(offset + headerSize)..<min(count, offset + headerSize + length)]
            let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
            if DirectoryWatcher.isRuleFileEvent(name) { relevant = true }
            offset += headerSize + length
        }
        return relevant
    }
}
