#!/usr/bin/env bash
# Builds the P2PQLink (handshake) fuzzer (libFuzzer + AddressSanitizer) and runs it for [seconds]
# (default 60) on a temporary copy of the seed corpus, so the committed seeds stay small.
# Exits non-zero if the fuzzer finds a crash; the crashing input is saved in Fuzz/artifacts/
# and can be replayed with a plain build: `swift run P2PQLinkFuzz Fuzz/artifacts/crash-…`.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# A separate scratch path: sanitizer builds must not mix with the normal .build.
swift build -c debug --product P2PQLinkFuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xswiftc -DP2PQ_FUZZ \
    --scratch-path .build-fuzz

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -R Fuzz/corpus/link "$work/corpus"
mkdir -p Fuzz/artifacts

status=0
# The Swift backtracer would otherwise race libFuzzer's own crash handling.
SWIFT_BACKTRACE=enable=no .build-fuzz/debug/P2PQLinkFuzz \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix=Fuzz/artifacts/ "$work/corpus" || status=$?

if [ "$status" -ne 0 ]; then
    echo "run-link-fuzz: the fuzzer failed (exit $status); see Fuzz/artifacts/" >&2
else
    rmdir Fuzz/artifacts 2>/dev/null || true  # only kept when it holds a crash
fi
exit "$status"
