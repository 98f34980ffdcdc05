#!/bin/bash
# gpu_attn.sh - the decode attention kernel on the GPU machine in one short device call:
# test_cuda_ops (every op against kcpu, with the decode attention cases) and
# `bench_cuda --attn-only` (the copy ceiling and the paged decode attention sweep: new
# kernel with automatic and fixed key splits and its tuning variants, and the old kernel)
# and `bench_cuda --attn-tc` (the experimental tensor-core decode kernel against the
# default one), from binaries built here (see docs/cuda.md "Running on the GPU machine").
#
#   scripts/gpu_attn.sh stage BUILD_DIR DEST   (here) what scripts/gpu_suite.sh stages, plus
#        this script
#   bash DEST/gpu_attn.sh run DEST   (on the GPU machine) logs to $OUT (or /tmp/gpu_attn),
#        a short table last; every step has a timeout and a failing step does not stop
#        the others
set -u

stage() {
    local build=$1 dest=$2 here
    here=$(cd "$(dirname "$0")" && pwd)
    bash "$here/gpu_suite.sh" stage "$build" "$dest" || return 1
    cp "$0" "$dest/gpu_attn.sh"
}

run() {
    local dir out cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_attn}
    mkdir -p "$out"
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH="$dir/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PD_SOURCE_DIR="$dir/src"
    {
        date -u
        echo "commit $(cat "$dir/COMMIT" 2>/dev/null)"
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    } > "$out/env.txt" 2>&1
    cat "$out/env.txt"
    local names=() rcs=() secs=() t0
    t0=$SECONDS
    (cd "$dir/src" && timeout 60 "$dir/bin/bench_cuda" --attn-only) > "$out/bench_attn.log" 2>&1
    rcs+=($?) names+=(bench_attn) secs+=($((SECONDS - t0)))
    t0=$SECONDS
    (cd "$dir/src" && timeout 240 "$dir/bin/test_cuda_ops") > "$out/test_cuda_ops.log" 2>&1
    rcs+=($?) names+=(test_cuda_ops) secs+=($((SECONDS - t0)))
    # the experimental tensor-core decode kernel, in processes of its own (a fault there
    # cannot spoil the other results): its test cases, then its timing
    t0=$SECONDS
    (cd "$dir/src" && PD_TEST_ATTN_TC=1 timeout 200 "$dir/bin/test_cuda_ops") > "$out/test_attn_tc.log" 2>&1
    rcs+=($?) names+=(test_attn_tc) secs+=($((SECONDS - t0)))
    t0=$SECONDS
    (cd "$dir/src" && timeout 60 "$dir/bin/bench_cuda" --attn-tc) > "$out/bench_attn_tc.log" 2>&1
    rcs+=($?) names+=(bench_attn_tc) secs+=($((SECONDS - t0)))
    grep -E 'check failed|outside tolerance|decode attention cases|PASS|FAIL' "$out/test_cuda_ops.log" | tail -20
    grep -E 'tensor-core decode|PASS|FAIL' "$out/test_attn_tc.log" | tail -4
    echo
    grep -E '^==|^d2d copy|^summary|^best|^check|^tensor-core|^  (f32|f16|fp8)' "$out/bench_attn.log" | head -26
    grep -E '^summary|^  (f32|f16|fp8)' "$out/bench_attn_tc.log" | head -5
    grep '^JSON_ATTN' "$out/bench_attn.log" "$out/bench_attn_tc.log"
    printf '%-20s %-8s %6s\n' step result seconds
    for i in "${!names[@]}"; do
        local r=${rcs[$i]} s=PASS
        [ "$r" = 77 ] && s=SKIP
        [ "$r" != 0 ] && [ "$r" != 77 ] && s="FAIL($r)"
        printf '%-20s %-8s %6s\n' "${names[$i]}" "$s" "${secs[$i]}"
    done
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DIR" >&2; exit 2 ;;
esac
