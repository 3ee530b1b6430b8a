#!/usr/bin/env bash
# Builds the DocC documentation of every library target (swift-docc-plugin) and fails on any
# warning: broken symbol links, undocumented parameters. About 3-4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for target in P2PQReactor P2PQWire P2PQNoise P2PQLink P2PQConnectionManager P2PQDiscovery \
              P2PQMembership P2PQQueue P2PQRemoteCall P2PQCodable P2PQNode; do
    out=$(swift package --disable-sandbox generate-documentation --target "$target" 2>&1) || { echo "$out"; exit 1; }
    warnings=$(grep -E '^(warning|error)' <<<"$out" | sort -u || true)
    if [ -n "$warnings" ]; then
        echo "== $target"; echo "$warnings"; status=1
    else
        echo "== $target: no warnings"
    fi
done
exit $status
