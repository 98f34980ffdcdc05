#!/usr/bin/env bash
# compare_shapes.sh - start a local pdserve cluster in several shapes, run the same
# pdserve-bench rate sweep against each, and compare throughput and goodput.
#
# It runs the binaries of --bin-dir (default build/) with the node CLI of docs/bench.md:
#     pdserve-decode  --model M --port P [--kv-transfer-config JSON]
#     pdserve-prefill --model M --port P  --kv-transfer-config JSON
#     pdserve-proxy   --prefill host:port ... --decode host:port ... --port P
# and stops with a clear message when one is missing (--dry-run prints the commands).
# With --device gpu every node needs a GPU of its own; scripts/gpu_cluster.sh is the
# GPU machine's version (1P1D against replicas, goodput per rate).
#
# Shapes: "Nd" = N independent decode nodes (no disaggregation), the bench
# round-robins over them;  "XpYd" = X prefill + Y decode nodes behind one proxy.
#
# Example:
#   bench/scripts/compare_shapes.sh --model /path/model.gguf --device cpu \
#       --shapes "1d 2d 1p1d" --rates 1,2,4,8 --num-prompts 200 \
#       --input-len 1024 --output-len 128 --goodput "ttft:2000 tpot:100"
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

MODEL="${PD_MODEL_GGUF:-$HOME/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
DEVICE=cpu
SHAPES="1d 2d 1p1d"
RATES="1,2,4,8"
NUM_PROMPTS=200
INPUT_LEN=512
OUTPUT_LEN=128
GOODPUT="ttft:2000 tpot:100"
ATTAIN=0.9
OUT="shape-results"
BIN_DIR="$ROOT/build"
BASE_PORT=18000
KV_CONNECTOR="${PD_KV_CONNECTOR:-UcxConnector}"
EXTRA_NODE_ARGS=""
DRY=0

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
options:
  --model M            model path or name for every node (default: $MODEL)
  --device cpu|gpu     gpu: node i gets CUDA_VISIBLE_DEVICES=i (default cpu)
  --shapes "S S"       shapes to compare, e.g. "1d 2d 1p1d 1p2d 2p2d" (default "$SHAPES")
  --rates R,R          request rates for the sweep (default $RATES)
  --num-prompts N      requests per rate (default $NUM_PROMPTS)
  --input-len N        exact prompt tokens (default $INPUT_LEN)
  --output-len N       output tokens, ignore_eos (default $OUTPUT_LEN)
  --goodput "K:MS .."  SLOs (default "$GOODPUT")
  --attainment F       fraction of requests that must meet the SLOs (default $ATTAIN)
  --kv-connector NAME  kv_connector for prefill/decode nodes (default $KV_CONNECTOR)
  --node-args "..."    extra arguments for every node (e.g. "--max-num-seqs 64")
  --bin-dir DIR        where pdserve-* binaries are (default $BIN_DIR, searched recursively)
  --base-port P        first port to use (default $BASE_PORT)
  --out DIR            results directory (default $OUT)
  --dry-run            print the commands, start nothing
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --shapes) SHAPES="$2"; shift 2 ;;
        --rates) RATES="$2"; shift 2 ;;
        --num-prompts) NUM_PROMPTS="$2"; shift 2 ;;
        --input-len) INPUT_LEN="$2"; shift 2 ;;
        --output-len) OUTPUT_LEN="$2"; shift 2 ;;
        --goodput) GOODPUT="$2"; shift 2 ;;
        --attainment) ATTAIN="$2"; shift 2 ;;
        --kv-connector) KV_CONNECTOR="$2"; shift 2 ;;
        --node-args) EXTRA_NODE_ARGS="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --base-port) BASE_PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare_shapes.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cpu|gpu) ;; *) echo "compare_shapes.sh: --device: bad value '$DEVICE' (accepted: cpu, gpu)" >&2; exit 2 ;; esac

find_bin() {
    local name="$1" p
    p="$(find "$BIN_DIR" -type f -name "$name" -perm -u+x 2>/dev/null | head -n1 || true)"
    [ -z "$p" ] && p="$(command -v "$name" || true)"
    echo "$p"
}

BENCH="$(find_bin pdserve-bench)"
DECODE="$(find_bin pdserve-decode)"
PREFILL="$(find_bin pdserve-prefill)"
PROXY="$(find_bin pdserve-proxy)"
if [ "$DRY" = 0 ]; then
    missing=""
    for b in BENCH DECODE PREFILL PROXY; do [ -z "${!b}" ] && missing="$missing $b"; done
    if [ -n "$missing" ]; then
        echo "compare_shapes.sh: needs the pdserve cluster binaries; not found in $BIN_DIR:$missing" >&2
        echo "  (build pdserve-decode, pdserve-prefill, pdserve-proxy and pdserve-bench first)" >&2
        exit 3
    fi
fi
: "${BENCH:=pdserve-bench}" "${DECODE:=pdserve-decode}" "${PREFILL:=pdserve-prefill}" "${PROXY:=pdserve-proxy}"

mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
    done
    for p in "${PIDS[@]:-}"; do
        if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
    done
    PIDS=()
}
trap cleanup EXIT INT TERM

GPU_NEXT=0
N_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
gpu_list() { # gpu_list I: GPU I first, then the others. A node computes on its first
    # visible GPU; seeing the others lets it open a peer's CUDA IPC handle (NcclConnector)
    local i=$1 k list=$1
    for k in $(seq 0 $((${N_GPUS:-0} - 1))); do [ "$k" != "$i" ] && list="$list,$k"; done
    echo "$list"
}
start_node() { # start_node LOGNAME CMD...
    local log="$OUT/$1.log"; shift
    local envs=()
    # nodes get a GPU each; the proxy (log name *-proxy) needs none
    if [ "$DEVICE" = gpu ] && [[ "$log" != *-proxy.log ]]; then
        envs=(env "CUDA_VISIBLE_DEVICES=$(gpu_list $GPU_NEXT)"); GPU_NEXT=$((GPU_NEXT + 1))
    fi
    echo "+ ${envs[*]} $*" | tee -a "$OUT/commands.txt"
    if [ "$DRY" = 0 ]; then
        "${envs[@]}" "$@" > "$log" 2>&1 &
        PIDS+=($!)
    fi
}

wait_ready() { # wait_ready PORT
    [ "$DRY" = 1 ] && return 0
    local url="http://127.0.0.1:$1/health" i
    for i in $(seq 1 600); do
        if curl -sf -o /dev/null "$url"; then return 0; fi
        sleep 1
    done
    echo "compare_shapes.sh: node on port $1 did not become healthy in 600 s (see $OUT/*.log)" >&2
    return 1
}

kv_cfg() { # kv_cfg ROLE PORT
    printf '{"kv_connector":"%s","kv_role":"%s","kv_ip":"127.0.0.1","kv_port":%d}' "$KV_CONNECTOR" "$1" "$2"
}

SUMMARY="$OUT/summary.tsv"
printf "shape\trate\treq_s\tout_tok_s\tgoodput_req_s\tslo_attainment\tmean_ttft_ms\tmean_tpot_ms\n" > "$SUMMARY"

for shape in $SHAPES; do
    GPU_NEXT=0
    port=$BASE_PORT
    targets=()
    if [[ "$shape" =~ ^([0-9]+)d$ ]]; then
        nd=${BASH_REMATCH[1]}
        for i in $(seq 1 "$nd"); do
            # shellcheck disable=SC2086
            start_node "$shape-decode$i" "$DECODE" --model "$MODEL" --port "$port" $EXTRA_NODE_ARGS
            wait_ready "$port"
            targets+=("http://127.0.0.1:$port")
            port=$((port + 1))
        done
    elif [[ "$shape" =~ ^([0-9]+)p([0-9]+)d$ ]]; then
        np=${BASH_REMATCH[1]}; nd=${BASH_REMATCH[2]}
        proxy_args=()
        for i in $(seq 1 "$np"); do
            # shellcheck disable=SC2086
            start_node "$shape-prefill$i" "$PREFILL" --model "$MODEL" --port "$port" \
                --kv-transfer-config "$(kv_cfg kv_producer $((port + 1000)))" $EXTRA_NODE_ARGS
            wait_ready "$port"
            proxy_args+=(--prefill "127.0.0.1:$port")
            port=$((port + 1))
        done
        for i in $(seq 1 "$nd"); do
            # shellcheck disable=SC2086
            start_node "$shape-decode$i" "$DECODE" --model "$MODEL" --port "$port" \
                --kv-transfer-config "$(kv_cfg kv_consumer $((port + 1000)))" $EXTRA_NODE_ARGS
            wait_ready "$port"
            proxy_args+=(--decode "127.0.0.1:$port")
            port=$((port + 1))
        done
        start_node "$shape-proxy" "$PROXY" "${proxy_args[@]}" --port "$port"
        wait_ready "$port"
        targets+=("http://127.0.0.1:$port")
    else
        echo "compare_shapes.sh: --shapes: bad value '$shape' (accepted: Nd or XpYd, e.g. 2d, 1p2d)" >&2
        exit 2
    fi

    base_urls="$(IFS=,; echo "${targets[*]}")"
    read -r -a slos <<< "$GOODPUT"
    cmd=("$BENCH" --base-url "$base_urls" --dataset-name random --random-input-len "$INPUT_LEN"
         --random-output-len "$OUTPUT_LEN" --num-prompts "$NUM_PROMPTS" --request-rate "$RATES"
         --goodput "${slos[@]}" --goodput-attainment "$ATTAIN" --label "$shape"
         --save-result --result-dir "$OUT/$shape" --plot --disable-tqdm --metadata "shape=$shape" "device=$DEVICE")
    echo "+ ${cmd[*]}" | tee -a "$OUT/commands.txt"
    if [ "$DRY" = 0 ]; then
        "${cmd[@]}" | tee "$OUT/$shape.txt"
        sweep="$(ls "$OUT/$shape"/*-sweep.json 2>/dev/null | head -n1 || true)"
        if [ -n "$sweep" ]; then
            python3 - "$shape" "$sweep" >> "$SUMMARY" <<'EOF'
import json, sys
shape, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
for r in d["runs"]:
    print("\t".join(str(x) for x in (shape, r["request_rate"], round(r["request_throughput"], 3),
          round(r["output_throughput"], 1), round(r["request_goodput"], 3),
          round(r["slo_attainment"], 3), round(r["mean_ttft_ms"], 1), round(r["mean_tpot_ms"], 2))))
EOF
        fi
    fi
    cleanup
done

[ "$DRY" = 1 ] && exit 0
echo
echo "== shape comparison ($SUMMARY) =="
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
# highest rate meeting the SLOs per shape
python3 - "$SUMMARY" "$ATTAIN" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
target = float(sys.argv[2])
for shape in dict.fromkeys(r["shape"] for r in rows):
    ok = [r for r in rows if r["shape"] == shape and r["rate"] != "inf"
          and float(r["slo_attainment"]) >= target]
    best = max(ok, key=lambda r: float(r["rate"])) if ok else None
    print("%-8s highest rate with >= %d%% SLO attainment: %s" % (
        shape, round(100 * target), best["rate"] + " req/s" if best else "none"))
EOF
if command -v gnuplot >/dev/null; then
    gp="$OUT/compare.gp"
    {
        echo "set terminal pngcairo size 1000,700"
        echo "set output '$OUT/compare_goodput.png'"
        echo "set title 'goodput vs request rate by cluster shape'"
        echo "set xlabel 'request rate (req/s)'; set ylabel 'goodput (req/s)'; set grid; set key top left"
        printf "plot "
        first=1
        for shape in $SHAPES; do
            [ $first = 0 ] && printf ", "
            printf "'< awk -F\"\\\\t\" \"\\\\\$1==\\\\\"%s\\\\\" && \\\\\$2!=\\\\\"inf\\\\\"\" %s' using 2:5 with linespoints lw 2 title '%s'" "$shape" "$SUMMARY" "$shape"
            first=0
        done
        echo
    } > "$gp"
    gnuplot "$gp" && echo "plot: $OUT/compare_goodput.png"
fi
