#!/usr/bin/env bash
# Fuzzes the rule parsers (rule files, and fault bodies as the control socket takes them) with
# libFuzzer for SECONDS (default 60), starting from the seed corpus in Tests/Fuzz/corpus.
# CI runs it for 60 s; a longer run:  bash Tests/Fuzz/run-fuzz.sh 3600
# New inputs go to .build/fuzz-corpus; a crash leaves crash-* in .build/fuzz-artifacts, and
# .build/debug/faultline-fuzz FILE (a plain build) replays it.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
swift build --product faultline-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING --scratch-path .build/fuzz
mkdir -p .build/fuzz-corpus .build/fuzz-artifacts
.build/fuzz/debug/faultline-fuzz \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict=Tests/Fuzz/rules.dict -artifact_prefix=.build/fuzz-artifacts/ \
    .build/fuzz-corpus Tests/Fuzz/corpus/rules
