import ArgumentParser
import Faultline
import FaultlineRules
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `faultlined`: the daemon (`serve`, the default) and its CA (`ca export`).
@available(macOS 15, *)
public struct FaultlinedCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "faultlined",
        abstract: "Faultline: a fault-injection proxy that sits in front of a service under test.",
        // One line per paragraph: the argument parser wraps them to the terminal.
        discussion: """
            serve is the default subcommand: `faultlined --rules rules` is `faultlined serve --rules rules`, and `faultlined help serve` lists every option (--rules, --listen and --upstream, --metrics, --control-socket, --grace, --log-level, ...).
            """,
        version: FaultlineVersion.current,
        subcommands: [ServeCommand.self, CACommand.self],
        defaultSubcommand: ServeCommand.self
    )

    public init() {}
}

/// `faultlined [serve]`: runs the daemon.
@available(macOS 15, *)
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the proxy (the default subcommand).",
        discussion: """
            Reads every *.yaml file in the rules folder and starts the listeners they
            declare (`faultlined --check` validates them and exits).

            One-off form, without rule files:
              faultlined --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000

            Print the CA that TLS listeners' certificates chain to (for clients to trust):
              faultlined ca export
            """,
        version: FaultlineVersion.current
    )

    @Option(name: .long, help: ArgumentHelp(
        "Where Faultline keeps its CA for TLS listeners.",
        discussion: "Default: $STATE_DIRECTORY (systemd), /var/lib/faultline as root, else $XDG_STATE_HOME/faultline or ~/.local/state/faultline."))
    var stateDir: String?

    @Option(name: .long, help: "Folder of rule files (*.yaml) (default: rules).")
    var rules: String?

    /// The folder read: `--rules`, or `rules` in the working directory.
    var rulesFolder: String { rules ?? "rules" }

    @Option(name: .long, help: "One-off listener address (with --upstream): no rule files are read.")
    var listen: HostPort?

    @Option(name: .long, help: "Upstream for the one-off listener.")
    var upstream: HostPort?

    @Option(name: .long, help: "What the one-off listener speaks: tcp or http (default: tcp).")
    var `protocol`: ListenerProtocol?

    @Option(name: .long, help: "Where /metrics is served (default: \(DaemonOptions.defaultMetricsAddress)).")
    var metrics: HostPort?

    @Option(name: .long, help: ArgumentHelp(
        "The control socket (faultctl, curl --unix-socket).",
        discussion: "Default: $FAULTLINE_SOCKET, else $RUNTIME_DIRECTORY/control.sock, /run/faultline/control.sock as root, $XDG_RUNTIME_DIR/faultline/control.sock, or /tmp/faultline-UID/control.sock."))
    var controlSocket: String?

    @Option(name: .long, help: "Let this group use the control socket too (mode 0660 instead of 0600).")
    var controlGroup: String?

    @Option(name: .long, help: "Also serve the control API on this TCP address (off by default; keep it on loopback).")
    var controlAddress: HostPort?

    @Option(name: .long, help: ArgumentHelp(
        "Serve a Toxiproxy-compatible API on this address, e.g. 127.0.0.1:8474 (off by default).",
        discussion: "Toxiproxy clients, Testcontainers and chaostoolkit-toxiproxy then create proxies (runtime TCP listeners) and toxics (runtime faults). Keep it on loopback: it can open listeners."))
    var toxiproxyApi: HostPort?

    @Flag(name: .long, help: "No control socket.")
    var noControl = false

    @Flag(name: .long, help: "Serve no metrics endpoint.")
    var noMetrics = false

    @Option(name: .long, help: "Also start the built-in demo HTTP service on this address.")
    var demo: HostPort?

    @Option(name: .long, help: "How long open connections may finish after SIGTERM.")
    var grace: DurationArgument = DurationArgument(.seconds(10))

    @Option(name: .long, help: "Event loop threads (default: one per core).")
    var eventLoops: Int?

    @Option(name: .long, help: "Seed for fault decisions (probability draws, jitter), for repeatable runs.")
    var seed: UInt64?

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Flag(name: .long, help: "Validate the rules, print what would run, and exit (0 valid, 1 invalid).")
    var check = false

    init() {}

    func validate() throws {
        if (listen == nil) != (upstream == nil) {
            throw ValidationError("--listen and --upstream go together")
        }
        // Given together, one would be left out without a word: the one-off form reads no files.
        if listen != nil, let rules {
            throw ValidationError("--rules \(rules) and --listen/--upstream: the one-off listener reads no rule files; give one or the other")
        }
        if noMetrics, let metrics {
            throw ValidationError("--no-metrics and --metrics \(metrics): give one or the other")
        }
        if noControl, let option = controlSocket.map({ _ in "--control-socket" }) ?? controlGroup.map({ _ in "--control-group" }) {
            throw ValidationError("--no-control and \(option): give one or the other")
        }
        if listen == nil, `protocol` != nil {
            throw ValidationError("--protocol is for the one-off listener (with --listen and --upstream); a rule file says protocol: for its listeners")
        }
        if let eventLoops, eventLoops < 1 {
            throw ValidationError("--event-loops must be at least 1")
        }
    }

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "faultlined")

        let ruleSet: RuleSet
        if let listen, let upstream {
            ruleSet = RuleSet(listeners: [
                ListenerRule(name: "default", listen: listen, upstream: upstream, protocol: `protocol` ?? .tcp)
            ])
        } else {
            switch RuleLoader.load(directory: rulesFolder) {
            case .success(let loaded):
                ruleSet = loaded
            case .failure(let errors):
                printToStandardError(errors.description)
                printToStandardError("faultlined: \(errors.errors.count) error\(errors.errors.count == 1 ? "" : "s") in \(rulesFolder); nothing started")
                throw ExitCode(1)
            }
        }
        if check {
            print("rules OK: \(ruleSet.summary)")
            return
        }

        var options = DaemonOptions()
        if let eventLoops { options.eventLoops = eventLoops }
        // glibc gives every thread that allocates its own malloc arena (up to 8 per core),
        // each holding freed memory. One per event loop plus one for everything else keeps
        // the data path's threads apart and the resident size about 2 MiB lower. The
        // MALLOC_ARENA_MAX environment variable, if set, still wins.
        if getenv("MALLOC_ARENA_MAX") == nil {
            limitMallocArenas(to: options.eventLoops + 1)
        }
        options.metricsAddress = noMetrics ? nil : metrics ?? DaemonOptions.defaultMetricsAddress
        if !noControl {
            options.controlSocket = ControlSocketPath.resolve(controlSocket)
        }
        options.controlAddress = controlAddress
        options.toxiproxyAddress = toxiproxyApi
        options.stateDirectory = StateDirectory.resolve(stateDir)
        options.demoAddress = demo
        options.gracePeriod = grace.value
        options.seed = seed
        options.rulesDirectory = listen == nil ? rulesFolder : nil

        let daemon: Daemon
        do {
            daemon = try await Daemon.start(rules: ruleSet, options: options, logger: logger)
        } catch {
            printToStandardError("faultlined: \(error)")
            throw ExitCode(1)
        }
        if let controlGroup, let path = options.controlSocket {
            guard let entry = getgrnam(controlGroup) else {
                printToStandardError("faultlined: no group named \(controlGroup)")
                await daemon.shutdown()
                throw ExitCode(1)
            }
            chown(path, getuid(), entry.pointee.gr_gid)
            chmod(path, 0o660)
        }
        let summary = ruleSet.summary
        try await daemon.run {
            logger.info("started", metadata: ["version": "\(FaultlineVersion.current)", "rules": "\(summary)"])
            SystemdNotify.send("READY=1\nSTATUS=\(summary)")
            StartupCodePages.unmap()
        }
    }
}

/// mallopt(M_ARENA_MAX, n), looked up at run time: <malloc.h> is not in Swift's Glibc module.
func limitMallocArenas(to count: Int) {
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    let mArenaMax: Int32 = -8  // M_ARENA_MAX in <malloc.h>
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
    _ = unsafeBitCast(symbol, to: Mallopt.self)(mArenaMax, Int32(clamping: count))
}

func printToStandardError(_ text: String) {
    let line = Array((text + "\n").utf8)
    // Written with write(2) on descriptor 2: no shared C `FILE *` to reason about.
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
