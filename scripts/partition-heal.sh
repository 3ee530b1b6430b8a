#!/bin/bash
# Issue 19 point 4 on real processes: A and C in namespace p2pqh-ac, B in p2pqh-b, joined by a
# Usage (root, for the namespaces): scripts/partition-heal.sh .build/release/p2pq [output dir]
# veth pair (pha/phb). B holds 20,000 items; B's link goes down for 10 s, then up. Measures how
# long until every node lists the other two alive, then checks that failure detection and the
# queues work: 2,000 items pushed at A, some popped at B, B SIGKILLed, the rest popped at A and C.
# Bounded: every wait has a deadline; namespaces and processes are removed on exit.
set -u
BIN=${1:?p2pq binary}
OUT=${2:-$(mktemp -d /tmp/p2pq-partition-heal.XXXXXX)}
mkdir -p "$OUT"; rm -f "$OUT"/*
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  ip netns del p2pqh-ac 2>/dev/null; ip netns del p2pqh-b 2>/dev/null
}
trap cleanup EXIT
ip netns add p2pqh-ac && ip netns add p2pqh-b || exit 1
ip link add pha type veth peer name phb || exit 1
ip link set pha netns p2pqh-ac && ip link set phb netns p2pqh-b
ip -n p2pqh-ac addr add 10.77.0.1/24 dev pha; ip -n p2pqh-b addr add 10.77.0.2/24 dev phb
for ns in p2pqh-ac p2pqh-b; do ip -n $ns link set lo up; done
ip -n p2pqh-ac link set pha up; ip -n p2pqh-b link set phb up
"$BIN" keygen "$OUT/key" >/dev/null || exit 1
start() { # name ns listen metrics [bootstrap]
  local args=(node --listen "$3" --key-file "$OUT/key" --metrics "$4" --no-discovery --log-level info)
  [ -n "${5:-}" ] && args+=(--bootstrap "$5")
  ip netns exec "$2" "$BIN" "${args[@]}" > "$OUT/$1.out" 2> "$OUT/$1.log" &
  PIDS+=($!); eval "PID_$1=$!"
}
start A p2pqh-ac 10.77.0.1:7001 127.0.0.1:9101
sleep 0.5
start C p2pqh-ac 10.77.0.1:7003 127.0.0.1:9103 10.77.0.1:7001
start B p2pqh-b 10.77.0.2:7002 127.0.0.1:9102 10.77.0.1:7001
api() { local ns=$1; shift; ip netns exec "$ns" curl -s -m 30 "$@"; }
alive() { # ns port -> number of peers this node lists alive
  api "$1" "http://127.0.0.1:$2/status" | python3 -c 'import sys,json
try: print(sum(1 for p in json.load(sys.stdin)["peers"] if p.get("member")=="alive"))
except Exception: print(0)'
}
allalive() { [ "$(alive p2pqh-ac 9101)" -ge 2 ] && [ "$(alive p2pqh-ac 9103)" -ge 2 ] && [ "$(alive p2pqh-b 9102)" -ge 2 ]; }
for i in $(seq 1 100); do allalive && break; sleep 0.2; done
allalive || { echo "cluster did not form"; exit 1; }
echo "cluster formed"
seq 1 20000 | sed 's/^/b-/' > "$OUT/b-items"
api p2pqh-b -X POST --data-binary @"$OUT/b-items" "http://127.0.0.1:9102/queue/q/push"; echo
ip -n p2pqh-b link set phb down
echo "B's link down at $(date +%T.%N)"
sleep 10
ip -n p2pqh-b link set phb up
up=$(date +%s.%N)
echo "B's link up"
converged=""
for i in $(seq 1 600); do
  if allalive; then converged=$(python3 -c "print(round($(date +%s.%N) - $up, 2))"); break; fi
  sleep 0.1
done
echo "all alive again after: ${converged:-never (60 s)} s"
for n in "p2pqh-ac 9101 A" "p2pqh-ac 9103 C" "p2pqh-b 9102 B"; do set -- $n
  echo "$3 sees: $(api $1 "http://127.0.0.1:$2/status" | python3 -c 'import sys,json; print([(p.get("peerID","?")[:8], p["state"], p.get("member")) for p in json.load(sys.stdin)["peers"]])')"
done
# Queues after the heal: 2,000 items at A, 500 popped at B, B killed, the rest at A and C.
seq 1 2000 | sed 's/^/a-/' > "$OUT/a-items"
api p2pqh-ac -X POST --data-binary @"$OUT/a-items" "http://127.0.0.1:9101/queue/q/push"; echo
api p2pqh-b -X POST "http://127.0.0.1:9102/queue/q/pop?max=500&timeout=3000" | python3 -c 'import sys,json; print("\n".join(json.load(sys.stdin)["items"]))' > "$OUT/popped-b"
sleep 0.2
kill -KILL "$PID_B"
echo "B popped $(grep -c '^a-' "$OUT/popped-b") of A's items, then was SIGKILLed"
: > "$OUT/popped-ac"
for i in $(seq 1 40); do
  for port in 9101 9103; do
    api p2pqh-ac -X POST "http://127.0.0.1:$port/queue/q/pop?max=5000&timeout=250" | python3 -c 'import sys,json; print("\n".join(json.load(sys.stdin)["items"]))' | grep -v '^$' >> "$OUT/popped-ac"
  done
  got=$(cat "$OUT/popped-b" "$OUT/popped-ac" | grep '^a-' | sort -u | wc -l)
  [ "$got" -ge 2000 ] && break
done
echo "A's items popped (distinct, B + A + C): $got of 2000; duplicates: $(( $(cat "$OUT/popped-b" "$OUT/popped-ac" | grep -c '^a-') - got ))"
echo "B seen dead by A: $(api p2pqh-ac http://127.0.0.1:9101/status | python3 -c 'import sys,json; print([p.get("member") for p in json.load(sys.stdin)["peers"]])')"
