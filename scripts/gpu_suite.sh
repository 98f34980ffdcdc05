#!/bin/bash
# gpu_suite.sh - the CUDA test suite and benchmarks on the GPU machine, from binaries
# built on the development machine (nothing is built on the GPU machine).
#
#   scripts/gpu_suite.sh stage BUILD_DIR DEST   (here) copy the cuda tests, bench_cuda,
#        this script, the test data, the Llama-3.1-8B config and the Debian runtime
#        libraries the binaries need (apt-get download + dpkg -x) into DEST, a folder
#        that travels with the device call (ignore it in git, name it in `carry`).
#   bash DEST/gpu_suite.sh run DEST [--quick]   (on the GPU machine) run test_cuda_ops,
#        test_cuda_golden, test_cuda_engine (CUDA graphs vs eager), test_cuda_swap,
#        test_cuda_fp8w (fp8 weights),
#        bench_cuda (--quick: batch 64 at most), prefill attention alone (bench_cuda
#        --prefill-attn: the WMMA kernel vs the FlashAttention-2 one), the decode
#        attention sweep (bench_cuda --attn-only) and the non-default variants in
#        processes of their own (test_cuda_engine with the GEMVs without PDL and with
#        8-warp fa2 prefill CTAs, the tensor-core decode attention cases of
#        test_cuda_ops); every step under a timeout (< 600 s in all), a failing step
#        does not stop the next; full logs to $OUT (or /tmp/gpu_suite), a short table last.
#   bash DEST/gpu_suite.sh sanitize DEST   (on the GPU machine) the cuda tests under
#        compute-sanitizer memcheck.
#   bash DEST/gpu_suite.sh profile DEST   (on the GPU machine) Nsight Compute over
#        `bench_cuda --profile` (prefill 2048, eager decode b1 and b64): every kernel's
#        time, summed per phase and kernel by scripts/ncu_split.py (ncu.csv and the
#        table in $OUT).
#   bash DEST/gpu_suite.sh timeline DEST   (on the GPU machine) `bench_cuda --trace`: the
#        same phases recorded with CUPTI, kernels not serialized: per phase the span from
#        the first kernel's start to the last one's end against the sum of the kernel
#        times, i.e. how much of a step the GPU sits idle between kernels, and the
#        largest gaps with the kernels around them (scripts/nsys_gaps.py; CSVs in $OUT).
set -u

stage() {
    local build=$1 dest=$2 src
    src=$(cd "$(dirname "$0")/.." && pwd)
    rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/lib" "$dest/src/tests" "$dest/src/configs/models" "$dest/deb"
    for b in tests/test_cuda_ops tests/test_cuda_golden tests/test_cuda_engine tests/test_cuda_swap tests/test_cuda_mmin tests/test_forward_mixed \
        tests/test_cuda_pfout tests/test_cuda_fp8w bench/cuda/bench_cuda; do
        strip -o "$dest/bin/$(basename "$b")" "$build/$b" || return 1   # the carry is 64 MiB
    done
    # one archive with a dictionary that spans the binaries: they share the same ~18 MB
    # of CUDA device code, so the five pack into little more than one (the carry is 64 MiB)
    tar -C "$dest" -cf - bin | xz -T1 -9 > "$dest/bin.tar.xz" && rm -rf "$dest/bin" || return 1
    cp "$0" "$dest/gpu_suite.sh"
    cp "$src/scripts/ncu_split.py" "$src/scripts/nsys_gaps.py" "$dest/"
    cp -r "$src/tests/data" "$dest/src/tests/"
    mkdir -p "$dest/src/tests/golden" && cp "$src/tests/golden/make_goldens.py" "$dest/src/tests/golden/"
    cp -r "$src/configs/models/llama-3.1-8b" "$dest/src/configs/models/"
    # Debian runtime libraries the device lacks (cJSON; add more here if ldd grows)
    (cd "$dest/deb" && apt-get download libcjson1 >/dev/null) || return 1
    for f in "$dest"/deb/*.deb; do dpkg -x "$f" "$dest/deb/x"; done
    cp -a "$dest"/deb/x/usr/lib/x86_64-linux-gnu/*.so* "$dest/lib/"
    cp -aL /usr/local/lib/libcudart.so.13 "$dest/lib/" 2>/dev/null || true
    # CUPTI for bench_cuda --trace (linked when the toolkit has it)
    ldd "$build/bench/cuda/bench_cuda" | awk '/libcupti/ {print $3}' | xargs -r -I{} cp -aL {} "$dest/lib/"
    rm -rf "$dest/deb"
    git -C "$src" rev-parse --short HEAD > "$dest/COMMIT"
    du -sh "$dest"
}

run() {
    local dir quick="" a
    dir=$(cd "$1" && pwd)
    shift
    for a in "$@"; do
        case "$a" in
        --quick) quick=--quick ;;
        *) echo "run: unknown option $a" >&2; return 2 ;;
        esac
    done
    local out=${OUT:-/tmp/gpu_suite} cub
    mkdir -p "$out"
    device_env "$dir" || return 1
    {
        date -u
        echo "commit $(cat "$dir/COMMIT" 2>/dev/null)"
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
        echo "cublas: ${cub:-not found}"
    } > "$out/env.txt" 2>&1
    cat "$out/env.txt"
    NAMES=() RCS=() SECS=()
    # Goldens of the small safetensors models from the machine's own transformers (the
    # default GGUF is larger than a device call can carry); they come back in $OUT.
    if [ ! -f "$dir/src/tests/data/goldens/tiny-llama.json" ]; then
        suite_step "$dir" "$out" make_goldens 120 env PYTHONUNBUFFERED=1 python3 tests/golden/make_goldens.py \
            --gguf /nonexistent --models-dir "$dir/src/tests/data/models"
        (cd "$dir/src/tests/data" && tar czf "$out/goldens_tiny.tar.gz" goldens/tiny-*.json) 2>/dev/null
    fi
    # limits add up to 595 s (one device call is 600; measured 2026-11-28 on one H200: 120 s
    # in all, test_cuda_ops 48 and bench_cuda 35 the longest); the benchmarks before the optional steps
    suite_step "$dir" "$out" test_cuda_ops 80 "$dir/bin/test_cuda_ops"
    suite_step "$dir" "$out" test_cuda_golden 30 "$dir/bin/test_cuda_golden"
    suite_step "$dir" "$out" test_cuda_engine 30 "$dir/bin/test_cuda_engine"
    suite_step "$dir" "$out" test_cuda_swap 30 "$dir/bin/test_cuda_swap"
    suite_step "$dir" "$out" test_cuda_mmin 30 "$dir/bin/test_cuda_mmin"
    suite_step "$dir" "$out" test_cuda_pfout 30 "$dir/bin/test_cuda_pfout"
    suite_step "$dir" "$out" test_cuda_fp8w 35 "$dir/bin/test_cuda_fp8w"
    suite_step "$dir" "$out" test_forward_mixed 30 env PD_TEST_BACKEND=cuda "$dir/bin/test_forward_mixed"
    suite_step "$dir" "$out" bench_cuda 90 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" $quick
    # prefill attention alone: old WMMA kernel vs fa2 (TFLOP/s beside the GEMM rate), then
    # the engine's 2048-token prefill with each
    suite_step "$dir" "$out" bench_prefill_attn 45 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" \
        --prefill-attn
    # the decode attention variants (the copy ceiling and a sweep, no model)
    suite_step "$dir" "$out" bench_attn 30 "$dir/bin/bench_cuda" --attn-only
    # decode steps at batch 64 / 256 and contexts 1k-4k beside their roofline (f16, fp8 KV)
    suite_step "$dir" "$out" bench_roofline 45 "$dir/bin/bench_cuda" "$dir/src/configs/models/llama-3.1-8b" --roofline
    # the non-default switches in processes of their own (a fault there spoils nothing
    # above): graphs vs eager with the decode GEMVs without PDL and with weights in L1,
    # the fa2 prefill kernel with 8-warp CTAs, the tensor-core decode attention cases
    suite_step "$dir" "$out" test_cuda_engine_nopdl 30 env PD_CUDA_GEMV_PDL=0 PD_CUDA_GEMV_NOALLOC=0 "$dir/bin/test_cuda_engine"
    suite_step "$dir" "$out" test_cuda_engine_fa2w8 30 env PD_CUDA_ATTN_PREFILL_WARPS=8 "$dir/bin/test_cuda_engine"
    suite_step "$dir" "$out" test_attn_tc 25 env PD_TEST_ATTN_TC=1 "$dir/bin/test_cuda_ops"
    echo
    echo "== gpu_suite: $(head -1 "$out/env.txt"), commit $(cat "$dir/COMMIT" 2>/dev/null) =="
    local f
    for f in test_cuda_ops test_cuda_golden test_cuda_engine test_cuda_swap test_cuda_mmin test_forward_mixed \
        test_cuda_pfout test_cuda_engine_nopdl test_cuda_engine_fa2w8 test_attn_tc; do
        echo "-- $f"
        grep -h -E 'passed, |outside tolerance|check failed|decode attention cases|prefill attention cases|tokens: graphs|draws =|argmax|cuda swap:|rel err|outside 1 ulp|matmul_mm|16-bit outputs|^FAIL|^not ok' \
            "$out/$f.log" 2>/dev/null | head -12
    done
    sed -n '/^== bench_cuda/,/^JSON /p' "$out/bench_cuda.log" | grep -v '^JSON '
    grep -E '^==|^summary|^best|^check|^  (f32|f16|fp8)' "$out/bench_attn.log" | head -14
    sed -n '/^== bench_cuda --prefill-attn/,/^JSON_PREFILL_ENGINE /p' "$out/bench_prefill_attn.log" | grep -v '^JSON'
    sed -n '/^== bench_cuda --roofline/,/^JSON_ROOFLINE /p' "$out/bench_roofline.log" | grep -v '^JSON'
    grep -h '^JSON' "$out/bench_cuda.log" "$out/bench_attn.log" "$out/bench_prefill_attn.log" "$out/bench_roofline.log"
    printf '%-22s %-8s %6s\n' step result seconds
    local i r st
    for i in "${!NAMES[@]}"; do
        r=${RCS[$i]} st=PASS
        [ "$r" = 77 ] && st=SKIP
        [ "$r" != 0 ] && [ "$r" != 77 ] && st="FAIL($r)"
        printf '%-22s %-8s %6s\n' "${NAMES[$i]}" "$st" "${SECS[$i]}"
    done
}

device_env() { # device_env DIR: unpack the binaries; libraries and paths for them
    unpack_bins "$1" || return 1
    # cuBLAS: the machine's own (CUDA toolkit or the Python wheels)
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH="$1/lib:${cub:+$(dirname "$cub"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PD_SOURCE_DIR="$1/src" NCCL_NVLS_ENABLE=0
}

# Nsight Compute over bench_cuda --profile; the per-phase table last.
profile() {
    local dir out ncu cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_suite}
    mkdir -p "$out"
    device_env "$dir" || return 1
    ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
    [ -n "$ncu" ] || { echo "profile: no ncu on this machine" >&2; return 1; }
    (cd "$dir/src" && timeout 400 "$ncu" --profile-from-start off --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --csv "$dir/bin/bench_cuda" configs/models/llama-3.1-8b --profile) \
        > "$out/ncu.csv" 2> "$out/ncu.err"
    echo "ncu rc $? ($(wc -l < "$out/ncu.csv") lines)"
    tail -3 "$out/ncu.err"
    python3 "$dir/ncu_split.py" "$out/ncu.csv" | tee "$out/ncu_split.md"
}

# The kernel timeline of bench_cuda --trace (CUPTI, built in; Nsight Systems is not on
# the GPU machine): the idle time and gaps per phase last.
timeline() {
    local dir out cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_suite}
    mkdir -p "$out"
    device_env "$dir" || return 1
    (cd "$dir/src" && timeout 300 "$dir/bin/bench_cuda" configs/models/llama-3.1-8b --trace "$out") > "$out/trace.log" 2>&1
    echo "bench_cuda --trace rc $?"
    tail -3 "$out/trace.log"
    python3 "$dir/nsys_gaps.py" "$out"/tl_cuda_gpu_trace.csv "$out"/tl_cuda_api_trace.csv | tee "$out/nsys_gaps.md"
}

unpack_bins() { # unpack_bins DIR: the staged binaries, once
    [ -d "$1/bin" ] && return 0
    tar -C "$1" -xJf "$1/bin.tar.xz" || { echo "gpu_suite: cannot unpack $1/bin.tar.xz" >&2; return 1; }
}

suite_step() { # suite_step DIR OUT NAME TIMEOUT COMMAND...: run from DIR/src, log OUT/NAME.log
    local dir=$1 out=$2 name=$3 limit=$4 t0=$SECONDS
    shift 4
    (cd "$dir/src" && timeout "$limit" "$@") > "$out/$name.log" 2>&1
    RCS+=($?)
    NAMES+=("$name")
    SECS+=($((SECONDS - t0)))
}

# The cuda tests under compute-sanitizer (memcheck, then racecheck on the ops test).
sanitize() {
    local dir out cs cub
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_suite}
    mkdir -p "$out"
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    device_env "$dir" || return 1
    for t in test_cuda_ops test_cuda_golden test_cuda_engine test_cuda_swap test_cuda_fp8w; do
        (cd "$dir/src" && timeout 250 "$cs" --tool memcheck --error-exitcode 99 "$dir/bin/$t") > "$out/memcheck_$t.log" 2>&1
        echo "memcheck $t: rc $? ($(grep -c 'Invalid\|ERROR SUMMARY' "$out/memcheck_$t.log") summary/invalid lines)"
        grep 'ERROR SUMMARY' "$out/memcheck_$t.log"
    done
}

# One command with the staged binaries and libraries (cwd: the staged source tree), e.g.
# `gpu_suite.sh exec DIR bin/bench_cuda src/configs/models/llama-3.1-8b`: a single A/B
# without the whole suite's device time.
exec_one() {
    local dir cub
    dir=$(cd "$1" && pwd)
    shift
    device_env "$dir" || return 1
    (cd "$dir" && "$@")
}

case "${1:-}" in
stage) shift; stage "$@" ;;
exec) shift; exec_one "$@" ;;
run) shift; run "$@" ;;
sanitize) shift; sanitize "$@" ;;
profile) shift; profile "$@" ;;
timeline) shift; timeline "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DIR [--quick] | exec DIR CMD... | sanitize DIR | profile DIR | timeline DIR" >&2; exit 2 ;;
esac
