#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run installs the tools first):
#   1. swift test                      unit and end-to-end tests (real sockets, curl, openssl, built binaries)
#   2. a short libFuzzer run           the rule parsers (Tests/Fuzz), FUZZ_SECONDS (60)
#   3. a short soak                    TCP and HTTP load under reloads and fault switching, SOAK_SECONDS (60)
#   4. the tests on the release build  Tests/build-release.sh's flags, in .build/release-tests
#                                      (RELEASE_TESTS=0 skips it)
#   5. swift test under the sanitizers SANITIZERS names (default: address, in .build/asan;
#      SANITIZERS=address,thread adds ThreadSanitizer in .build/tsan; SANITIZERS=0 skips both)
# Every step is bounded in time and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "swift test"
swift test

step "fuzzing the rule parsers for ${FUZZ_SECONDS:-60} s"
bash Tests/Fuzz/run-fuzz.sh "${FUZZ_SECONDS:-60}"

step "soak for ${SOAK_SECONDS:-60} s"
python3 Tests/Soak/soak.py --duration "${SOAK_SECONDS:-60}" --faultlined .build/debug/faultlined

if [ "${RELEASE_TESTS:-1}" != 0 ]; then
    step "the tests on the release build"
    # The README's release build lets the optimizer inline into unspecialized generic code,
    # an option the compiler leaves off by default: the suite runs against that code too.
    bash Tests/build-release.sh --build-tests --scratch-path .build/release-tests
    "$(bash Tests/build-release.sh --build-tests --scratch-path .build/release-tests --show-bin-path)/faultlinePackageTests.xctest" \
        --testing-library swift-testing
fi

sanitizers="${SANITIZERS:-address}"
[ "$sanitizers" = 1 ] && sanitizers=address
if [[ ",$sanitizers," == *,address,* ]]; then
    step "swift test under AddressSanitizer"
    # Leak checking is off: Swift's runtime and NIO keep process-lifetime singletons that
    # LeakSanitizer reports at every exit (and it would make each daemon exit non-zero).
    # At most 4 tests at a time (the test binary's own option; `swift test` does not pass it
    # on): with all 160 at once on two cores, tests that take 0.3 s alone took 11 s in one
    # CI run, and a 300 ms fault ran out before the machine got to the bytes it was to act on.
    # The stage takes no longer for it (71 s either way here).
    swift build --build-tests --sanitize=address --scratch-path .build/asan
    ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
        "$(swift build --sanitize=address --scratch-path .build/asan --show-bin-path)/faultlinePackageTests.xctest" \
        --testing-library swift-testing --experimental-maximum-parallelization-width 4
fi
if [[ ",$sanitizers," == *,thread,* ]]; then
    step "swift test under ThreadSanitizer"
    # The suppressions cover only synchronisation TSan cannot see (Swift's concurrency runtime
    # is not instrumented); each is explained in the file. Any other report fails the run
    # (TSan's exit code 66, in the test process or in a daemon it started), after all of them
    # are printed. One test at a time: TSan slows everything several times over, and the
    # tests that check a delay's upper bound would measure the machine's load instead.
    # Swift's crash backtracer is off: it forks, which TSan's runtime does not survive.
    SWIFT_BACKTRACE=enable=no \
    TSAN_OPTIONS="suppressions=$PWD/Tests/Sanitizers/tsan-suppressions.txt:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
        swift test --sanitize=thread --scratch-path .build/tsan --no-parallel
fi
step "all passed"
