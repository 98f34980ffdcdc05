#!/usr/bin/env bash
# bench_proxy_host.sh - the proxy overhead benchmark on a bigger, idle host (the GPU
# machine's CPUs: no GPU is used).  Builds what it needs if missing, runs
# bench/bench_proxy.py with the C upstream at 1, 64, 256 and 1,000 concurrent streams
# and once against a real CPU node, each step under a timeout, keeps going after a
# failing step (each run at most 280 s, so the whole fits a 10-minute call when the
# binaries are built), writes logs and JSON to $OUT (default ./bench_proxy_out) and prints the
# tables last.
#
#   OUT=/some/dir bench/bench_proxy_host.sh [build-dir]
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
OUT=${OUT:-$PWD/bench_proxy_out}
mkdir -p "$OUT"
cd "$top"
if [ ! -x "$build/proxy/pdserve-proxy" ] || [ ! -x "$build/bench/pdserve-bench" ] || [ ! -x "$build/decode/pdserve-decode" ]; then
  timeout 900 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPD_CUDA=OFF >"$OUT/cmake.log" 2>&1
  timeout 1200 cmake --build "$build" -j"$(nproc)" --target pdserve-proxy pdserve-bench pdserve-decode >"$OUT/build.log" 2>&1 \
    || echo "build failed (see $OUT/build.log)"
fi
echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1 /proc/loadavg)" | tee "$OUT/host.txt"
timeout 280 python3 bench/bench_proxy.py --build "$build" --concurrency 1,64,256,1000 --results-dir "$OUT" \
  --label "bench_proxy_host.sh" >"$OUT/c_upstream.txt" 2>&1 || echo "c upstream run failed: $(tail -3 "$OUT/c_upstream.txt")"
timeout 280 python3 bench/bench_proxy.py --build "$build" --upstream node --node-threads 4 --concurrency 1,8,32 \
  --num-prompts 64 --results-dir "$OUT" --label "bench_proxy_host.sh" >"$OUT/node_upstream.txt" 2>&1 \
  || echo "node upstream run failed: $(tail -3 "$OUT/node_upstream.txt")"
echo "== proxy overhead, C upstream (added = via proxy - direct, same run)"
grep '^[|#]' "$OUT/c_upstream.txt"
echo "== proxy overhead, real pdserve-decode upstream"
grep '^[|#]' "$OUT/node_upstream.txt"
