import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Reports changes to the rule files of a folder with inotify. It runs its own small thread
/// (poll(2) with a short timeout, so that `stop()` is seen promptly) and calls `onChange` for
/// each batch of events that touch a rule file (`*.yaml`, `*.yml`) or a `..name` entry (how
/// Kubernetes swaps a mounted ConfigMap). Editors' scratch files do not count.
///
/// A watch belongs to the folder, not to its path: when the folder is removed or moved away
/// (`rm -rf rules && git checkout rules`, a deploy that puts a new folder in place), the watch
/// ends, and the thread looks for a folder at the path again at every poll timeout; when there
/// is one, it watches that and reports a change, so that its rules are read.
final class DirectoryWatcher: Sendable {
    private let fd: Int32
    private let stopped = Atomic<Bool>(false)
    static let mask = UInt32(
        IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF)

    init(directory: String, onChange: @escaping @Sendable () -> Void) throws(DirectoryWatcherError) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw DirectoryWatcherError(reason: String(cString: strerror(errno))) }
        let watch = inotify_add_watch(fd, directory, Self.mask)
        guard watch >= 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw DirectoryWatcherError(reason: reason)
        }
        let thread = WatcherThread(fd: fd, directory: directory, watch: watch, stopped: self, onChange: onChange)
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
    // @unchecked: `fd`, `directory` and `onChange` are immutable; `watcher` is Sendable; `watch`
    // is read and written by the thread alone once it has started.
    let fd: Int32
    let directory: String
    /// The folder's watch; nil once the folder at the path has gone (removed or moved away).
    var watch: Int32?
    let watcher: DirectoryWatcher
    let onChange: @Sendable () -> Void

    init(fd: Int32, directory: String, watch: Int32, stopped watcher: DirectoryWatcher, onChange: @escaping @Sendable () -> Void) {
        self.fd = fd
        self.directory = directory
        self.watch = watch
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
            guard ready > 0 else {
                watchAgainIfGone()
                continue
            }
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { continue }
            let batch = Self.events(buffer, count: count, watch: watch)
            if batch.folderGone, let watch {
                // Moved away, the watch would follow the folder to its new place: end it.
                inotify_rm_watch(fd, watch)
                self.watch = nil
            }
            if batch.touchesRuleFiles { onChange() }
            if batch.folderGone { watchAgainIfGone() }
        }
    }

    /// A folder at the path again (the same one moved back, or a new one): watched from now on,
    /// and read, since its rule files may be others than the last ones read.
    private func watchAgainIfGone() {
        guard watch == nil else { return }
        let added = inotify_add_watch(fd, directory, DirectoryWatcher.mask)
        guard added >= 0 else { return }
        watch = added
        onChange()
    }

    struct Batch {
        var touchesRuleFiles = false
        /// The watched folder was removed or moved away (its watch ends).
        var folderGone = false
    }

    static func events(_ buffer: [UInt8], count: Int, watch: Int32?) -> Batch {
        var offset = 0
        let headerSize = MemoryLayout<inotify_event>.size
        var batch = Batch()
        while offset + headerSize <= count {
            let (descriptor, mask, length) = buffer.withUnsafeBytes { raw in
                (raw.loadUnaligned(fromByteOffset: offset, as: Int32.self),
                 raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self),
                 Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)))
            }
            if descriptor == watch, mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED) != 0 {
                batch.folderGone = true
            }
            let nameBytes = buffer[(offset + headerSize)..<min(count, offset + headerSize + length)]
            let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
            if DirectoryWatcher.isRuleFileEvent(name) { batch.touchesRuleFiles = true }
            offset += headerSize + length
        }
        return batch
    }
}
