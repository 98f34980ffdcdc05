#!/bin/bash
# gpu_engine_swap.sh - swap preemption on the GPU machine (test_cuda_swap: the CUDA
# backend's pinned swap blocks and batched copies, and the engine on CUDA forcing swaps),
# from binaries built on the development machine.
#
#   scripts/gpu_engine_swap.sh stage BUILD_DIR DEST   (here) stage DEST with
#        scripts/gpu_suite.sh (runtime libraries, test data) unless it already holds a
#        staged suite, then add test_cuda_swap and this script.
#   bash DEST/gpu_engine_swap.sh run DEST   (on the GPU machine) run test_cuda_swap, then
#        again under compute-sanitizer memcheck when it is there; every step has a
#        timeout and a failing step does not stop the next; logs to $OUT (or
#        /tmp/gpu_engine_swap), a short table last.
set -u

stage() {
    local build=$1 dest=$2 here
    here=$(cd "$(dirname "$0")" && pwd)
    if [ ! -f "$dest/gpu_suite.sh" ]; then
        bash "$here/gpu_suite.sh" stage "$build" "$dest" || return 1
    fi
    cp "$build/tests/test_cuda_swap" "$dest/bin/" || return 1
    cp "$0" "$dest/gpu_engine_swap.sh"
    du -sh "$dest"
}

run() {
    local dir out cub cs
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_engine_swap}
    mkdir -p "$out"
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH="$dir/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PD_SOURCE_DIR="$dir/src" NCCL_NVLS_ENABLE=0
    local names=() rcs=() secs=() t0
    t0=$SECONDS
    (cd "$dir/src" && timeout 120 "$dir/bin/test_cuda_swap") > "$out/test_cuda_swap.log" 2>&1
    rcs+=($?); names+=(test_cuda_swap); secs+=($((SECONDS - t0)))
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -n "$cs" ]; then
        t0=$SECONDS
        (cd "$dir/src" && timeout 240 "$cs" --tool memcheck --error-exitcode 99 "$dir/bin/test_cuda_swap") \
            > "$out/memcheck_test_cuda_swap.log" 2>&1
        rcs+=($?); names+=(memcheck_swap); secs+=($((SECONDS - t0)))
    fi
    echo "== gpu_engine_swap =="
    grep -E '^(ok|FAIL|  )|passed|SKIP' "$out/test_cuda_swap.log" | tail -8
    [ -n "$cs" ] && grep 'ERROR SUMMARY' "$out/memcheck_test_cuda_swap.log"
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
