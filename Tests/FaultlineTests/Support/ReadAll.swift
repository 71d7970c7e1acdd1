import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension FileHandle {
    /// Everything until end of file, with read(2) retried on EINTR: Foundation's own readers
    /// crash on an interrupted read, and a test process gets SIGCHLD whenever a child exits.
    func readAllRetryingInterrupts() -> Data {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = Glibc.read(fileDescriptor, &chunk, chunk.count)
            if count > 0 {
                data.append(contentsOf: chunk[0..<count])
            } else if count < 0, errno == EINTR {
                continue
            } else {
                return data
            }
        }
    }
}
