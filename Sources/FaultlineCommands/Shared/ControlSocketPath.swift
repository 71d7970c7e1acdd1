import Foundation

/// Where the control socket is when nobody says: the same rule for faultlined and faultctl.
enum ControlSocketPath {
    static func resolve(_ given: String?) -> String {
        if let given, !given.isEmpty { return given }
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["FAULTLINE_SOCKET"], !path.isEmpty { return path }
        // systemd's RuntimeDirectory=faultline sets this.
        if let runtime = environment["RUNTIME_DIRECTORY"], !runtime.isEmpty { return runtime + "/control.sock" }
        if getuid() == 0 { return "/run/faultline/control.sock" }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/faultline/control.sock" }
        return "/tmp/faultline-\(getuid())/control.sock"
    }
}
