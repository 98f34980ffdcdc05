#!/bin/bash
# gpu_step.sh - the decode-step checks of issue 6 (fused q|k|v and gate|up weights,
# device-side greedy) on the GPU machine, from the binaries scripts/gpu_suite.sh stages.
#
#   here:        cmake -S . -B build-cuda -DPD_CUDA=ON -DPD_WERROR=ON -DCMAKE_BUILD_TYPE=Release
#                cmake --build build-cuda -j2 --target test_cuda_ops test_cuda_golden test_cuda_engine bench_cuda
#                scripts/gpu_suite.sh stage build-cuda .gpu_cuda
#   GPU machine: bash scripts/gpu_step.sh .gpu_cuda [--quick]     (device call with carry [".gpu_cuda"])
#
# Runs test_cuda_ops, test_cuda_engine, test_cuda_golden and bench_cuda, each under a
# timeout, going on after a failure; full logs in $OUT (or /tmp/gpu_step).  Prints the
# lines of the tests that concern this work, the whole bench_cuda table (fused GEMV
# shapes, graph steps fused / unfused / device argmax beside the weight floor), and a
# pass/fail table last.  --quick: bench_cuda up to batch 64 (no batch 256 rows).
set -u

dir=$(cd "${1:?usage: gpu_step.sh STAGED_DIR [--quick]}" && pwd)
quick=""
[ "${2:-}" = "--quick" ] && quick=--quick
out=${OUT:-/tmp/gpu_step}
mkdir -p "$out"
cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$dir/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PD_SOURCE_DIR="$dir/src" NCCL_NVLS_ENABLE=0
{
    date -u
    echo "commit $(cat "$dir/COMMIT" 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    echo "cublas: ${cub:-not found}"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

names=() rcs=() secs=()
step() { # name timeout command...
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    (cd "$dir/src" && timeout "$limit" "$@") > "$out/$name.log" 2>&1
    rcs+=($?)
    names+=("$name")
    secs+=($((SECONDS - t0)))
}

# limits add up to 590 s (a device call's 600): the bench before the rest
step test_cuda_ops 100 "$dir/bin/test_cuda_ops"
step test_cuda_engine 140 "$dir/bin/test_cuda_engine"
step bench_cuda 220 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" $quick
# the graphs vs eager test again with the decode GEMVs launched with PDL, weights not in L1
step test_cuda_engine_pdl 80 env PD_CUDA_GEMV_PDL=1 PD_CUDA_GEMV_NOALLOC=1 "$dir/bin/test_cuda_engine"
step test_cuda_golden 50 "$dir/bin/test_cuda_golden"

echo
echo "== gpu_step: $(head -1 "$out/env.txt"), commit $(cat "$dir/COMMIT" 2>/dev/null) =="
for f in test_cuda_ops test_cuda_engine test_cuda_engine_pdl; do
    echo "-- $f"
    grep -h -E 'argmax|sampled rows|sample n=|draws =|tokens: graphs|gemv pdl|^(ok|FAIL|not ok)|passed, |outside tolerance' "$out/$f.log" 2>/dev/null | head -30
done
grep -h -E 'passed, ' "$out"/test_cuda_golden.log 2>/dev/null
sed -n '/^== bench_cuda/,/^JSON /p' "$out/bench_cuda.log" | grep -v '^JSON '
grep '^JSON' "$out/bench_cuda.log"
printf '%-20s %-8s %6s\n' step result seconds
for i in "${!names[@]}"; do
    r=${rcs[$i]} s=PASS
    [ "$r" = 77 ] && s=SKIP
    [ "$r" != 0 ] && [ "$r" != 77 ] && s="FAIL($r)"
    printf '%-20s %-8s %6s\n' "${names[$i]}" "$s" "${secs[$i]}"
done
