#!/usr/bin/env bash
# bench_proxy_host.sh - the proxy overhead benchmark (bench/bench_proxy.py, C upstream)
# on a bigger, idle host such as the GPU machine's CPUs (no GPU is used), where nothing
# is built: binaries are staged here, and the run there only needs bash and python3.
#
#   bench/bench_proxy_host.sh stage BUILD_DIR DEST   (here) copy pdserve-proxy,
#       pdserve-bench, the C upstream (compiled), a baseline pdserve-proxy built from
#       $PX_BASELINE_REV (default 3b90e0d: the proxy before the relay rework; it is
#       compiled against BUILD_DIR's libpd_common.a; skipped with a warning if that
#       fails), bench_proxy.py, this script and the libraries ldd names that a bare
#       Linux lacks (DEST/lib.tar.xz) into DEST (a few MiB).  DEST travels with the
#       device call (name it in carry when it is git-ignored).
#   bash DEST/bench_proxy_host.sh run DEST           (there) the benchmark; logs and result
#       JSONs in $OUT (default ./bench_proxy_out); the tables last.  About 3 minutes on
#       16 idle cores; every step has a timeout and a failing step does not stop the rest.
#   OUT=dir bench/bench_proxy_host.sh [BUILD_DIR]    stage into a temporary folder from
#       BUILD_DIR (default build/) and run from it, here.
#
# Steps of `run` (each: direct, then through the new proxy, then through the baseline
# proxy, the order alternating between repeats; "added" = via proxy - direct, same run):
#   1. 1 and 64 streams, once;
#   2. 256, 1,000 and 2,000 streams, twice each;
#   3. 1,000 and 2,000 streams: --relay-threads 1 against --relay-threads 4 (both new);
#   4. on 16 or more CPUs: 1, 64 and 1,000 streams twice with the bench client, the
#      upstream and the proxies pinned to disjoint cores (bench_proxy.py --pin; client
#      on the first half, upstream on 2 cores, the proxies on the rest), so the tail
#      measures the proxy and not the three processes competing for the same cores;
#   5. (PX_STEPS=pinwarm, not in the default) 1,000 streams pinned, each path warmed by one
#      unmeasured run at that concurrency first (bench_proxy.py --warm-level: the proxy's
#      upstream connections already open), to separate connection set-up from the rest.
#   6. (PX_STEPS=steady, not in the default) 64 and 1,000 streams pinned and warmed, with
#      Poisson arrivals at the rate that keeps that many streams in flight (--steady)
#      instead of one burst: the proxy's steady-state overhead at that concurrency.
# PX_STEPS="low high threads pinned" (the default) picks steps.
# (A real pdserve-decode upstream is not part of it: the staged set carries no model,
# and a node's own variance hides the proxy; bench_proxy.py --upstream node does it.)
set -u

stage() {
    local build=$1 dest=$2 src tmp b name real n size rev
    src=$(cd "$(dirname "$0")/.." && pwd)
    build=$(cd "$build" && pwd) || return 1
    rev=${PX_BASELINE_REV:-3b90e0d}
    rm -rf "$dest" && mkdir -p "$dest/bin" || return 1
    dest=$(cd "$dest" && pwd)
    for b in proxy/pdserve-proxy bench/pdserve-bench; do
        [ -x "$build/$b" ] || { echo "stage: $build/$b is not built" >&2; return 1; }
        strip -o "$dest/bin/$(basename "$b")" "$build/$b" || return 1
    done
    cc -O2 -o "$dest/bin/bench_proxy_upstream" "$src/bench/bench_proxy_upstream.c" || return 1
    # the baseline proxy: the sources of $rev, compiled like the build compiles the proxy
    tmp=$(mktemp -d) || return 1
    if git -C "$src" archive "$rev" proxy | tar -x -C "$tmp" &&
        cc -O2 -DNDEBUG -std=gnu11 -DPD_GIT_REV="\"$rev\"" -DPD_VERSION="\"baseline\"" -I"$src/common" \
            $(pkg-config --cflags libcjson libcurl 2>/dev/null) -o "$dest/bin/pdserve-proxy-baseline" \
            "$tmp"/proxy/*.c "$build/common/libpd_common.a" -lzmq -lcjson -lmicrohttpd -lyaml -lgnutls -lcurl \
            -ldl -lm -lpthread 2>"$tmp/cc.log"; then
        strip "$dest/bin/pdserve-proxy-baseline"
        echo "$rev" > "$dest/BASELINE"
    else
        echo "stage: no baseline proxy from $rev (the run measures the new proxy only):" >&2
        tail -5 "$tmp/cc.log" >&2
        rm -f "$dest/bin/pdserve-proxy-baseline"
    fi
    rm -rf "$tmp"
    cp "$src/bench/bench_proxy.py" "$src/bench/bench_proxy_host.sh" "$dest/"
    # runtime libraries: all ldd resolves except what every Linux has
    tmp=$(mktemp -d) || return 1
    mkdir -p "$tmp/lib"
    for b in "$dest"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
        while read -r name real; do
            case "$name" in
            ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) continue ;;
            libgcc_s.so*|libstdc++.so*|linux-vdso*) continue ;;
            esac
            cp -L "$real" "$tmp/lib/$name" || echo "stage: cannot copy $real" >&2
        done
    n=$(find "$tmp/lib" -type f | wc -l)
    tar -C "$tmp" -cJf "$dest/lib.tar.xz" lib || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    git -C "$src" rev-parse --short HEAD > "$dest/COMMIT" 2>/dev/null
    size=$(du -sb "$dest" | cut -f1)
    echo "staged $dest: $n libraries, $((size / 1024)) KiB"
}

run() {
    local dest=$1 bl=() st py
    dest=$(cd "$dest" && pwd) || return 1
    OUT=${OUT:-$PWD/bench_proxy_out}
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    local rt
    rt=$(mktemp -d) || return 1
    tar -C "$rt" -xJf "$dest/lib.tar.xz" || echo "run: cannot unpack lib.tar.xz" | tee -a "$OUT/host.txt"
    export LD_LIBRARY_PATH="$rt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # 2,000 streams: a client, proxy and upstream socket each, twice over
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
    py=$(command -v python3 || command -v python)
    {
        echo "host: $(nproc) CPUs,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cut -d' ' -f1 /proc/loadavg), open files $(ulimit -n)"
        echo "commit: $(cat "$dest/COMMIT" 2>/dev/null), baseline: $(cat "$dest/BASELINE" 2>/dev/null || echo none)"
    } | tee "$OUT/host.txt"
    for b in pdserve-proxy pdserve-bench; do
        if ldd "$dest/bin/$b" | grep -q "not found"; then
            echo "run: $b has unresolved libraries:" | tee -a "$OUT/host.txt"
            ldd "$dest/bin/$b" | grep "not found" | tee -a "$OUT/host.txt"
        fi
    done
    [ -x "$dest/bin/pdserve-proxy-baseline" ] && bl=(--baseline-proxy "$dest/bin/pdserve-proxy-baseline")
    local common=(--build "$dest" --proxy-bin "$dest/bin/pdserve-proxy" --bench-bin "$dest/bin/pdserve-bench"
                  --upstream-bin "$dest/bin/bench_proxy_upstream"
                  --commit "$(cat "$dest/COMMIT" 2>/dev/null || echo unknown)")
    step() { # step NAME TIMEOUT ARGS...
        local name=$1 to=$2 t0=$SECONDS
        shift 2
        timeout "$to" "$py" "$dest/bench_proxy.py" "${common[@]}" --label "bench_proxy_host.sh $name" \
            --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1
        st=$?
        echo "step $name: exit $st, $((SECONDS - t0)) s" | tee -a "$OUT/host.txt"
        [ $st = 0 ] || tail -5 "$OUT/$name.txt" | sed 's/^/    /'
    }
    local steps=" ${PX_STEPS:-low high threads pinned} " ncpu half
    ncpu=$(nproc)
    half=$((ncpu / 2))
    [[ $steps == *" low "* ]] && step low 75 --concurrency 1,64 "${bl[@]}"
    [[ $steps == *" high "* ]] && step high 110 --concurrency 256,1000,2000 --repeat 2 "${bl[@]}"
    [[ $steps == *" threads "* ]] && step threads 50 --concurrency 1000,2000 --proxy-args "--relay-threads 1" \
        --baseline-proxy "$dest/bin/pdserve-proxy" --baseline-args "--relay-threads 4"
    if [[ $steps == *" pinned "* ]] && [ "$ncpu" -ge 16 ] && command -v taskset >/dev/null; then
        step pinned 110 --concurrency 1,64,1000 --repeat 2 --pin "0-$((half - 1)):$half-$((half + 1)):$((half + 2))-$((ncpu - 1))" \
            "${bl[@]}"
    fi
    if [[ $steps == *" steady "* ]] && [ "$ncpu" -ge 16 ] && command -v taskset >/dev/null; then
        step steady 150 --concurrency 64,1000 --repeat 2 --warm-level --steady \
            --pin "0-$((half - 1)):$half-$((half + 1)):$((half + 2))-$((ncpu - 1))" "${bl[@]}"
    fi
    if [[ $steps == *" pinwarm "* ]] && [ "$ncpu" -ge 16 ] && command -v taskset >/dev/null; then
        step pinwarm 120 --concurrency 1000 --repeat 2 --warm-level \
            --pin "0-$((half - 1)):$half-$((half + 1)):$((half + 2))-$((ncpu - 1))" "${bl[@]}"
    fi
    rm -rf "$rt"
    echo "== proxy overhead, C upstream (added = via proxy - direct, same run; 'baseline' rows: the proxy at $(cat "$dest/BASELINE" 2>/dev/null || echo -))"
    grep -h '^[|#]' "$OUT/low.txt" "$OUT/high.txt" 2>/dev/null | awk '!/^\|---|^\| conc/ || !seen[$0]++'
    echo "== pinned: client, upstream and proxies on disjoint cores"
    grep -h '^[|#]' "$OUT/pinned.txt" 2>/dev/null
    echo "== pinned, warmed, steady Poisson arrivals"
    grep -h '^[|#]' "$OUT/steady.txt" 2>/dev/null
    echo "== pinned, each level warmed first"
    grep -h '^[|#]' "$OUT/pinwarm.txt" 2>/dev/null
    echo "== --relay-threads 1 (plain rows) against 4 ('baseline' rows)"
    grep -h '^|' "$OUT/threads.txt" 2>/dev/null | grep -v -- '^|---'
    return 0
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
-h|--help) sed -n '2,30p' "$0" ;;
*)
    top=$(cd "$(dirname "$0")/.." && pwd)
    d=$(mktemp -d "${TMPDIR:-/tmp}/bench_proxy_stage.XXXXXX") || exit 1
    stage "${1:-$top/build}" "$d/stage" && run "$d/stage"
    rc=$?
    rm -rf "$d"
    exit $rc
    ;;
esac
