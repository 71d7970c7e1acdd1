#!/usr/bin/env bash
# The release build the README recommends, in one place for the README's commands, the
# benchmarks and the test suite's release step. Arguments go on to `swift build`
# (`--product faultlined`, `--scratch-path DIR`, `--build-tests`, `--show-bin-path`).
#
#   bash Tests/build-release.sh [swift build options]
#
# The flags, and why (the README's "Release build" section has the measurements):
#   -enforce-exclusivity=unchecked   no run-time exclusivity checks, SwiftNIO's code included
#                                    (Faultline's own module has them off in release builds).
#   -Xllvm -sil-inline-generics      lets the optimizer inline into generic code that stays
#                                    unspecialized: SwiftNIO's socket channel runs that way
#                                    (`BaseSocketChannel<Socket>`), and its state getters were
#                                    called out of line about eleven times per forwarded chunk,
#                                    with two retains and two releases each.
#   -Xllvm -sil-inline-never-functions=succeed
#                                    keeps functions whose name holds "succeed" (promise
#                                    completion) out of that inlining: with them, Swift 6.3.1
#                                    crashes compiling NIOPosix (HappyEyeballs.swift). No
#                                    promise is completed per forwarded chunk.
# `-sil-inline-generics` is an optimizer option the Swift compiler leaves off by default, so
# the whole test suite runs against a build with these flags too (Tests/run-all.sh, step 4).
#
# With --build-tests the build is for `swift test -c release`: the test targets need
# -enable-testing, and the Swift runtime is linked dynamically as the test runner expects.
# Otherwise both executables link it statically (one binary to install, less resident memory).
set -euo pipefail
cd "$(dirname "$0")/.."

flags=(
    -Xswiftc -enforce-exclusivity=unchecked
    -Xswiftc -Xllvm -Xswiftc -sil-inline-generics
    -Xswiftc -Xllvm -Xswiftc -sil-inline-never-functions=succeed
)
link=(--static-swift-stdlib)
for arg in "$@"; do
    if [ "$arg" = "--build-tests" ]; then
        flags+=(-Xswiftc -enable-testing)
        link=()
    fi
done
exec swift build -c release ${link[@]+"${link[@]}"} "${flags[@]}" "$@"
