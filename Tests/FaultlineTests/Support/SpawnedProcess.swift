import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn(3).
///
/// Not Foundation's `Process`: on Linux its `run()` copies the names of the parent's open
/// descriptors into a fixed buffer and crashes once the parent has more than about a thousand
/// open (as a test with a thousand concurrent connections has), and the backtrace of that
/// crash froze whole test runs. Here the child closes every descriptor above the three it is
/// given (posix_spawn's closefrom action), so it holds none of the test's sockets: a listener
/// a test has closed must refuse connections, not live on in a child.
final class SpawnedProcess: Sendable {
    let pid: pid_t
    /// The wait status once reaped; reaping happens once, in whichever query sees the exit.
    private let waitStatus = NIOLockedValueBox<Int32?>(nil)

    /// Starts `executable` (a path, or a name looked up on PATH) with the given standard
    /// descriptors, which the caller keeps and closes.
    init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdin: Int32, stdout: Int32, stderr: Int32) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        guard let addCloseFrom = addCloseFrom else { throw POSIXError(.ENOSYS) }
        _ = addCloseFrom(&actions, 3)

        let environment = environment ?? ProcessInfo.processInfo.environment
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }

        var pid: pid_t = 0
        let result = posix_spawnp(&pid, executable, &actions, nil, argv, envp)
        guard result == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EINVAL)
        }
        self.pid = pid
    }

    /// Reaps the child if it has exited (never blocks).
    var isRunning: Bool {
        waitStatus.withLockedValue { status in
            if status != nil { return false }
            var raw: Int32 = 0
            let reaped = waitpid(pid, &raw, WNOHANG)
            if reaped == pid {
                status = raw
                return false
            }
            // -1 (ECHILD) would mean someone else reaped it: treat as gone.
            return reaped == 0
        }
    }

    /// The exit code, or 128 + the signal that ended it; nil while it runs.
    var exitCode: Int32? {
        guard !isRunning else { return nil }
        guard let raw = waitStatus.withLockedValue({ $0 }) else { return -1 }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    func signal(_ number: Int32) {
        if isRunning { kill(pid, number) }
    }

    /// Blocks until the child exits, killing it at the deadline. Returns whether it had to.
    @discardableResult
    func waitBlocking(deadline: Duration) -> Bool {
        let start = ContinuousClock.now
        while isRunning {
            if ContinuousClock.now - start > deadline {
                kill(pid, SIGKILL)
                while isRunning { usleep(1_000) }
                return true
            }
            usleep(2_000)
        }
        return false
    }

    /// As `waitBlocking`, without holding a thread.
    @discardableResult
    func wait(deadline: Duration) async -> Bool {
        let start = ContinuousClock.now
        while isRunning {
            if ContinuousClock.now - start > deadline {
                kill(pid, SIGKILL)
                while isRunning { try? await Task.sleep(for: .milliseconds(1)) }
                return true
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }
}

/// glibc 2.34's posix_spawn_file_actions_addclosefrom_np, which its Swift module does not
/// export.
private let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// A pipe for a child's output (children close every descriptor they are not handed).
func outputPipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    return (fds[0], fds[1])
}

/// Opens a file close-on-exec (Foundation's FileHandle does not say whether it does).
func openCloseOnExec(_ path: String, _ flags: Int32) throws -> Int32 {
    let fd = open(path, flags | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return fd
}
