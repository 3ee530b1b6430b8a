#!/usr/bin/env bash
# CI's short fault-injection suite (about 5 minutes): runs the short version of each scenario
# (or those named as arguments) and exits non-zero if any reports a loss. It uses the p2pq in
# $P2PQ_BINARY (CI: the debug build it already has: the scenarios check what nodes do, not how
# fast, and a release build of the network stack costs about 10 of CI's 30 minutes); without
# it, it builds the release p2pq first. Needs root for network namespaces and iptables
# (Debian: apt-get install iptables); without them the signal scenarios run on loopback and
# the network ones are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="${P2PQ_BINARY:-}"
if [ -z "$binary" ]; then
    swift build -c release --product p2pq
    binary=.build/release/p2pq
fi
out="$(mktemp -d -t p2pq-faults-ci.XXXXXX)"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(ci)
exec python3 scripts/faults/faults.py --short --p2pq "$binary" --out "$out" "${scenarios[@]}"
