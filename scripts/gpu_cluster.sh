#!/bin/bash
# gpu_cluster.sh - goodput of disaggregated serving on the two-GPU machine: one prefill
# node (GPU 0) + one decode node (GPU 1) behind pdserve-proxy ("1p1d"), against two
# single-node replicas (a decode node alone on each GPU) behind the same proxy with no
# prefill pool ("2rep"). Llama-3.1-8B shape with dummy weights; nothing is built there.
#
#   scripts/gpu_cluster.sh stage BUILD_DIR DEST   (here) strip and copy pdserve-prefill,
#        -decode, -proxy, -bench, this script and its helper (bench/scripts/gpu_cluster.py),
#        the model configs, the Llama 3 tokenizer and every Debian runtime library ldd names
#        that the GPU machine lacks (packed in DEST/lib.tar.xz; UCX's transport modules
#        included; the binaries in DEST/bin.tar.xz) into DEST (< 30 MiB). DEST travels with
#        the device call.
#   bash DEST/gpu_cluster.sh run DEST [--quick]   (there) the benchmark: logs, result JSONs
#        and a report in $OUT (default /tmp/gpu_cluster), a short table last. ~7 min.
#   bash DEST/gpu_cluster.sh run DEST --cpu-smoke  the same flow on the CPU backend with a
#        small dummy model (same tokenizer and vocabulary), short workloads: < 2 min.
#   scripts/gpu_cluster.sh smoke BUILD_DIR         stage into a temporary folder and run the
#        CPU smoke from it (what tests and developers run here).
#
# Flow of `run`: (1) 1p1d: start both nodes with kv_connector NcclConnector (same host:
# CUDA IPC), probe one request through the proxy and check on the decode node's /metrics
# that KV bytes arrived without a failed load; if anything fails, restart both with
# UcxConnector (host-staged) over shared memory, then with UCX's default transports, and
# probe again (the choice is logged and in the table); then two unloaded runs and each
# workload at each rate. (2) 2rep: the same.
# Workloads (pdserve-bench, random prompts of exact length, ignore_eos, Poisson arrivals):
#   ph   prefill-heavy  4000 in / 200 out   SLO TTFT 1000 ms, TPOT 25 ms
#   bal  balanced       1000 in / 1000 out  SLO TTFT  500 ms, TPOT 25 ms
# (docs/bench.md explains the choice). Environment overrides: GP_RATES_PH, GP_RATES_BAL,
# Setup "tput" (GP_SETUPS=tput): whole-engine throughput of one decode node on GPU 0
# (issue 6): GP_TP_N requests of GP_TP_IN/GP_TP_OUT tokens (1000/1000), at most GP_TP_CONC
# in flight, once per KV cache dtype in GP_TP_KV ("fp8 auto"), cache sized by
# --gpu-memory-utilization GP_TP_UTIL; output tokens/s in the step table.
# GP_N_PH, GP_N_BAL, GP_SLO_PH, GP_SLO_BAL ("ttft:MS tpot:MS"), GP_BLOCKS (KV blocks per
# node), GP_CONNECTORS ("NcclConnector UcxConnector:sm,self UcxConnector", NAME[:UCX_TLS]),
# GP_BUDGET_S (wall budget: runs that
# would end after it are skipped), GP_LOAD_TIMEOUT_S, GP_SETUPS ("1p1d 2rep"); to rerun
# with another shape: GP_MODEL (a config folder; its vocab_size must be the Llama 3
# tokenizer's 128256, which stays), GP_DEVICE (cuda), GP_IN_PH, GP_OUT_PH, GP_IN_BAL,
# GP_OUT_BAL; GP_NODE_EXTRA: options added to every node.
set -u

stage() {
    local build=$1 dest=$2 src tmp b name real n size
    src=$(cd "$(dirname "$0")/.." && pwd)
    build=$(cd "$build" && pwd) || return 1
    rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/models" "$dest/tok" || return 1
    dest=$(cd "$dest" && pwd)
    for b in prefill/pdserve-prefill decode/pdserve-decode proxy/pdserve-proxy bench/pdserve-bench; do
        [ -x "$build/$b" ] || { echo "stage: $build/$b is not built" >&2; return 1; }
        strip -o "$dest/bin/$(basename "$b")" "$build/$b" || return 1
    done
    cp "$src/scripts/gpu_cluster.sh" "$dest/gpu_cluster.sh"
    cp "$src/bench/scripts/gpu_cluster.py" "$dest/gpu_cluster.py"
    cp -r "$src/configs/models/llama-3.1-8b" "$src/configs/models/smollm2-135m" "$dest/models/"
    cp "$src/tests/data/tokenizers/llama3.tar.xz" "$dest/tok/"
    # Runtime libraries: everything ldd resolves except what every Linux has (glibc, the
    # C++ runtime) and what the GPU machine has in its own, matching version (the CUDA
    # driver, cuBLAS, NCCL). Copied under the name the binaries ask for.
    tmp=$(mktemp -d) || return 1
    mkdir -p "$tmp/lib/ucx"
    for b in "$dest"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
        while read -r name real; do
            case "$name" in
            ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) continue ;;
            libgcc_s.so*|libstdc++.so*|libcuda.so*|libcublas*|libnccl*|linux-vdso*) continue ;;
            esac
            cp -L "$real" "$tmp/lib/$name" || echo "stage: cannot copy $real" >&2
        done
    # UCX loads its transports (cma, ib, rdmacm) from a folder beside libucs; the GPU
    # machine's own UCX 1.16 modules must not be mixed with the carried Debian UCX.
    if [ -f "$tmp/lib/libucs.so.0" ]; then
        for real in /usr/lib/x86_64-linux-gnu/ucx/libuct_*.so.0; do
            [ -e "$real" ] && cp -L "$real" "$tmp/lib/ucx/"
        done
    fi
    n=$(find "$tmp/lib" -type f | wc -l)
    # self-check: every binary resolves with only the carried folder (+ this machine's
    # base libraries and CUDA, which the GPU machine has too)
    for b in "$dest"/bin/*; do
        if LD_LIBRARY_PATH="$tmp/lib" ldd "$b" | grep -q "not found"; then
            echo "stage: $b: unresolved libraries:" >&2
            LD_LIBRARY_PATH="$tmp/lib" ldd "$b" | grep "not found" >&2
            rm -rf "$tmp"
            return 1
        fi
    done
    tar -C "$tmp" -cJf "$dest/lib.tar.xz" lib || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    # The binaries carry the CUDA kernels (~18 MB of device code each, the same in the
    # prefill and decode binaries): packed with a dictionary that spans both, so the
    # second costs almost nothing; `run` unpacks them.
    tar -C "$dest" -cf - bin | xz -T1 -9 > "$dest/bin.tar.xz" && rm -rf "$dest/bin" || return 1
    git -C "$src" rev-parse --short HEAD > "$dest/COMMIT" 2>/dev/null
    size=$(du -sb "$dest" | cut -f1)
    echo "staged $dest: $n libraries, $((size / 1024)) KiB"
    if [ "$size" -gt $((30 * 1024 * 1024)) ]; then
        echo "stage: $dest is over 30 MiB" >&2
        return 1
    fi
}

# ---------------------------------------------------------------------------------
# run-time state
PIDS=()        # every process started (nodes, proxy)
PENDING=()     # the bench run in flight: what bench_finish records
NAMES=()
STEPS=()       # "name|result|seconds|note" for the final table
WATCHDOG=""

log() { echo "[gpu_cluster $(date -u +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$OUTD/steps.log"; }

step() { STEPS+=("$1|$2|$3|${4:-}"); log "step $1: $2 (${3}s) ${4:-}"; }

start_proc() { # start_proc NAME GPU CMD...  (GPU "-" = no CUDA_VISIBLE_DEVICES)
    local name=$1 gpu=$2
    shift 2
    echo "+ [$name gpu=$gpu] $*" >> "$OUTD/commands.txt"
    if [ "$gpu" = "-" ]; then
        "$@" > "$OUTD/$name.log" 2>&1 &
    else
        CUDA_VISIBLE_DEVICES=$gpu "$@" > "$OUTD/$name.log" 2>&1 &
    fi
    PIDS+=($!)
    NAMES+=("$name")
    echo "$!" >> "$OUTD/pids"
    LAST_PID=$!
}

stop_all() { # TERM every process, KILL what is left after 15 s
    local p i
    [ ${#PIDS[@]} -eq 0 ] && return 0
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 1 30); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
    NAMES=()
}

bench_wait() { # wait for the bench started last; `wait` (unlike a foreground child) lets
    # a TERM to this script run its trap at once
    BENCH_PID=$!
    wait "$BENCH_PID"
    rc=$?
    BENCH_PID=""
}

on_exit() {
    # a bench in flight gets SIGINT: it stops sending and writes its table and JSON for
    # the requests so far (exit 130), which the report then includes
    if [ -n "${BENCH_PID:-}" ]; then
        kill -INT "$BENCH_PID" 2>/dev/null   # timeout passes it on to pdserve-bench
        local i
        for i in $(seq 1 20); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$BENCH_PID" 2>/dev/null
        bench_finish 130
    fi
    stop_all
    # interrupted (TERM from an outer timeout, Ctrl-C): still print what was measured
    [ "${REPORTED:-1}" = 0 ] && final_report
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    [ -n "${RT:-}" ] && rm -rf "$RT"
}

gpu_mem() { # GPU memory in use, into the log (diagnostics: what a loaded node holds)
    [ "$DEVICE" = cuda ] || return 0
    log "GPU memory used: $(timeout 20 nvidia-smi --query-gpu=index,memory.used --format=csv,noheader 2>&1 | tr '\n' ' ')"
}

why() { # the first error line of the given logs, for the step table
    grep -h -m1 -i ' error \|error:\|fatal' "$@" 2>/dev/null | head -1 | cut -c1-160
}

py() { timeout "${PYT:-30}" python3 "$DIR/gpu_cluster.py" "$@"; }

wait_up() { # wait_up PORT TIMEOUT PID...
    local port=$1 to=$2
    shift 2
    py_t=$((to + 10))
    PYT=$py_t py wait "http://127.0.0.1:$port/health" "$to" "$@"
}

node_cmd() { # node_cmd ROLE PORT [KV_CONNECTOR KV_PORT]  -> NODE array
    local role=$1 port=$2 conn=${3:-} kvport=${4:-} bin
    bin=$BIN/pdserve-decode
    [ "$role" = prefill ] && bin=$BIN/pdserve-prefill
    NODE=("$bin" --model "$MODEL" --tokenizer "$TOK" --served-model-name "$SERVED" --device "$DEVICE"
          --port "$port" "${NODE_ARGS[@]}")
    [ "$role" = prefill ] && NODE+=(--max-num-batched-tokens "$PREFILL_MNBT")
    if [ -n "$conn" ]; then
        # a pull that cannot finish fails within 30 s (the probe then sees the failure and
        # the next connector is tried) instead of the default 60
        local kvrole=kv_consumer extra=',"kv_load_failure_policy":"recompute","kv_connector_extra_config":{"transfer_timeout_s":30}'
        [ "$role" = prefill ] && { kvrole=kv_producer; extra=',"kv_connector_extra_config":{"lease_ttl_s":60}'; }
        NODE+=(--kv-transfer-config "{\"kv_connector\":\"$conn\",\"kv_role\":\"$kvrole\",\"kv_ip\":\"127.0.0.1\",\"kv_port\":$kvport,\"kv_buffer_device\":\"$KV_DEV\"$extra}")
    fi
}

start_proxy() { # start_proxy NAME ARGS...
    local name=$1 t0=$SECONDS
    shift
    start_proc "$name" - "$BIN/pdserve-proxy" --port "$PROXY_PORT" --disable-log-requests "$@"
    if ! wait_up "$PROXY_PORT" 30 "$LAST_PID"; then
        step "$name" FAIL $((SECONDS - t0)) "proxy did not start (see $name.log)"
        return 1
    fi
}

probe() { # probe SETUP -> 0 when one request through the proxy succeeds (+ KV moved for 1p1d)
    local setup=$1 t0=$SECONDS rc
    py scrape "http://127.0.0.1:$DECODE_PORT/metrics" "$OUTD/runs/$setup-probe.m0" > /dev/null 2>&1
    PYT=150 py probe "http://127.0.0.1:$PROXY_PORT" "$PROBE_WORDS" 4 > "$OUTD/runs/$setup-probe.txt" 2>&1
    rc=$?
    py scrape "http://127.0.0.1:$DECODE_PORT/metrics" "$OUTD/runs/$setup-probe.m1" > /dev/null 2>&1
    cat "$OUTD/runs/$setup-probe.txt" | tee -a "$OUTD/steps.log"
    if [ $rc = 0 ] && [ "$setup" = 1p1d ]; then
        py kvcheck "$OUTD/runs/$setup-probe.m0" "$OUTD/runs/$setup-probe.m1" >> "$OUTD/runs/$setup-probe.txt" 2>&1
        rc=$?
        tail -1 "$OUTD/runs/$setup-probe.txt" | tee -a "$OUTD/steps.log"
    fi
    step "probe-$setup${CONN:+-$CONN}" "$([ $rc = 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - t0)) \
        "$(tail -1 "$OUTD/runs/$setup-probe.txt" | cut -c1-120)"
    return $rc
}

up_1p1d() { # each entry of CONNECTORS is NAME or NAME:UCX_TLS (the nodes' UCX transports)
    local conn entry tls t0 p1 p2
    for entry in $CONNECTORS; do
        t0=$SECONDS
        conn=${entry%%:*}
        tls=""
        [ "$entry" != "$conn" ] && tls=${entry#*:}
        CONN=$entry
        local lname=${entry//[:,]/-}   # for file and step names
        if [ -n "$tls" ]; then export UCX_TLS=$tls; else unset UCX_TLS; fi
        node_cmd prefill "$PREFILL_PORT" "$conn" "$KV_PORT_P"
        start_proc "1p1d-prefill-$lname" "$GPUS_P" "${NODE[@]}"
        p1=$LAST_PID
        node_cmd decode "$DECODE_PORT" "$conn" "$KV_PORT_D"
        start_proc "1p1d-decode-$lname" "$GPUS_D" "${NODE[@]}"
        p2=$LAST_PID
        unset UCX_TLS
        if ! wait_up "$PREFILL_PORT" "$LOAD_TIMEOUT" "$p1" || ! wait_up "$DECODE_PORT" "$LOAD_TIMEOUT" "$p2"; then
            step "start-1p1d-$lname" FAIL $((SECONDS - t0)) "$(why "$OUTD/1p1d-prefill-$lname.log" "$OUTD/1p1d-decode-$lname.log")"
            stop_all
            continue
        fi
        step "start-1p1d-$lname" PASS $((SECONDS - t0)) "nodes healthy"
        gpu_mem
        if start_proxy "1p1d-proxy-$lname" --prefill "127.0.0.1:$PREFILL_PORT" --decode "127.0.0.1:$DECODE_PORT" && probe 1p1d; then
            log "1p1d: KV over $entry"
            echo "$entry" > "$OUTD/connector.txt"
            DECODE_METRICS=("http://127.0.0.1:$DECODE_PORT/metrics")
            return 0
        fi
        log "1p1d with $entry failed; last lines of the decode node's log:"
        tail -5 "$OUTD/1p1d-decode-$lname.log" | tee -a "$OUTD/steps.log"
        stop_all
    done
    CONN=""
    return 1
}

up_2rep() {
    local t0=$SECONDS p1 p2
    CONN=""
    node_cmd decode "$PREFILL_PORT"
    start_proc 2rep-decode0 "$GPU_A" "${NODE[@]}"
    p1=$LAST_PID
    node_cmd decode "$DECODE_PORT"
    start_proc 2rep-decode1 "$GPU_B" "${NODE[@]}"
    p2=$LAST_PID
    if ! wait_up "$PREFILL_PORT" "$LOAD_TIMEOUT" "$p1" || ! wait_up "$DECODE_PORT" "$LOAD_TIMEOUT" "$p2"; then
        step start-2rep FAIL $((SECONDS - t0)) "$(why "$OUTD/2rep-decode0.log" "$OUTD/2rep-decode1.log")"
        stop_all
        return 1
    fi
    step start-2rep PASS $((SECONDS - t0)) "nodes healthy"
    gpu_mem
    start_proxy 2rep-proxy --decode "127.0.0.1:$PREFILL_PORT" --decode "127.0.0.1:$DECODE_PORT" || { stop_all; return 1; }
    DECODE_METRICS=("http://127.0.0.1:$PREFILL_PORT/metrics" "http://127.0.0.1:$DECODE_PORT/metrics")
    probe 2rep || { stop_all; return 1; }
}

bench_one() { # bench_one SETUP WORKLOAD RATE IN OUT N SLO
    local setup=$1 wl=$2 rate=$3 in=$4 outl=$5 n=$6 slo=$7 name est to t0=$SECONDS rc i mb="" ma="" u seed
    name=$setup-$wl-$rate
    # Fresh prompts in every run (a prompt seen before is a prefix-cache hit: no prefill),
    # the same ones for the same workload and rate in both setups. No ready check and no
    # warm-up: both would send copies of the first prompt (cached for the measured one);
    # the probe and the unloaded runs already warmed the nodes and the proxy.
    seed=$(( $(printf '%s-%s' "$wl" "$rate" | cksum | cut -d' ' -f1) % 2147483647 ))
    # expected wall time: arrivals + the last request's decode + dataset and warm-up
    est=$(awk -v n="$n" -v r="$rate" -v o="$outl" -v s="$TOK_S" 'BEGIN {printf "%d", n / r + o * s + 10}')
    if [ $((SECONDS + est)) -gt "$SETUP_END" ]; then
        step "bench-$name" "SKIP" 0 "over this setup's share of the ${BUDGET}s budget (needs ~${est}s)"
        return 0
    fi
    to=$((est * 3 + 60))
    i=0
    for u in "${DECODE_METRICS[@]}"; do
        py scrape "$u" "$OUTD/runs/$name.m0.$i" > /dev/null 2>&1
        mb="$mb${mb:+,}$OUTD/runs/$name.m0.$i"
        i=$((i + 1))
    done
    read -r -a slos <<< "$slo"
    timeout -s INT -k 10 "$to" "$BIN/pdserve-bench" --base-url "http://127.0.0.1:$PROXY_PORT" \
        --dataset-name random --random-input-len "$in" --random-output-len "$outl" \
        --num-prompts "$n" --request-rate "$rate" --seed "$seed" --num-warmups 0 \
        --goodput "${slos[@]}" --request-timeout $((to - 10)) --ready-check-timeout-sec 0 \
        --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 \
        --save-result --save-detailed --result-dir "$OUTD/results" --result-filename "$name.json" \
        --label "$setup-$wl" --disable-tqdm \
        --metadata "setup=$setup" "workload=$wl" "connector=${CONN:-none}" "device=$DEVICE" \
        > "$OUTD/runs/$name.txt" 2>&1 &
    PENDING=("run" "$setup" "$wl" "$rate" "$name" "$mb" "$t0")
    bench_wait
    bench_finish "$rc"
}

bench_finish() { # bench_finish RC: record the bench run in PENDING (also from the exit
    # trap, so an interrupted run's partial result is in the report)
    local rc=$1 kind setup wl rate name mb t0 i=0 u ma=""
    [ ${#PENDING[@]} -eq 0 ] && return 0
    kind=${PENDING[0]} setup=${PENDING[1]} wl=${PENDING[2]} rate=${PENDING[3]} name=${PENDING[4]}
    mb=${PENDING[5]} t0=${PENDING[6]}
    PENDING=()
    if [ "$kind" = solo ]; then
        printf '%s\t%s\t%s\t%s\n' "$setup" "$wl" "$rc" "$OUTD/results/$name.json" >> "$OUTD/solo.tsv"
        step "bench-$name" "$([ "$rc" = 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - t0)) \
            "$(grep -m1 'Mean TTFT' "$OUTD/runs/$name.txt" | tr -s ' '); $(grep -m1 'Mean TPOT' "$OUTD/runs/$name.txt" | tr -s ' ')"
        return 0
    fi
    for u in "${DECODE_METRICS[@]}"; do
        py scrape "$u" "$OUTD/runs/$name.m1.$i" > /dev/null 2>&1
        ma="$ma${ma:+,}$OUTD/runs/$name.m1.$i"
        i=$((i + 1))
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$setup" "$wl" "$rate" "$rc" "$OUTD/results/$name.json" "$mb" "$ma" >> "$OUTD/runs.tsv"
    step "bench-$name" "$([ "$rc" = 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - t0)) \
        "$(grep -m1 'Request goodput' "$OUTD/runs/$name.txt" | tr -s ' ')"
}

bench_solo() { # bench_solo SETUP WORKLOAD IN OUT N: N requests one at a time (no load): the
    # latency floor each SLO is compared with, measured on the same nodes
    local setup=$1 wl=$2 in=$3 outl=$4 n=$5 name=$1-$2-solo est t0=$SECONDS rc seed
    # its own prompts (one seed per workload: with one seed the shorter workload's
    # prompt could be a prefix of the longer one's, a cache hit)
    seed=$(( $(printf '%s-solo' "$wl" | cksum | cut -d' ' -f1) % 2147483647 ))
    est=$(awk -v n="$n" -v o="$outl" -v s="$TOK_S" 'BEGIN {printf "%d", n * o * s / 3 + 5}')
    if [ $((SECONDS + est)) -gt "$SETUP_END" ]; then
        step "bench-$name" "SKIP" 0 "over this setup's share of the budget"
        return 0
    fi
    timeout -s INT -k 10 $((est * 4 + 60)) "$BIN/pdserve-bench" --base-url "http://127.0.0.1:$PROXY_PORT" \
        --dataset-name random --random-input-len "$in" --random-output-len "$outl" \
        --num-prompts "$n" --request-rate inf --max-concurrency 1 --seed "$seed" --num-warmups 0 \
        --ready-check-timeout-sec 0 --request-timeout $((est * 4 + 50)) \
        --save-result --save-detailed --result-dir "$OUTD/results" --result-filename "$name.json" \
        --label "$name" --disable-tqdm --metadata "setup=$setup" "workload=$wl" "connector=${CONN:-none}" \
        > "$OUTD/runs/$name.txt" 2>&1 &
    PENDING=("solo" "$setup" "$wl" "-" "$name" "" "$t0")
    bench_wait
    bench_finish "$rc"
}

tput() { # whole-engine throughput (issue 6): one decode node alone on GPU 0, sized by
    # --gpu-memory-utilization, TP_N requests of TP_IN/TP_OUT tokens sent at once with at
    # most TP_CONC in flight, straight to the node (no proxy); once per KV cache dtype
    local kv conc t0 p name rc to args
    for kv in $TP_KV; do
        for conc in $TP_CONC; do
            t0=$SECONDS
            name=tput-$kv-c$conc
            node_cmd decode "$DECODE_PORT"
            args=()
            for a in "${NODE[@]}"; do args+=("$a"); done
            # NODE_ARGS pins the KV blocks for the goodput runs; here the node sizes its
            # cache from the GPU memory like a real deployment
            local i=0 out=()
            while [ $i -lt ${#args[@]} ]; do
                case "${args[$i]}" in
                --num-gpu-blocks-override|--max-num-seqs) i=$((i + 2)); continue ;;
                esac
                out+=("${args[$i]}")
                i=$((i + 1))
            done
            out+=(--gpu-memory-utilization "$TP_UTIL" --max-num-seqs "$conc" --kv-cache-dtype "$kv")
            start_proc "$name-node" "$GPU_A" "${out[@]}"
            p=$LAST_PID
            if ! wait_up "$DECODE_PORT" "$LOAD_TIMEOUT" "$p"; then
                step "start-$name" FAIL $((SECONDS - t0)) "$(why "$OUTD/$name-node.log")"
                stop_all
                continue
            fi
            step "start-$name" PASS $((SECONDS - t0)) "$(grep -m1 -o 'KV cache [0-9]* blocks[^,]*' "$OUTD/$name-node.log")"
            gpu_mem
            to=$((SETUP_END - SECONDS))
            [ $to -lt 60 ] && to=60
            t0=$SECONDS
            timeout -s INT -k 10 "$to" "$BIN/pdserve-bench" --base-url "http://127.0.0.1:$DECODE_PORT" \
                --dataset-name random --random-input-len "$TP_IN" --random-output-len "$TP_OUT" \
                --num-prompts "$TP_N" --request-rate inf --max-concurrency "$conc" --seed 7 \
                --num-warmups 0 --ready-check-timeout-sec 60 --request-timeout $((to - 5)) \
                --save-result --result-dir "$OUTD/results" --result-filename "$name.json" \
                --label "$name" --disable-tqdm --metadata "kv_cache_dtype=$kv" "max_concurrency=$conc" \
                > "$OUTD/runs/$name.txt" 2>&1 &
            bench_wait
            step "bench-$name" "$([ "$rc" = 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - t0)) \
                "$(grep -m1 'Output token throughput' "$OUTD/runs/$name.txt" | tr -s ' ')"
            grep -h 'preempt\|engine: GPU' "$OUTD/$name-node.log" | head -3 >> "$OUTD/steps.log"
            stop_all
            # PD_ENGINE_STEP_PROFILE=1 in the environment: the engine's per-step-kind
            # profile, logged when the node stops
            grep -h 'step profile\|CUDA graphs\|replayed' "$OUTD/$name-node.log" >> "$OUTD/steps.log" || true
        done
    done
}

workloads() { # workloads SETUP: the two workloads' rates taken in turn (ph 1st, bal 1st,
    # ph 2nd, ...) so a budget that runs short still leaves each workload measured
    local ph=(${RATES_PH//,/ }) bal=(${RATES_BAL//,/ }) i
    bench_solo "$1" ph "$IN_PH" "$OUT_PH" 2
    bench_solo "$1" bal "$IN_BAL" "$OUT_BAL" 1
    for ((i = 0; i < ${#ph[@]} || i < ${#bal[@]}; i++)); do
        [ $i -lt ${#ph[@]} ] && bench_one "$1" ph "${ph[$i]}" "$IN_PH" "$OUT_PH" "$N_PH" "$SLO_PH"
        [ $i -lt ${#bal[@]} ] && bench_one "$1" bal "${bal[$i]}" "$IN_BAL" "$OUT_BAL" "$N_BAL" "$SLO_BAL"
    done
}

run() {
    local mode=gpu quick=0 a ngpu cub setup
    DIR=$(cd "$1" && pwd) || { echo "run: no such folder $1" >&2; return 2; }
    shift
    for a in "$@"; do
        case "$a" in
        --cpu-smoke) mode=cpu ;;
        --quick) quick=1 ;;
        *) echo "run: unknown option $a" >&2; return 2 ;;
        esac
    done
    T0=$SECONDS
    MODE=$mode
    OUTD=${OUT:-/tmp/gpu_cluster}
    mkdir -p "$OUTD/runs" "$OUTD/results" || return 1
    OUTD=$(cd "$OUTD" && pwd)
    : > "$OUTD/runs.tsv"
    : > "$OUTD/solo.tsv"
    : > "$OUTD/pids"
    RT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_cluster.XXXXXX") || return 1
    REPORTED=0
    trap on_exit EXIT
    trap 'exit 130' INT TERM
    tar -C "$RT" -xJf "$DIR/lib.tar.xz" || { echo "run: cannot unpack lib.tar.xz" >&2; return 1; }
    BIN=$DIR/bin
    if [ -f "$DIR/bin.tar.xz" ]; then
        tar -C "$RT" -xJf "$DIR/bin.tar.xz" || { echo "run: cannot unpack bin.tar.xz" >&2; return 1; }
        BIN=$RT/bin
    fi
    mkdir -p "$RT/tok" && tar -C "$RT/tok" -xJf "$DIR/tok/llama3.tar.xz" || return 1
    TOK=$RT/tok
    # cuBLAS and NCCL: the machine's own (CUDA toolkit, system packages or Python wheels)
    cub=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    [ -z "$cub" ] && cub=$(python3 -c 'import nvidia.cu13, os; print(os.path.dirname(nvidia.cu13.__file__))' 2>/dev/null |
        xargs -r -I{} find {} -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
    # NCCL: the system package normally; else the toolkit's or a Python wheel's
    local nccl=""
    if ! ldconfig -p 2>/dev/null | grep -q 'libnccl.so.2 '; then
        nccl=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libnccl.so.2*' 2>/dev/null | head -1)
        [ -z "$nccl" ] && nccl=$(python3 -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null |
            xargs -r -I{} find {} -name 'libnccl.so.2*' 2>/dev/null | head -1)
    fi
    export LD_LIBRARY_PATH="$RT/lib:${cub:+$(dirname "$cub"):}${nccl:+$(dirname "$nccl"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export UCX_MODULE_DIR=$RT/lib/ucx UCX_MEM_MMAP_HOOK_MODE=none NCCL_NVLS_ENABLE=0
    PROXY_PORT=${GP_PROXY_PORT:-18400}
    PREFILL_PORT=$((PROXY_PORT + 1))
    DECODE_PORT=$((PROXY_PORT + 2))
    KV_PORT_P=$((PROXY_PORT + 11))
    KV_PORT_D=$((PROXY_PORT + 12))
    SERVED=llama-3.1-8b-dummy
    # Same host: NCCL's CUDA IPC path first; then UCX over shared memory (cma reads, posix
    # messages: about 4x tcp here, and free of a stall seen with UCX 1.13 tcp on loopback,
    # a pull hanging until transfer_timeout_s), then UCX's default transports
    CONNECTORS=${GP_CONNECTORS:-NcclConnector UcxConnector:sm,self UcxConnector}
    if [ $mode = gpu ]; then
        MODEL=${GP_MODEL:-$DIR/models/llama-3.1-8b}
        DEVICE=${GP_DEVICE:-cuda}
        KV_DEV=${GP_DEVICE:-cuda}
        # 8192 blocks of 16 tokens = 131072 tokens of f32 KV (32 GiB for this shape): the
        # same on every node, far above what the workloads hold, and small enough for the
        # host-staged UCX path to mirror in pinned memory
        ngpu=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU')
        # one GPU: both nodes share it, so each gets half the KV cache
        local blocks=8192
        [ "$ngpu" = 1 ] && blocks=4096
        NODE_ARGS=(--load-format dummy --dtype bfloat16 --max-model-len 8192
                   --num-gpu-blocks-override "${GP_BLOCKS:-$blocks}" --max-num-seqs 256 --disable-log-requests)
        # GP_NODE_EXTRA: more node options for every node (A/B runs, e.g. --disable-async-output-proc)
        read -r -a extra_args <<< "${GP_NODE_EXTRA:-}"
        NODE_ARGS+=("${extra_args[@]}")
        PREFILL_MNBT=16384
        IN_PH=${GP_IN_PH:-4000} OUT_PH=${GP_OUT_PH:-200} IN_BAL=${GP_IN_BAL:-1000} OUT_BAL=${GP_OUT_BAL:-1000}
        # the most telling rate first (runs the budget cannot fit are skipped from the end)
        RATES_PH=${GP_RATES_PH:-3,1.5,4.5}
        RATES_BAL=${GP_RATES_BAL:-2.5,1}
        N_PH=${GP_N_PH:-20}
        N_BAL=${GP_N_BAL:-12}
        SLO_PH=${GP_SLO_PH:-ttft:1000 tpot:25}
        SLO_BAL=${GP_SLO_BAL:-ttft:500 tpot:25}
        TOK_S=0.03   # pessimistic seconds per decode step, for the time estimate
        BUDGET=${GP_BUDGET_S:-420}
        MIN_SETUP_S=150   # what the second setup gets even when the first overran
        LOAD_TIMEOUT=${GP_LOAD_TIMEOUT_S:-240}
        PROBE_WORDS=600
        TP_IN=${GP_TP_IN:-1000} TP_OUT=${GP_TP_OUT:-1000} TP_N=${GP_TP_N:-512}
        TP_CONC=${GP_TP_CONC:-256} TP_KV=${GP_TP_KV:-fp8 auto} TP_UTIL=${GP_TP_UTIL:-0.92}
        if [ $quick = 1 ]; then
            RATES_PH=${GP_RATES_PH:-3} RATES_BAL=${GP_RATES_BAL:-2} N_PH=${GP_N_PH:-16} N_BAL=${GP_N_BAL:-10}
        fi
    else
        # the CPU smoke: SmolLM2-135M's shape with the Llama 3 vocabulary (so prompts,
        # tokenizer and vocabulary are those of the GPU run), f32 dummy weights
        MODEL=$RT/model-smoke
        mkdir -p "$MODEL"
        python3 - "$DIR/models/smollm2-135m/config.json" "$MODEL/config.json" <<'EOF' || return 1
import json, sys
c = json.load(open(sys.argv[1]))
c.update(vocab_size=128256, bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=True)
json.dump(c, open(sys.argv[2], "w"), indent=1)
EOF
        DEVICE=cpu
        KV_DEV=cpu
        NODE_ARGS=(--load-format dummy --max-model-len 2048 --num-gpu-blocks-override 256 --disable-log-requests)
        PREFILL_MNBT=2048
        IN_PH=320 OUT_PH=4 IN_BAL=48 OUT_BAL=24
        RATES_PH=${GP_RATES_PH:-2}
        RATES_BAL=${GP_RATES_BAL:-2}
        N_PH=${GP_N_PH:-3}
        N_BAL=${GP_N_BAL:-3}
        SLO_PH=${GP_SLO_PH:-ttft:4000 tpot:400}
        SLO_BAL=${GP_SLO_BAL:-ttft:4000 tpot:400}
        TOK_S=0.3
        BUDGET=${GP_BUDGET_S:-110}
        MIN_SETUP_S=40
        LOAD_TIMEOUT=${GP_LOAD_TIMEOUT_S:-60}
        PROBE_WORDS=100
        TP_IN=${GP_TP_IN:-48} TP_OUT=${GP_TP_OUT:-16} TP_N=${GP_TP_N:-8}
        TP_CONC=${GP_TP_CONC:-4} TP_KV=${GP_TP_KV:-auto} TP_UTIL=${GP_TP_UTIL:-0.9}
        ngpu=0
    fi
    # Each node computes on its device 0. 1p1d: each process also sees the other GPU (as
    # its device 1) so that a CUDA IPC handle from the peer can be opened there (NCCL
    # connector, same host); 2rep: each replica sees only its own GPU.
    GPU_A=0 GPU_B=1 GPUS_P=0,1 GPUS_D=1,0
    [ "$ngpu" = 1 ] && GPU_B=0 GPUS_P=0 GPUS_D=0
    [ $mode = cpu ] && GPU_A=- GPU_B=- GPUS_P=- GPUS_D=-
    # a watchdog so no node outlives a run that was itself killed
    ( sleep $((BUDGET + 2 * LOAD_TIMEOUT + 120)); xargs -r kill -KILL < "$OUTD/pids" ) > /dev/null 2>&1 &
    WATCHDOG=$!
    {
        date -u
        echo "commit $(cat "$DIR/COMMIT" 2>/dev/null) mode $mode gpus $ngpu"
        [ $mode = gpu ] && timeout 20 nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv,noheader
        nproc
        echo "cublas: ${cub:-not found}; nccl: ${nccl:-system}"
        for b in "$BIN"/*; do
            ldd "$b" 2>&1 | grep "not found" | sed "s|^|$(basename "$b"): unresolved |"
        done
        echo "workloads: ph $IN_PH/$OUT_PH rates $RATES_PH n $N_PH SLO $SLO_PH; bal $IN_BAL/$OUT_BAL rates $RATES_BAL n $N_BAL SLO $SLO_BAL"
    } > "$OUTD/env.txt" 2>&1
    cat "$OUTD/env.txt"
    [ "$ngpu" = 1 ] && log "only one GPU: both nodes share GPU 0 (figures are not the two-GPU comparison)"

    local setups=(${GP_SETUPS:-1p1d 2rep}) k=0
    for setup in "${setups[@]}"; do
        # each setup gets an equal share of what is left of the budget, so a slow first
        # setup cannot leave nothing to compare it with
        SETUP_END=$((SECONDS + (BUDGET - (SECONDS - T0)) / (${#setups[@]} - k)))
        [ $SETUP_END -lt $((SECONDS + MIN_SETUP_S)) ] && SETUP_END=$((SECONDS + MIN_SETUP_S))
        k=$((k + 1))
        case $setup in
        1p1d) up_1p1d && workloads 1p1d ;;
        2rep) up_2rep && workloads 2rep ;;
        tput) tput ;;
        *) log "unknown setup $setup" ;;
        esac
        stop_all
    done

    final_report
    # exit status: 0 when both setups produced at least one result
    case " ${setups[*]} " in
    *" 1p1d "*|*" 2rep "*) grep -q '^1p1d' "$OUTD/runs.tsv" && grep -q '^2rep' "$OUTD/runs.tsv" ;;
    *) ! grep -q '^bench-tput.*FAIL' <(printf '%s\n' "${STEPS[@]}") ;;
    esac
}

final_report() { # the tables; also from the exit trap when the run is interrupted
    local s a b c d
    REPORTED=1
    echo
    echo "== gpu_cluster ($MODE): $(head -1 "$OUTD/env.txt"), commit $(cat "$DIR/COMMIT" 2>/dev/null), KV over $(cat "$OUTD/connector.txt" 2>/dev/null || echo none) =="
    PYT=60 py report "$OUTD" --json "$OUTD/report.json" | tee "$OUTD/report.txt"
    echo
    printf '%-34s %-9s %6s  %s\n' step result seconds note
    for s in "${STEPS[@]}"; do
        IFS='|' read -r a b c d <<< "$s"
        printf '%-34s %-9s %6s  %s\n' "$a" "$b" "$c" "$d"
    done
    echo "total $((SECONDS - T0)) s; logs in $OUTD"
}

smoke() { # smoke BUILD_DIR: stage into a temporary folder, run the CPU smoke from it
    local build=$1 d rc
    d=$(mktemp -d "${TMPDIR:-/tmp}/gpu_cluster_stage.XXXXXX") || return 1
    stage "$build" "$d/stage" || { rm -rf "$d"; return 1; }
    bash "$d/stage/gpu_cluster.sh" run "$d/stage" --cpu-smoke
    rc=$?
    rm -rf "$d"
    return $rc
}

case "${1:-}" in
stage) shift; stage "$@" ;;
run) shift; run "$@" ;;
smoke) shift; smoke "$@" ;;
*) echo "usage: $0 stage BUILD_DIR DEST | run DEST [--quick|--cpu-smoke] | smoke BUILD_DIR" >&2; exit 2 ;;
esac
