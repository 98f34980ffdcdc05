#!/bin/bash
# gpu_kvx.sh - kvxfer's GPU paths on the GPU machine, from binaries built on the
# development machine (nothing is built there): test_cuda_kvx (CUDA IPC, forced NCCL,
# UCX host staging; two processes, GPU 0 -> GPU 1) and bench_kvxfer --gpu (each path
# beside the peer-copy and pinned-copy ceilings measured in the same run).
#
#   scripts/gpu_kvx.sh stage BUILD_DIR DEST   (here) copy the two binaries, this script
#        and every shared library they load that is not glibc, libstdc++/libgcc, the
#        CUDA driver or NCCL (the machine has those) into DEST (< 20 MiB), plus UCX's
#        transport modules.  DEST travels with the device call (name it in `carry`
#        when it is git-ignored).
#   bash DEST/gpu_kvx.sh run DEST   (on the GPU machine) every step under `timeout`,
#        going on after a failing step; full logs to $OUT (or /tmp/gpu_kvx); a short
#        table last.  About 3 minutes; at most ~8 with every step timing out.
set -u

EXCLUDE='/(ld-linux[^/]*|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|libcuda|libnccl|libcublas|libcublasLt)\.so'

stage() {
    local build=$1 dest=$2 lib
    rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/lib/ucx" || return 1
    cp "$build/tests/test_cuda_kvx" "$build/bench/kvxfer/bench_kvxfer" "$dest/bin/" || return 1
    cp "$0" "$dest/gpu_kvx.sh"
    for lib in $(ldd "$dest"/bin/* | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u); do
        if echo "$lib" | grep -Eq "$EXCLUDE"; then
            continue
        fi
        cp -L "$lib" "$dest/lib/" || return 1
    done
    # UCX loads its transports (cma, ib, rdmacm) from a module directory
    local ucs
    ucs=$(ldd "$dest/bin/bench_kvxfer" | awk '/libucs\.so/ {print $3}')
    if [ -n "$ucs" ] && [ -d "$(dirname "$ucs")/ucx" ]; then
        cp -L "$(dirname "$ucs")"/ucx/*.so.0 "$dest/lib/ucx/" 2>/dev/null
    fi
    git -C "$(dirname "$0")/.." rev-parse --short HEAD > "$dest/COMMIT" 2>/dev/null
    du -sh "$dest"
}

# step NAME TIMEOUT_S COMMAND...: run with a timeout, log to $out/NAME.log, record result
step() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    tail -n 25 "$out/$name.log"
    names+=("$name")
    rcs+=("$rc")
    secs+=($((SECONDS - t0)))
}

# After a failed (not timed out) test step, and while time is left: once more with
# kvxfer's info logs and NCCL's, into NAME.verbose.log.
verbose_rerun() {
    local name=$1 rc=${rcs[${#rcs[@]}-1]}
    shift
    if [ "$rc" = 0 ] || [ "$rc" = 77 ] || [ "$rc" = 124 ] || [ "$rc" = 137 ] || [ "$SECONDS" -gt 400 ]; then
        return
    fi
    echo "   (rerun with logs: $name.verbose.log)"
    KVX_TEST_VERBOSE=1 NCCL_DEBUG=INFO timeout -k 5 45 "$@" > "$out/$name.verbose.log" 2>&1
}

run() {
    local dir
    dir=$(cd "$1" && pwd)
    out=${OUT:-/tmp/gpu_kvx}
    mkdir -p "$out"
    names=() rcs=() secs=()
    export LD_LIBRARY_PATH="$dir/lib:/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    # NCCL is the machine's own; look further when it is not on the usual paths
    if ldd "$dir/bin/bench_kvxfer" | grep -q 'libnccl.*not found'; then
        local n
        n=$(timeout 30 find /usr /opt -name 'libnccl.so.2*' 2>/dev/null | head -1)
        [ -n "$n" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$n")"
    fi
    export UCX_MODULE_DIR="$dir/lib/ucx" UCX_MEM_MMAP_HOOK_MODE=none
    export NCCL_NVLS_ENABLE=0 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    {
        date -u
        echo "commit $(cat "$dir/COMMIT" 2>/dev/null)"
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
        nvidia-smi topo -m
        echo "--- libraries not found:"
        ldd "$dir"/bin/* | grep 'not found' || echo none
        echo "--- nccl: $(ldd "$dir/bin/bench_kvxfer" | awk '/libnccl/ {print $3}')"
    } > "$out/env.txt" 2>&1
    cat "$out/env.txt"
    cd "$dir" || return 1
    # the figures first: each block size is its own run, so one hang costs one half.
    # 2 MiB: one pull in flight (K=1) and four (K=4, four requests at once, as in
    # serving), beside the ceilings; ucx = UCX's own transport choice, ucx-sm =
    # UCX_TLS=sm,self.  Rows are printed as they finish, so a timeout keeps them.
    step bench_2MiB 60 "$dir/bin/bench_kvxfer" --gpu --total-mib 256 --iters 5 --block-kib 2048 \
        --concurrency 1,4,8 --gpu-modes ipc,ipc-batch,nccl,ucx,ucx-sm
    step bench_16KiB 60 "$dir/bin/bench_kvxfer" --gpu --total-mib 256 --iters 5 --block-kib 16 \
        --gpu-modes ipc,ipc-batch,nccl,ucx,ucx-sm
    # correctness, one connector path per step
    for m in ipc ipc-batch nccl ucx; do
        step "test_$m" 75 env KVX_TEST_MODES=$m "$dir/bin/test_cuda_kvx"
        verbose_rerun "test_$m" env KVX_TEST_MODES=$m "$dir/bin/test_cuda_kvx"
    done
    # NCCL over its socket transport (what crosses hosts), on one host
    step test_nccl_socket 90 env KVX_TEST_MODES=nccl NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 \
        NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo "$dir/bin/test_cuda_kvx"
    echo
    echo "== gpu_kvx: $(head -1 "$out/env.txt"), commit $(cat "$dir/COMMIT" 2>/dev/null)"
    grep -h '^ceilings' "$out"/bench_*.log
    grep -h -E '^mode ' "$out"/bench_2MiB.log 2>/dev/null | head -1
    grep -h -E '^(ipc|ipc-batch|ipc-memcpy|nccl|nccl-1msg|ucx|ucx-sm) ' "$out"/bench_*.log
    # where a read's time goes (connector's split) and which UCX transport ran
    grep -h -E '^kvx nccl timing' "$out"/bench_*.log | cut -c1-150
    grep -h -E '^kvx ucx ep' "$out"/bench_*.log | sort -u | cut -c1-200
    printf '%-18s %-9s %7s  %s\n' step result seconds "last line"
    for i in "${!names[@]}"; do
        local r=${rcs[$i]} s=PASS
        [ "$r" = 77 ] && s=SKIP
        [ "$r" = 124 ] || [ "$r" = 137 ] && s=TIMEOUT
        [ "$r" != 0 ] && [ "$r" != 77 ] && [ "$s" = PASS ] && s="FAIL($r)"
        printf '%-18s %-9s %7s  %s\n' "${names[$i]}" "$s" "${secs[$i]}" \
            "$(grep -v '^bench_kvxfer_gpu' "$out/${names[$i]}.log" | tail -n 1 | cut -c1-70)"
    done
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DEST" >&2; exit 2 ;;
esac
