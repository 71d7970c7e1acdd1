import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Reports changes to the rule files of a folder with inotify. It runs its own small thread
/// (poll(2) with a short timeout, so that `stop()` is seen promptly) and calls `onChange` for
/// each batch of events that touch a rule file (`*.yaml`, `*.yml`) or a `..name` entry (how
/// Kubernetes swaps a mounted ConfigMap). Editors' scratch files do not count.
///
/// A watch belongs to a folder, not to its path. After every batch of events and every poll
/// timeout the thread looks at what the path names now (`stat`, device and inode): when that is
/// no longer the folder watched (removed or moved away and made again, as `rm -rf rules && git
/// checkout rules` does; a symbolic link on the way switched to another release's folder, as
/// deploy tools do), it watches what is there now and reports a change, so that its rules are
/// read; when nothing is there, it reports that once (the reload fails and the last good
/// rules stay in force) and looks again at the next timeout.
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
        let thread = WatcherThread(
            fd: fd, directory: directory, watch: watch, watched: FolderIdentity(directory), stopped: self, onChange: onChange)
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

/// Which folder a path names: its device and inode.
struct FolderIdentity: Equatable {
    let device: UInt64
    let inode: UInt64

    /// Nil when the path names no folder.
    init?(_ path: String) {
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else { return nil }
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}

/// The watcher's thread: a plain pthread, so that it never holds a Swift concurrency thread.
private final class WatcherThread: @unchecked Sendable {
    // @unchecked: `fd`, `directory` and `onChange` are immutable; `watcher` is Sendable; `watch`
    // and `watched` are read and written by the thread alone once it has started.
    let fd: Int32
    let directory: String
    /// The watch of the folder the path named when last looked at; nil while it names none.
    var watch: Int32?
    var watched: FolderIdentity?
    let watcher: DirectoryWatcher
    let onChange: @Sendable () -> Void

    init(
        fd: Int32, directory: String, watch: Int32, watched: FolderIdentity?, stopped watcher: DirectoryWatcher,
        onChange: @escaping @Sendable () -> Void
    ) {
        self.fd = fd
        self.directory = directory
        self.watch = watch
        self.watched = watched
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
            if poll(&poller, 1, 250) > 0 {
                let count = read(fd, &buffer, buffer.count)
                if count > 0, Self.touchesRuleFiles(buffer, count: count) { onChange() }
            }
            followPath()
        }
    }

    /// Watches the folder the path names now, if it is another than the one watched.
    private func followPath() {
        let current = FolderIdentity(directory)
        guard current != watched else { return }
        if let watch { inotify_rm_watch(fd, watch) }  // fails harmlessly when the folder was removed
        watch = nil
        watched = nil
        if current != nil {
            let added = inotify_add_watch(fd, directory, DirectoryWatcher.mask)
            guard added >= 0 else { return }  // tried again at the next timeout
            watch = added
            watched = current
        }
        onChange()
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
