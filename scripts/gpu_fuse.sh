#!/bin/bash
# gpu_fuse.sh - the batch-1 decode fusion (norm/GLU/residual folded into the decode GEMVs,
# RoPE + KV write in one kernel) on the GPU machine: its correctness cases, the engine
# A/B and the benchmark rows, from binaries built here (nothing is built there).
#
#   scripts/gpu_fuse.sh stage BUILD_DIR DEST   (here) what gpu_suite.sh stage copies
#        (cuda tests, bench_cuda, test data, runtime libraries) plus this script.
#   (a DEST staged by gpu_suite.sh stage works too: bash scripts/gpu_fuse.sh run DEST)
#   bash DEST/gpu_fuse.sh run DEST             (on the GPU machine) each step under a
#        timeout (< 540 s in all), a failing step does not stop the next; logs to $OUT
#        (or /tmp/gpu_fuse), a short table last:
#          fused_ops       test_cuda_ops, the fusion cases only (PD_TEST_FUSE_ONLY=1):
#                          norm_matmul / matmul_add / rope_kv_write against kcpu
#          engine          test_cuda_engine (graphs vs eager; fusion on vs off)
#          engine_nopdl    the same with PD_CUDA_GEMV_PDL=0 (fused kernels without PDL)
#          bench           bench_cuda --quick (b1 graph step fused vs not, fused GEMVs)
set -u

stage() {
    local build=$1 dest=$2 here
    here=$(cd "$(dirname "$0")" && pwd)
    bash "$here/gpu_suite.sh" stage "$build" "$dest" || return 1
    cp "$here/gpu_fuse.sh" "$dest/gpu_fuse.sh"
}

step() { # step DIR OUT NAME TIMEOUT COMMAND...
    local dir=$1 out=$2 name=$3 limit=$4 t0=$SECONDS
    shift 4
    (cd "$dir/src" && timeout "$limit" "$@") > "$out/$name.log" 2>&1
    RCS+=($?)
    NAMES+=("$name")
    SECS+=($((SECONDS - t0)))
}

run() {
    local dir out cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_fuse}
    mkdir -p "$out"
    if [ ! -d "$dir/bin" ]; then
        tar -C "$dir" -xJf "$dir/bin.tar.xz" || { echo "gpu_fuse: cannot unpack $dir/bin.tar.xz" >&2; return 1; }
    fi
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH="$dir/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PD_SOURCE_DIR="$dir/src" NCCL_NVLS_ENABLE=0
    { date -u; echo "commit $(cat "$dir/COMMIT" 2>/dev/null)"; nvidia-smi --query-gpu=name --format=csv,noheader; } \
        > "$out/env.txt" 2>&1
    NAMES=() RCS=() SECS=()
    step "$dir" "$out" fused_ops 80 env PD_TEST_FUSE_ONLY=1 "$dir/bin/test_cuda_ops"
    step "$dir" "$out" engine 150 "$dir/bin/test_cuda_engine"
    step "$dir" "$out" engine_nopdl 100 env PD_CUDA_GEMV_PDL=0 "$dir/bin/test_cuda_engine"
    step "$dir" "$out" bench 200 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" --quick
    echo "== gpu_fuse: $(head -1 "$out/env.txt"), commit $(cat "$dir/COMMIT" 2>/dev/null) =="
    local f
    for f in fused_ops engine engine_nopdl; do
        echo "-- $f"
        grep -h -E 'passed, |outside tolerance|check failed|decode fusion|tokens: graphs|^FAIL|^not ok' \
            "$out/$f.log" 2>/dev/null | head -14
    done
    echo "-- bench"
    grep -E 'decode b1|decode step batch 1|^GEMV |fused GEMV rows|decode fusion rows|copy' "$out/bench.log" | head -30
    grep -h '^JSON_FUSE' "$out/bench.log"
    printf '%-16s %-8s %6s\n' step result seconds
    local i r st
    for i in "${!NAMES[@]}"; do
        r=${RCS[$i]} st=PASS
        [ "$r" = 77 ] && st=SKIP
        [ "$r" != 0 ] && [ "$r" != 77 ] && st="FAIL($r)"
        printf '%-16s %-8s %6s\n' "${NAMES[$i]}" "$st" "${SECS[$i]}"
    done
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DIR" >&2; exit 2 ;;
esac
