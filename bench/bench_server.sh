#!/usr/bin/env bash
# bench_server.sh - the node server's own CPU cost, on a real pdserve-decode with the
# default model (SmolLM2-135M Q4_1, CPU backend):
#   1. GET /v1/models with wrk: requests/s and server CPU per request.
#   2. POST /v1/completions, max_tokens=1, with wrk: requests/s, server CPU per request.
#   3. streamed completions (16 at a time, 256 tokens each, ignore_eos): server CPU per
#      streamed token.
#   3b. the chunk writer alone (tests/unit/test_oai_chunk --bench): ns per chunk.
#   3c. (with perf, unless PD_BENCH_MARGINAL=0) the per-token cost apart from the
#      per-request one: case 3 at 32 and at 1024 tokens a stream, in turn; and beside
#      it the floor, bare sends of the same chunk with no server (bench_send_floor).
#   4. 1,000 concurrent streams (4 tokens each): all held and finished with [DONE]?
# "Server CPU" excludes the model: the process is sampled with `perf record -e cpu-clock`
# and samples in the engine's compute (every function of libpd_kernels_cpu.a and of
# eng_forward/backend_cpu/model/quant/sampler/sched/block, found with nm; libm) are
# subtracted; what remains
# is HTTP, JSON parse/validate, template, tokenize, detokenize, stop strings, response
# and chunk formatting, sends, libc and kernel time of those.  Without perf, only the
# whole-process CPU (model included) is printed.
#   bench/bench_server.sh [build-dir] [--json out.json]
# The model (PD_BENCH_MODEL): "tiny" (default, as the node-server issue asks: a tiny dummy
# model, configs/models/tiny-bench with --load-format dummy and the default model's GGUF
# as the tokenizer, so the model's compute is a few microseconds a token and neither
# takes the cores from the server nor evicts its caches) or "default" (the real
# SmolLM2-135M Q4_1, the earlier runs' setting: its ~100 MB of weights stream through the
# same 2 cores between the sends).
#   3a. unless PD_BENCH_AB=0: case 3 again on fresh nodes, alternating the HTTP layer's
#      ways of sending stream events (PD_HTTP_DIRECT_STREAM=0: every event through
#      libmicrohttpd's loop; =worker: framed by the engine thread, sent by the
#      connection's worker; default: the engine thread sends each event itself), two
#      rounds each, so before and after see the same machine load.
# PD_BENCH_ONLY=streams runs only case 3 (and 3b), e.g. to compare two binaries a few
# times in turn on a loaded machine (PD_BENCH_BIN=<the other binary>).
set -euo pipefail
# the whole script is one function, parsed before it runs
main() {
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
JSON_OUT=${3:-}
MODEL=${PD_MODEL_GGUF:-${PDSERVE_CACHE:-$HOME/.cache/pdserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
BIN=${PD_BENCH_BIN:-$BUILD/decode/pdserve-decode}   # PD_BENCH_BIN: another binary (a "before" build)
[ -x "$BIN" ] || { echo "build pdserve-decode first ($BIN)"; exit 1; }
[ -f "$MODEL" ] || { echo "SKIP: no model at $MODEL"; exit 0; }
BENCH_MODEL=${PD_BENCH_MODEL:-tiny}
case $BENCH_MODEL in
tiny) MODEL_ARGS=(--model "$ROOT/configs/models/tiny-bench" --load-format dummy --tokenizer "$MODEL") ;;
default) MODEL_ARGS=(--model "$MODEL") ;;
*) echo "PD_BENCH_MODEL must be tiny or default"; exit 2 ;;
esac
command -v wrk >/dev/null || { echo "SKIP: wrk not installed"; exit 0; }
TMP=$(mktemp -d)
# start_node [VAR=value ...]: a node (environment as given) on a free port: PID, PORT, URL
start_node() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    env "$@" "$BIN" "${MODEL_ARGS[@]}" --served-model-name smol --port "$PORT" --cpu-threads 1 --cpu-kvcache-space 1 \
        --max-model-len 2048 --disable-log-requests --disable-log-stats >"$TMP/node.$PORT.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
    URL=http://127.0.0.1:$PORT
}
stop_node() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
trap 'stop_node; [ -n "${MAIN_PID:-}" ] && kill "$MAIN_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
start_node
MAIN_PID=$PID MAIN_PORT=$PORT MAIN_URL=$URL
HAVE_PERF=0
perf stat -e task-clock true >/dev/null 2>&1 && HAVE_PERF=1

# every function (static ones too) of the model's compute: the CPU kernels and the
# engine's forward, model, quantization, sampling, scheduling and block code; libm (exp)
# counts there too.  libc and kernel time stay on the server side (an upper bound).
{ nm "$BUILD/kernels/libpd_kernels_cpu.a" 2>/dev/null
  for o in eng_forward eng_backend_cpu eng_model eng_quant eng_sampler eng_sched eng_block; do
      nm "$BUILD/engine/CMakeFiles/pd_engine.dir/$o.c.o" 2>/dev/null; done
  echo "x t spin_until"  # bench_send_floor's stand-in for the engine step (case 3c)
} | awk '$2 ~ /^[tT]$/ {print $3}' | sort -u > "$TMP/engine_syms"
# the server's own code: the common library (HTTP, JSON, metrics, log) and the engine's
# request-side files (API, tokenizer, detokenizer, stop strings, templates, output
# dispatch); with libmicrohttpd, cJSON, GnuTLS and the kernel's network paths this is
# the lower bound; the upper bound is everything outside the model's compute
{ nm "$BUILD/common/libpd_common.a" 2>/dev/null
  for o in eng_server eng_server_oai eng_oai_chunk eng_openai eng_tokenizer eng_tok_model eng_unicode eng_stop eng_template \
           eng_jinja_parse eng_engine eng_request; do
      nm "$BUILD/engine/CMakeFiles/pd_engine.dir/$o.c.o" 2>/dev/null; done
} | awk '$2 ~ /^[tT]$/ {print $3}' | sort -u > "$TMP/server_syms"

cpu_ticks() { awk '{print $14+$15}' /proc/$PID/stat; }
HZ=$(getconf CLK_TCK)

# run "$@" while measuring the server: writes "<process cpu s> <server-only cpu s>" to $TMP/meas
measure() {
    local t0 t1 perf_pid=""
    if [ $HAVE_PERF = 1 ]; then
        perf record -q -g -e cpu-clock -F 10000 -p $PID -o "$TMP/perf.data" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.3
    fi
    t0=$(cpu_ticks)
    "$@"
    t1=$(cpu_ticks)
    if [ -n "$perf_pid" ]; then
        kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
        # the full accounting (call graphs): every sample is model, client rx or server
        perf script -F ip,sym,dso -i "$TMP/perf.data" 2>/dev/null |
            python3 "$ROOT/bench/scripts/perf_server_split.py" "$TMP/engine_syms" --detail "$TMP/full_detail" > "$TMP/full"
        # the leaf-symbol bounds and parts (earlier runs' figures)
        perf script -G -F ip,sym,dso -i "$TMP/perf.data" 2>/dev/null | python3 -c '
import sys, re
eng = set(open(sys.argv[1]).read().split())
own = set(open(sys.argv[2]).read().split())
net = re.compile(r"(tcp|ip_|ipv4|sock|epoll|skb|inet|net_|__dev_queue|loopback|__sys_|do_sys_poll|__x64_sys)")
# time-driven, not per token: the hang-up watcher (every 50 ms over every suspended
# stream) and the bounded waits of the HTTP workers (20 ms); a share of the lower bound
idle = re.compile(r"^(snapshot|watcher_main|do_sys_poll|__x64_sys_poll|sock_poll|tcp_poll|MHD_run_wait|MHD_get_timeout|"
                  r"do_epoll_wait|__x64_sys_epoll_wait|ep_poll|eventfd_poll|poll_freewait|__pollwait)$")
# the per-token share of the lower bound, by part (fractions of all samples)
parts = [("chunk+dispatch", re.compile(r"^(on_output|stream_event|stream_flush|eng_oai_chunk.*|eng_json_.*|jw_.*|begin_choice|"
                                       r"chunk_usage|pd_buf_.*|cJSON.*|pd_metric_.*|observe_metrics|token_text|tokstr_cb)$")),
         ("detok+stop+engine loop", re.compile(r"^(emit|process_seq|eng_detok.*|eng_tok_decode|detok_.*|eng_stop.*|engine_main|"
                                               r"eng_node_main|ends_with_fffd|bpe_word)$")),
         ("http layer (ours + libmicrohttpd)", None), ("kernel tcp send", None),
         ("kernel loopback receive (the client side)", None)]
# the receive half of loopback TCP: the client stack, run in softirq on the sending
# thread; with a real NIC it runs on the client machine
rx = re.compile(r"^(tcp_v4_rcv|tcp_v4_do_rcv|tcp_rcv_established|tcp_data_queue|tcp_queue_rcv|tcp_event_data_recv|"
                r"tcp_add_backlog|__inet_lookup_established|__inet_lookup.*|ip_rcv.*|ip_local_deliver.*|"
                r"ip_protocol_deliver_rcu|__netif_receive_skb.*|netif_receive.*|process_backlog|__napi_poll|"
                r"net_rx_action|sock_def_readable|enqueue_to_backlog|netif_rx.*|tcp_data_ready|tcp_rcv_space_adjust|"
                r"tcp_validate_incoming|tcp_filter|ip_route_input.*|tcp_inbound_hash.*|tcp_v4_inbound_md5_hash|"
                r"ip_sublist_rcv.*|ip_list_rcv.*|__netif_receive_skb_list.*)$")
counts = [0, 0, 0, 0, 0]
tot = hi = lo = lo_idle = 0
for line in sys.stdin:
    f = line.split()
    if not f: continue
    tot += 1
    sym = f[1] if len(f) > 1 else "?"
    if sym in eng or "libm.so" in line or "libgomp" in line: continue
    hi += 1
    if sym in own or "libmicrohttpd" in line or "libcjson" in line or "libgnutls" in line or \
       ("kernel.kallsyms" in line and net.search(sym)):
        lo += 1
        if idle.match(sym):
            lo_idle += 1
        elif parts[0][1].match(sym): counts[0] += 1
        elif parts[1][1].match(sym): counts[1] += 1
        elif "kernel.kallsyms" in line: counts[4 if rx.match(sym) else 3] += 1
        else: counts[2] += 1
print(tot, hi, lo, lo_idle)
with open(sys.argv[3], "w") as f:
    for (name, _), c in zip(parts, counts):
        f.write("%s\t%f\n" % (name, c / tot if tot else 0))' "$TMP/engine_syms" "$TMP/server_syms" "$TMP/parts" > "$TMP/split"
    else
        echo "0 0 0 0" > "$TMP/split"
        echo "0 0 0 0" > "$TMP/full"
    fi
    read -r tot hi lo lo_idle < "$TMP/split"
    read -r ftot fmodel frx fsrv < "$TMP/full"
    python3 -c "
cpu=($t1-$t0)/$HZ; tot=$tot; ftot=$ftot
print(cpu, cpu*$hi/tot if tot else -1, cpu*$lo/tot if tot else -1, cpu*$lo_idle/tot if tot else -1,
      cpu*$fsrv/ftot if ftot else -1, cpu*$frx/ftot if ftot else -1)" > "$TMP/meas"
}

CLIENT=${PD_BENCH_CLIENT:-c}
[ -x "$BUILD/bench/pdserve-bench" ] || CLIENT=python
echo "== pdserve-decode $(git -C "$ROOT" rev-parse --short HEAD) on $(nproc) cores, $(date -u +%FT%TZ), model: $BENCH_MODEL, stream client: $CLIENT"

ONLY=${PD_BENCH_ONLY:-}
# tokens per stream in case 3: enough that the request's own work (parse, template,
# tokenize, first use of its buffers) is a small share of the per-token figure
STREAM_TOKENS=${PD_BENCH_STREAM_TOKENS:-256}
if [ -z "$ONLY" ]; then
# 1. /v1/models
measure wrk -t1 -c16 -d5s --latency "$URL/v1/models" >"$TMP/wrk1" 2>&1
read -r CPU1 SRV1 LO1 _ < "$TMP/meas"
N1=$(awk '/requests in/ {print $1}' "$TMP/wrk1")
RPS1=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk1")
echo "GET /v1/models: $RPS1 req/s, server CPU $(python3 -c "print(round($CPU1/$N1*1e6,1))") us/req"

# 2. max_tokens=1 completions
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"smol","prompt":"The capital of France is","max_tokens":1,"temperature":0}'
wrk.headers["Content-Type"] = "application/json"
LUA
measure wrk -t1 -c8 -d8s -s "$TMP/post.lua" "$URL/v1/completions" >"$TMP/wrk2" 2>&1
read -r CPU2 SRV2 LO2 _ FULL2 _ < "$TMP/meas"
N2=$(awk '/requests in/ {print $1}' "$TMP/wrk2")
RPS2=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk2")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk2"); NON2XX=${NON2XX:-0}
echo "POST /v1/completions max_tokens=1: $RPS2 req/s ($NON2XX non-2xx), process CPU $(python3 -c "print(round($CPU2/$N2*1e6,1))") us/req," \
     "server-only $(python3 -c "print(round($LO2/$N2*1e6,1))")..$(python3 -c "print(round($SRV2/$N2*1e6,1))") us/req," \
     "full accounting $(python3 -c "print(round($FULL2/$N2*1e6,1))") us/req"

fi

# 3. streamed tokens
cat >"$TMP/streams.py" <<'PY'
import http.client, json, sys, threading, time
port, n, tokens = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
got = []
def one(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps({"model": "smol", "prompt": f"Story {i}:", "max_tokens": tokens,
              "ignore_eos": True, "stream": True, "temperature": 0}), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read().decode()
    got.append((r.status, body.count("data: ") - 1, body.rstrip().endswith("data: [DONE]")))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
t0 = time.monotonic()
for t in ts: t.start()
for t in ts: t.join()
ok = sum(1 for s, _, d in got if s == 200 and d)
print(ok, sum(e for _, e, _ in got), time.monotonic() - t0)
PY
# The client (PD_BENCH_CLIENT): "c" (default when built: pdserve-bench, 16 streams at once
# with ignore_eos, ~13 us of client CPU a chunk) or "python" (streams.py above, the
# earlier runs' client: a thread per stream, several times the CPU a chunk, on the same
# two cores as the node).
c_streams() { # c_streams PORT N TOKENS: "ok events seconds", as streams.py prints
    "$BUILD/bench/pdserve-bench" --port "$1" --model smol --num-prompts "$2" --max-concurrency "$2" \
        --random-input-len 8 --random-output-len "$3" --ignore-eos --ready-check-timeout-sec 0 > "$TMP/pb.out" 2>&1
    awk '/^Successful requests:/ {ok = $3} /^Total generated tokens:/ {ev = $4} /^Benchmark duration/ {s = $4}
         END {print ok + 0, ev + 0, s + 0}' "$TMP/pb.out"
}
# one run of case 3 against the node in PID/PORT; label says which transport; the
# second argument, tokens per stream (default STREAM_TOKENS)
stream_case() {
local toks=${2:-$STREAM_TOKENS}
if [ "$CLIENT" = c ]; then
    measure c_streams "$PORT" 16 "$toks" > "$TMP/s3"
else
    measure python3 "$TMP/streams.py" "$PORT" 16 "$toks" > "$TMP/s3"
fi
read -r CPU3 SRV3 LO3 IDLE3 FULL3 RX3 < "$TMP/meas"
read -r OK3 EV3 WALL3 < "$TMP/s3"
TOK3=$((16 * toks))
[ $HAVE_PERF = 1 ] && {
echo "streams 16 x $toks tokens [$1]: server CPU, full accounting (all but the model and the client's loopback receive):" \
     "$(python3 -c "print(round($FULL3/$TOK3*1e6,1))") us/token; client's loopback receive $(python3 -c "print(round($RX3/$TOK3*1e6,1))") us/token; by part:"
python3 -c "
import sys
cpu = ($CPU3) / $TOK3 * 1e6
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
tot = $ftot
for c, n, top in rows[:8]:
    print('    %-44s %5.1f us  (%s)' % (c, cpu * int(n) / tot, top))" "$TMP/full_detail"; }
echo "streams 16 x $toks tokens [$1]: $OK3/16 ok, $EV3 events; process CPU $(python3 -c "print(round($CPU3/$TOK3*1e6,1))") us/token," \
     "server-only $(python3 -c "print(round($LO3/$TOK3*1e6,1))")..$(python3 -c "print(round($SRV3/$TOK3*1e6,1))") us/token" \
     "(of the lower bound $(python3 -c "print(round($IDLE3/$TOK3*1e6,1))") us/token is the time-driven poll loops, not per token)"
[ $HAVE_PERF = 1 ] && python3 -c "
import sys
cpu = ($CPU3) / $TOK3 * 1e6
print('  per-token part of the lower bound: ' + ', '.join('%s %.1f us' % (l.split('\t')[0], float(l.split('\t')[1]) * cpu)
      for l in open(sys.argv[1]) if l.strip()))" "$TMP/parts"
STREAM_ROWS="$STREAM_ROWS$1|$(python3 -c "print(round($FULL3/$TOK3*1e6,1))")|$(python3 -c "print(round(($LO3-$IDLE3)/$TOK3*1e6,1))")|$(python3 -c "print(round($CPU3/$TOK3*1e6,1))");"
return 0
}
STREAM_ROWS=""
stream_case "producer sends (default)"
CPU3_MAIN=$CPU3 SRV3_MAIN=$SRV3 LO3_MAIN=$LO3 IDLE3_MAIN=$IDLE3 FULL3_MAIN=$FULL3 RX3_MAIN=$RX3
# 3c. the per-token cost apart from the per-request one: the server's CPU (full
# accounting) for 16 streams of SHORT and of LONG tokens (PD_BENCH_SHORT_TOKENS 32,
# PD_BENCH_LONG_TOKENS 1024), in turn on the same node (PD_BENCH_ROUNDS rounds), is
# a + b * tokens per stream; b is the cost of one more streamed token (detokenize,
# format, send, and the wake-ups while it streams), a the request's own (connection,
# parse, template, tokenize, the first and last events).  The LONG runs' own per-token
# figure (a spread over 1024 tokens) is the steadier one: b is a difference of two
# noisy figures.  Beside them, the floor: bench_send_floor's bare sends of a chunk of
# the same size on 16 loopback connections at the node's pace, no server, the same
# accounting.
MARG3=-1 REQ3=-1 FLOOR3=-1 LONG3=-1
if [ $HAVE_PERF = 1 ] && [ "${PD_BENCH_MARGINAL:-1}" != 0 ]; then
    SHORT=${PD_BENCH_SHORT_TOKENS:-32}
    LONG=${PD_BENCH_LONG_TOKENS:-1024}
    ROUNDS=${PD_BENCH_ROUNDS:-3}
    FS="" FL="" FF=""
    wait_floor() { for _ in $(seq 600); do grep -q done "$TMP/floor.out" && return 0; sleep 0.05; done; return 1; }
    for round in $(seq "$ROUNDS"); do
        stream_case "short, round $round" "$SHORT" >/dev/null; FS="$FS $FULL3"
        stream_case "long, round $round" "$LONG" >/dev/null; FL="$FL $FULL3"
        # the floor, paced like the node's steps in the long run just made
        "$BUILD/bench/bench_send_floor" --conns 16 --events "$LONG" --bytes 229 \
            --pace-us "$(python3 -c "print(int($WALL3 / $LONG * 1e6))")" --delay-ms 1000 > "$TMP/floor.out" &
        NODE_PID=$PID PID=$!
        measure wait_floor
        read -r _ _ _ _ FULLF _ < "$TMP/meas"
        kill "$PID"; wait "$PID" 2>/dev/null || true
        PID=$NODE_PID FF="$FF $FULLF"
    done
    read -r MARG3 REQ3 FLOOR3 PACE3 LONG3 < <(python3 -c "
import statistics as st
fs = [float(x) for x in '$FS'.split()]; fl = [float(x) for x in '$FL'.split()]; ff = [float(x) for x in '$FF'.split()]
s, l = st.median(fs), st.median(fl)
b = (l - s) / (16 * ($LONG - $SHORT))
a = (s - 16 * $SHORT * b) / 16
print(b * 1e6, a * 1e6, st.median(ff) / (16 * $LONG) * 1e6, int($WALL3 / $LONG * 1e6), l / (16 * $LONG) * 1e6)")
    echo "per streamed token, 16 x $LONG tokens ($ROUNDS rounds, median): server CPU $(python3 -c "print(round($LONG3, 1))") us/token" \
         "(full accounting; the request's own cost spread over $LONG tokens)"
    echo "per streamed token, apart from the request ($ROUNDS rounds of 16 x $SHORT and 16 x $LONG tokens, medians):" \
         "server CPU $(python3 -c "print(round($MARG3, 1))") us/token (full accounting); per stream request" \
         "$(python3 -c "print(round($REQ3, 1))") us; floor: a bare send of the same chunk (bench_send_floor, 16 connections," \
         "one send per ~$PACE3 us busy step, same accounting) $(python3 -c "print(round($FLOOR3, 1))") us/token"
    python3 -c "
print('  the runs, us per token: 16 x $SHORT: %s; 16 x $LONG: %s; floor: %s' % tuple(
      ' '.join('%.1f' % (float(x) / (16 * n) * 1e6) for x in v.split()) for v, n in
      (('$FS', $SHORT), ('$FL', $LONG), ('$FF', $LONG))))"
fi
# the same on nodes that send every event through libmicrohttpd's loop (resume, send,
# suspend: PD_HTTP_DIRECT_STREAM=0) and again with direct writes, in turn, so that both
# see the same machine load (PD_BENCH_AB=0 skips it)
if [ "${PD_BENCH_AB:-1}" != 0 ]; then
    for round in 1 2; do
        start_node PD_HTTP_DIRECT_STREAM=0; stream_case "mhd loop, round $round"; stop_node
        start_node PD_HTTP_DIRECT_STREAM=worker; stream_case "worker sends, round $round"; stop_node
        start_node; stream_case "producer sends (default), round $((round + 1))"; stop_node
    done
    PID=$MAIN_PID PORT=$MAIN_PORT URL=$MAIN_URL
    echo "per token, us: server CPU (full accounting) / leaf-symbol lower bound minus the time-driven loops / whole process CPU (model included):"
    echo "$STREAM_ROWS" | tr ';' '\n' | awk -F'|' 'NF == 4 {printf "  %-36s %8s %8s %10s\n", $1, $2, $3, $4}'
fi
CPU3=$CPU3_MAIN SRV3=$SRV3_MAIN LO3=$LO3_MAIN IDLE3=$IDLE3_MAIN FULL3=$FULL3_MAIN RX3=$RX3_MAIN

# 3b. the chunk writer alone (in-process, no server): tree-free vs the cJSON tree it replaced
[ -x "$BUILD/tests/test_oai_chunk" ] && "$BUILD/tests/test_oai_chunk" --bench

[ -n "$ONLY" ] && return 0
# 4. 1,000 concurrent streams
T0=$(date +%s.%N)
python3 "$TMP/streams.py" "$PORT" 1000 4 > "$TMP/s4"
read -r OK4 EV4 < "$TMP/s4"
T4=$(python3 -c "import time; print(round(time.time()-$T0,1))")
echo "1000 concurrent streams x 4 tokens: $OK4/1000 finished with [DONE] in $T4 s"
kill -0 $PID && echo "server alive after the run"

if [ -n "$JSON_OUT" ]; then
python3 - "$JSON_OUT" <<PY
import json, sys
json.dump({"models_rps": $RPS1, "models_cpu_us": $CPU1/$N1*1e6, "comp1_rps": $RPS2, "comp1_cpu_us": $CPU2/$N2*1e6,
           "comp1_server_us": [$LO2/$N2*1e6, $SRV2/$N2*1e6], "comp1_server_full_us": $FULL2/$N2*1e6, "stream_cpu_us_per_token": $CPU3/$TOK3*1e6,
           "stream_server_us_per_token": [$LO3/$TOK3*1e6, $SRV3/$TOK3*1e6], "stream_idle_us_per_token": $IDLE3/$TOK3*1e6,
           "stream_server_full_us_per_token": $FULL3/$TOK3*1e6, "stream_client_rx_us_per_token": $RX3/$TOK3*1e6, "model": "$BENCH_MODEL", "streams_1000_ok": $OK4, "streams_1000_s": $T4,
           "stream_long_us_per_token": $LONG3, "stream_marginal_us_per_token": $MARG3, "stream_request_us": $REQ3, "send_floor_us_per_token": $FLOOR3},
          open(sys.argv[1], "w"), indent=1)
PY
fi
}
main "$@"
