#!/bin/bash
# gpu_engine_swap.sh - swap preemption on the GPU machine (test_cuda_swap: the CUDA
# backend's pinned swap blocks and batched copies, and the engine on CUDA forcing swaps),
# from binaries built on the development machine.
#
#   scripts/gpu_engine_swap.sh stage BUILD_DIR DEST   (here) copy test_cuda_swap, the tiny
#        Llama it loads, the runtime libraries it needs (cJSON, cudart) and this script
#        into DEST (a new folder, or one staged by scripts/gpu_suite.sh: files are added);
#        DEST travels with the device call (name it in `carry`).
#   bash DEST/gpu_engine_swap.sh run DEST   (on the GPU machine) run test_cuda_swap, then
#        again under compute-sanitizer memcheck when it is there; every step has a
#        timeout and a failing step does not stop the next; logs to $OUT (or
#        /tmp/gpu_engine_swap), a short table last.
set -u

stage() {
    local build=$1 dest=$2 src lib
    src=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$dest/bin" "$dest/lib" "$dest/src/tests/data/models" || return 1
    cp "$build/tests/test_cuda_swap" "$dest/bin/" || return 1
    cp -r "$src/tests/data/models/tiny-llama" "$dest/src/tests/data/models/" || return 1
    # runtime libraries the device lacks (test_cuda_swap needs cJSON and cudart; cuBLAS is
    # found on the device); a folder staged by gpu_suite.sh already has them
    for lib in libcjson.so.1 libcudart.so.13; do
        [ -e "$dest/lib/$lib" ] && continue
        for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/local/lib /usr/local/cuda/lib64; do
            [ -e "$d/$lib" ] && cp -aL "$d/$lib" "$dest/lib/" && break
        done
    done
    cp "$0" "$dest/gpu_engine_swap.sh"
    git -C "$src" rev-parse --short HEAD > "$dest/COMMIT_SWAP"
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
