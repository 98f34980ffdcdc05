#!/usr/bin/env bash
# client_capacity.sh - how many concurrent streams one pdserve-bench process holds, and
# its CPU per streamed chunk, against fastsse (a trivial C streaming server), so the
# server is never the ceiling.
#
# usage: bench/scripts/client_capacity.sh [BENCH_BINARY] ["1000 4000 8000"] [ITL_MS] [TOKENS]
# Each step starts N streams at once after N warm-up requests (so connections are
# open), every stream sends TOKENS chunks ITL_MS apart.  Printed per step: streams held
# at once, chunks/s delivered, client CPU per chunk, the client's share of one core,
# ITL p99 against the scripted ITL, and TTFT over the scripted 100 ms.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH="${1:-$HERE/../../build/bench/pdserve-bench}"
STEPS="${2:-1000 4000 8000}"
ITL_MS="${3:-100}"
TOKENS="${4:-100}"
WORK="$(mktemp -d)"
trap 'kill "$SRV" 2>/dev/null || true; rm -rf "$WORK"' EXIT

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cc -O2 -o "$WORK/fastsse" "$HERE/fastsse.c"
"$WORK/fastsse" 0 100000 $((ITL_MS * 1000)) > "$WORK/port" 2> "$WORK/fastsse.log" &
SRV=$!
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
URL="http://127.0.0.1:$(awk '{print $2}' "$WORK/port")"

printf "%-8s %-8s %-10s %-14s %-11s %-12s %-12s %-8s\n" streams peak chunks/s cpu/chunk_us core_share itl_p99_ms ttft_ms failed
for n in $STEPS; do
    "$BENCH" --base-url "$URL" --model fast-model --num-prompts "$n" --num-warmups "$n" \
        --max-concurrency "$n" --random-input-len 8 --random-output-len "$TOKENS" \
        --ready-check-timeout-sec 0 --quiet --percentile-metrics ttft,itl \
        --save-result --result-dir "$WORK" --result-filename "r$n.json" > "$WORK/out$n.txt" 2>&1 || true
    python3 - "$WORK/r$n.json" "$n" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
chunks = d["total_output_tokens"]
cpu = d["client_cpu_s"]
print("%-8s %-8d %-10.0f %-14.2f %-11.2f %-12.1f %-12.1f %-8d" % (
    sys.argv[2], d["peak_inflight"], chunks / d["duration"], 1e6 * cpu / max(1, chunks),
    cpu / d["duration"], d["p99_itl_ms"], d["mean_ttft_ms"], d["failed"]))
EOF
done
