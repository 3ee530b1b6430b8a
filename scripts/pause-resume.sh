#!/bin/bash
# Issue 19 point 6 on real processes (loopback): A pushes 20,000 items, B (the only node with
# Usage: scripts/pause-resume.sh .build/release/p2pq [output dir]
# a waiting consumer) takes them; B is stopped (SIGSTOP) 10 s, then resumed with a consumer
# already waiting. Counts what B delivers after resuming that A also delivers (duplicates),
# and that nothing is lost. Bounded; kills only the PIDs it started.
set -u
BIN=${1:?p2pq binary}
OUT=${2:-$(mktemp -d /tmp/p2pq-pause-resume.XXXXXX)}
mkdir -p "$OUT"; rm -f "$OUT"/*
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done' EXIT
start() { # name port metrics [bootstrap]
  local args=(node --listen "127.0.0.1:$2" --metrics "127.0.0.1:$3" --no-discovery --log-level info)
  [ -n "${4:-}" ] && args+=(--bootstrap "$4")
  "$BIN" "${args[@]}" > "$OUT/$1.out" 2> "$OUT/$1.log" &
  PIDS+=($!); eval "PID_$1=$!"
}
start A 0 0
sleep 0.5
A_ADDR=$(awk '/^listening/{print $2; exit}' "$OUT/A.out"); A_OPS=$(awk '/^operations/{print $2; exit}' "$OUT/A.out")
start B 0 0 "$A_ADDR"; start C 0 0 "$A_ADDR"
sleep 1
B_OPS=$(awk '/^operations/{print $2; exit}' "$OUT/B.out"); C_OPS=$(awk '/^operations/{print $2; exit}' "$OUT/C.out")
echo "A $A_OPS  B $B_OPS  C $C_OPS"
popj() { curl -s -m 30 -X POST "$1/queue/q/pop?max=$2&timeout=$3" | python3 -c 'import sys,json
for i in json.load(sys.stdin)["items"]: print(i)'; }
count() { curl -s -m 5 "$1/status" | python3 -c 'import sys,json; print(([q["localCount"] for q in json.load(sys.stdin)["queues"] if q["name"]=="q"] or [0])[0])'; }
popj "$B_OPS" 1 1 > /dev/null   # B has a consumer (and creates the queue)
curl -s -m 5 -X POST "$C_OPS/queue/q/pop?max=1&timeout=0" > /dev/null  # C knows the queue, no consumer
( popj "$B_OPS" 1 10000 > "$OUT/b-first" ) & FIRST=$!
sleep 0.3
seq 1 20000 > "$OUT/items"
curl -s -m 30 -X POST --data-binary @"$OUT/items" "$A_OPS/queue/q/push"; echo
for i in $(seq 1 50); do held=$(count "$B_OPS"); [ "$held" -ge 19000 ] && break; sleep 0.2; done
wait $FIRST
echo "B holds $held (A $(count "$A_OPS"), C $(count "$C_OPS"))"
sleep 0.2
kill -STOP "$PID_B"; stopped=$(date +%s.%N)
sleep 10
echo "while B was stopped: A holds $(count "$A_OPS") (re-queued), C $(count "$C_OPS")"
( popj "$B_OPS" 1000 2000 > "$OUT/b-after-0" ) & WAITING=$!   # a consumer waiting when B resumes
sleep 0.2
kill -CONT "$PID_B"
wait $WAITING
for i in 1 2 3; do popj "$B_OPS" 5000 300 >> "$OUT/b-after-$i"; done
cat "$OUT"/b-after-* > "$OUT/b-after"
: > "$OUT/ac"
for i in $(seq 1 20); do
  popj "$A_OPS" 20000 200 >> "$OUT/ac"; popj "$C_OPS" 20000 100 >> "$OUT/ac"; popj "$B_OPS" 20000 100 >> "$OUT/b-after"
  got=$(cat "$OUT/b-first" "$OUT/b-after" "$OUT/ac" | sort -u | wc -l); [ "$got" -ge 20000 ] && break
done
all=$(cat "$OUT/b-first" "$OUT/b-after" "$OUT/ac" | wc -l)
echo "B delivered after resuming: $(wc -l < "$OUT/b-after"); A and C delivered: $(wc -l < "$OUT/ac")"
echo "distinct $got of 20000; duplicates $((all - got)) ($(python3 -c "print(round(100*($all-$got)/20000, 2))") %)"
grep -h "declared dead\|refuted" "$OUT"/*.log | cut -c1-140 | head -8
