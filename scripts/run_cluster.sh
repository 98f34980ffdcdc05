#!/usr/bin/env bash
# Sets up pdserve on this machine (packages, default model, build) and runs a local
# disaggregated cluster: prefill node(s), decode node(s) and the proxy in front.
#
#   scripts/run_cluster.sh                 # 1P1D; CPU backend (GPUs when built with CUDA and present)
#   PROXY_PORT=8000 PREFILL_PORT=8100 DECODE_PORT=8200 KV_PORT=14579 KV_CONNECTOR=UcxConnector scripts/run_cluster.sh
#   NUM_PREFILL=2 NUM_DECODE=2 scripts/run_cluster.sh   # xPyD on one host: node i listens on
#                                          # PREFILL_PORT+i / DECODE_PORT+i; KV side channels on
#                                          # KV_PORT+2i (prefill i) and KV_PORT+2i+1 (decode i)
#   scripts/run_cluster.sh --single        # one decode node only (no proxy, no transfer)
#
# Point any OpenAI client at http://127.0.0.1:$PROXY_PORT/v1 .  Ctrl-C stops everything.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=/usr/local/cuda/bin:$PATH
build=${BUILD_DIR:-$top/build}
PROXY_PORT=${PROXY_PORT:-8000}
PREFILL_PORT=${PREFILL_PORT:-8100}
DECODE_PORT=${DECODE_PORT:-8200}
KV_PORT=${KV_PORT:-14579}
KV_CONNECTOR=${KV_CONNECTOR:-UcxConnector}
MODEL=${MODEL:-SmolLM2-135M-Instruct}
NODE_ARGS=${NODE_ARGS:---max-model-len 4096 --cpu-kvcache-space 1}
# UCX reads this when the library loads: it must be in the environment before the nodes start
export UCX_MEM_MMAP_HOOK_MODE=${UCX_MEM_MMAP_HOOK_MODE:-none}

bash scripts/setup.sh
if [ ! -x "$build/decode/pdserve-decode" ] || [ ! -x "$build/proxy/pdserve-proxy" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target pdserve-decode pdserve-prefill pdserve-proxy
fi
device=cpu
# CUDA when a GPU is there and the node binary was built with the CUDA backend (PD_CUDA
# defaults to AUTO, so the cache's PD_CUDA value does not say; the binary's libraries do)
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && ldd "$build/decode/pdserve-decode" 2>/dev/null | grep -q libcudart; then
  device=cuda
fi
# with two or more GPUs the prefill node computes on GPU 0 and the decode node on GPU 1;
# each sees the other too (a peer's CUDA IPC handle opens only on a visible device)
gpus_prefill=${CUDA_VISIBLE_DEVICES:-} gpus_decode=${CUDA_VISIBLE_DEVICES:-}
if [ "$device" = cuda ] && [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$(nvidia-smi -L | grep -c '^GPU')" -ge 2 ]; then
  gpus_prefill=0,1 gpus_decode=1,0
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_health() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
    sleep 0.2
  done
  echo "node on port $1 did not become healthy" >&2
  return 1
}

if [ "${1:-}" = "--single" ]; then
  "$build/decode/pdserve-decode" --model "$MODEL" --port "$DECODE_PORT" --device "$device" $NODE_ARGS &
  pids+=($!)
  wait_health "$DECODE_PORT"
  echo "single decode node: http://127.0.0.1:$DECODE_PORT/v1  (Ctrl-C to stop)"
  wait
  exit 0
fi

NUM_PREFILL=${NUM_PREFILL:-1}
NUM_DECODE=${NUM_DECODE:-1}
proxy_args=()
for ((i = 0; i < NUM_PREFILL; i++)); do
  env ${gpus_prefill:+CUDA_VISIBLE_DEVICES=$gpus_prefill} "$build/prefill/pdserve-prefill" --model "$MODEL" --port $((PREFILL_PORT + i)) --device "$device" $NODE_ARGS \
    --kv-transfer-config "{\"kv_connector\":\"$KV_CONNECTOR\",\"kv_role\":\"kv_producer\",\"kv_port\":$((KV_PORT + 2 * i))}" &
  pids+=($!)
  proxy_args+=(--prefill "127.0.0.1:$((PREFILL_PORT + i))")
done
for ((i = 0; i < NUM_DECODE; i++)); do
  env ${gpus_decode:+CUDA_VISIBLE_DEVICES=$gpus_decode} "$build/decode/pdserve-decode" --model "$MODEL" --port $((DECODE_PORT + i)) --device "$device" $NODE_ARGS \
    --kv-transfer-config "{\"kv_connector\":\"$KV_CONNECTOR\",\"kv_role\":\"kv_consumer\",\"kv_port\":$((KV_PORT + 2 * i + 1))}" &
  pids+=($!)
  proxy_args+=(--decode "127.0.0.1:$((DECODE_PORT + i))")
done
for ((i = 0; i < NUM_PREFILL; i++)); do wait_health $((PREFILL_PORT + i)); done
for ((i = 0; i < NUM_DECODE; i++)); do wait_health $((DECODE_PORT + i)); done
"$build/proxy/pdserve-proxy" --port "$PROXY_PORT" "${proxy_args[@]}" &
pids+=($!)
wait_health "$PROXY_PORT"
cat <<MSG
pdserve cluster is up ($device, ${NUM_PREFILL}P${NUM_DECODE}D): proxy http://127.0.0.1:$PROXY_PORT/v1
  prefill http://127.0.0.1:$PREFILL_PORT..   decode http://127.0.0.1:$DECODE_PORT..   KV over $KV_CONNECTOR
try:  curl http://127.0.0.1:$PROXY_PORT/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model":"$MODEL","messages":[{"role":"user","content":"What is the capital of France?"}]}'
Ctrl-C stops the cluster.
MSG
wait
