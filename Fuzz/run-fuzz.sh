#!/usr/bin/env bash
# Builds a fuzz target (wire: P2PQWireFuzz, link: P2PQLinkFuzz, dns: P2PQDNSFuzz,
# codable: P2PQCodableFuzz, queue: P2PQQueueFuzz, rpc: P2PQRemoteCallFuzz) with libFuzzer + ASan and runs it for [seconds]
# (default 60) on a temporary copy of the seed corpus, so the committed seeds stay small.
# Exits non-zero if the fuzzer finds a crash; the crashing input is saved in Fuzz/artifacts/
# and can be replayed with a plain build: `swift run <product> Fuzz/artifacts/crash-…`.
set -euo pipefail

target="${1:?usage: run-fuzz.sh wire|link|dns|codable|queue|rpc [seconds]}"
case "$target" in
    wire) product=P2PQWireFuzz ;;
    link) product=P2PQLinkFuzz ;;
    dns) product=P2PQDNSFuzz ;;
    codable) product=P2PQCodableFuzz ;;
    queue) product=P2PQQueueFuzz ;;
    rpc) product=P2PQRemoteCallFuzz ;;
    *) echo "run-fuzz: unknown target $target (wire, link, dns, codable, queue or rpc)" >&2; exit 2 ;;
esac
seconds="${2:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# A separate scratch path: sanitizer builds must not mix with the normal .build.
swift build -c debug --product $product \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xswiftc -DP2PQ_FUZZ \
    --scratch-path .build-fuzz

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -R Fuzz/corpus/$target "$work/corpus"
mkdir -p Fuzz/artifacts

status=0
# The Swift backtracer would otherwise race libFuzzer's own crash handling.
SWIFT_BACKTRACE=enable=no .build-fuzz/debug/$product \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix=Fuzz/artifacts/ "$work/corpus" || status=$?

if [ "$status" -ne 0 ]; then
    echo "run-fuzz: the fuzzer failed (exit $status); see Fuzz/artifacts/" >&2
else
    rmdir Fuzz/artifacts 2>/dev/null || true  # only kept when it holds a crash
fi
exit "$status"
