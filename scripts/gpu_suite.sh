#!/bin/bash
# gpu_suite.sh - the CUDA test suite and benchmarks on the GPU machine, from binaries
# built on the development machine (nothing is built on the GPU machine).
#
#   scripts/gpu_suite.sh stage BUILD_DIR DEST   (here) copy the cuda tests, bench_cuda,
#        this script, the test data, the Llama-3.1-8B config and the Debian runtime
#        libraries the binaries need (apt-get download + dpkg -x) into DEST, a folder
#        that travels with the device call (ignore it in git, name it in `carry`).
#   bash DEST/gpu_suite.sh run DEST [--quick]   (on the GPU machine) run test_cuda_ops,
#        test_cuda_golden, test_cuda_engine (CUDA graphs vs eager), test_cuda_swap and
#        bench_cuda; full
#        logs to $OUT (or /tmp/gpu_suite), a short table last.
#   bash DEST/gpu_suite.sh sanitize DEST   (on the GPU machine) the two cuda tests under
#        compute-sanitizer memcheck.
set -u

stage() {
    local build=$1 dest=$2 src
    src=$(cd "$(dirname "$0")/.." && pwd)
    rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/lib" "$dest/src/tests" "$dest/src/configs/models" "$dest/deb"
    for b in tests/test_cuda_ops tests/test_cuda_golden tests/test_cuda_engine tests/test_cuda_swap bench/cuda/bench_cuda; do
        cp "$build/$b" "$dest/bin/" || return 1
    done
    cp "$0" "$dest/gpu_suite.sh"
    cp -r "$src/tests/data" "$dest/src/tests/"
    mkdir -p "$dest/src/tests/golden" && cp "$src/tests/golden/make_goldens.py" "$dest/src/tests/golden/"
    cp -r "$src/configs/models/llama-3.1-8b" "$dest/src/configs/models/"
    # Debian runtime libraries the device lacks (cJSON; add more here if ldd grows)
    (cd "$dest/deb" && apt-get download libcjson1 >/dev/null) || return 1
    for f in "$dest"/deb/*.deb; do dpkg -x "$f" "$dest/deb/x"; done
    cp -a "$dest"/deb/x/usr/lib/x86_64-linux-gnu/*.so* "$dest/lib/"
    cp -aL /usr/local/lib/libcudart.so.13 "$dest/lib/" 2>/dev/null || true
    rm -rf "$dest/deb"
    git -C "$src" rev-parse --short HEAD > "$dest/COMMIT"
    du -sh "$dest"
}

run() {
    local dir quick=""
    dir=$(cd "$1" && pwd)
    [ "${2:-}" = "--quick" ] && quick=--quick
    local out=${OUT:-/tmp/gpu_suite}
    mkdir -p "$out"
    # cuBLAS: the machine's own (CUDA toolkit or the Python wheels)
    local cub
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
    local names=() rcs=() secs=()
    # Goldens of the small safetensors models from the machine's own transformers (the
    # default GGUF is larger than a device call can carry); they come back in $OUT.
    if [ ! -f "$dir/src/tests/data/goldens/tiny-llama.json" ]; then
        local t0=$SECONDS
        (cd "$dir/src" && PYTHONUNBUFFERED=1 timeout 120 python3 tests/golden/make_goldens.py --gguf /nonexistent \
            --models-dir "$dir/src/tests/data/models") > "$out/make_goldens.log" 2>&1
        rcs+=($?)
        names+=(make_goldens)
        secs+=($((SECONDS - t0)))
        (cd "$dir/src/tests/data" && tar czf "$out/goldens_tiny.tar.gz" goldens/tiny-*.json) 2>/dev/null
    fi
    for t in test_cuda_ops test_cuda_golden test_cuda_engine test_cuda_swap; do
        local t0=$SECONDS
        (cd "$dir/src" && timeout 150 "$dir/bin/$t") > "$out/$t.log" 2>&1
        rcs+=($?)
        names+=("$t")
        secs+=($((SECONDS - t0)))
        tail -5 "$out/$t.log"
    done
    local t0=$SECONDS
    (cd "$dir/src" && timeout 280 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" $quick) > "$out/bench_cuda.log" 2>&1
    rcs+=($?)
    names+=(bench_cuda)
    secs+=($((SECONDS - t0)))
    echo
    echo "== gpu_suite: $(head -1 "$out/env.txt") =="
    sed -n '/^== bench_cuda/,$p' "$out/bench_cuda.log" | grep -v '^JSON'
    grep '^JSON' "$out/bench_cuda.log"
    printf '%-20s %-8s %6s\n' step result seconds
    for i in "${!names[@]}"; do
        local r=${rcs[$i]} s=PASS
        [ "$r" = 77 ] && s=SKIP
        [ "$r" != 0 ] && [ "$r" != 77 ] && s="FAIL($r)"
        printf '%-20s %-8s %6s\n' "${names[$i]}" "$s" "${secs[$i]}"
    done
}

# The cuda tests under compute-sanitizer (memcheck, then racecheck on the ops test).
sanitize() {
    local dir out cs cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_suite}
    mkdir -p "$out"
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH="$dir/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PD_SOURCE_DIR="$dir/src"
    for t in test_cuda_ops test_cuda_golden test_cuda_engine; do
        (cd "$dir/src" && timeout 250 "$cs" --tool memcheck --error-exitcode 99 "$dir/bin/$t") > "$out/memcheck_$t.log" 2>&1
        echo "memcheck $t: rc $? ($(grep -c 'Invalid\|ERROR SUMMARY' "$out/memcheck_$t.log") summary/invalid lines)"
        grep 'ERROR SUMMARY' "$out/memcheck_$t.log"
    done
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
sanitize) shift; sanitize "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DIR [--quick] | sanitize DIR" >&2; exit 2 ;;
esac
