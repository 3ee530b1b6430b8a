#!/usr/bin/env bash
# CI's short fault-injection suite (about 5 minutes): builds the release p2pq, runs the short
# version of each scenario (or those named as arguments) and exits non-zero if any reports a
# loss. Needs root for network namespaces and iptables (Debian: apt-get install iptables);
# without them the signal scenarios run on loopback and the network ones are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product p2pq
out="$(mktemp -d -t p2pq-faults-ci.XXXXXX)"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(ci)
exec python3 scripts/faults/faults.py --short --out "$out" "${scenarios[@]}"
