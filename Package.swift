// swift-tools-version:6.1
import PackageDescription

/// Linking that keeps the daemon's resident memory small (README, Benchmark). A static Swift
/// standard library adds `-export-dynamic`, which puts 32,000 symbols in the dynamic symbol
/// table, and a position-independent executable carries 2.7 MB of relocations that the
/// loader reads at every start: both end up resident. `--no-export-dynamic` keeps only the
/// symbols shared libraries need; lld's packed relative relocations (glibc 2.36 and later,
/// Debian 12) shrink the relocations to a few kilobytes while keeping the executable
/// position-independent. lld ships with the Swift toolchain.
let residentSizeLinking: [LinkerSetting] = [
    .unsafeFlags(
        ["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"],
        .when(platforms: [.linux]))
]

let package = Package(
    name: "faultline",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "faultlined", targets: ["faultlined"]),
        .executable(name: "faultctl", targets: ["faultctl"]),
        .library(name: "Faultline", targets: ["Faultline"]),
        .library(name: "FaultlineRules", targets: ["FaultlineRules"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        // Rule files: parsing, validation and the immutable rule snapshot. No networking,
        // so that `faultctl validate` and the tests use exactly what the daemon uses.
        .target(
            name: "FaultlineRules",
            dependencies: [
                .product(name: "Yams", package: "Yams")
            ]
        ),
        // The daemon: data path, listeners, metrics, services.
        .target(
            name: "Faultline",
            dependencies: [
                "FaultlineRules",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            // Release builds skip the run-time exclusivity checks on the data path's class
            // properties (a thread-local access set per read and write); debug builds and
            // the test suite, which run every path, keep them.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        // Command-line front ends of both executables, kept in a library so that the
        // executables stay one line long.
        .target(
            name: "FaultlineCommands",
            dependencies: [
                "Faultline",
                "FaultlineRules",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "faultlined", dependencies: ["FaultlineCommands"], linkerSettings: residentSizeLinking),
        .executableTarget(name: "faultctl", dependencies: ["FaultlineCommands"], linkerSettings: residentSizeLinking),
        // libFuzzer target for the rule parsers (see README, Fuzzing): built with
        // `-Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING`; a plain build replays files.
        .executableTarget(name: "faultline-fuzz", dependencies: ["FaultlineRules"]),
        .testTarget(name: "FaultlineRulesTests", dependencies: ["FaultlineRules"]),
        .testTarget(
            name: "FaultlineTests",
            dependencies: [
                "Faultline",
                "FaultlineRules",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

