#!/usr/bin/env bash
# Builds pdserve (if needed) and runs every test that runs on this machine:
#   1. ctest, labels unit and net (C unit tests, goldens against Hugging Face, the engine,
#      kvxfer over loopback and across network namespaces)
#   2. pytest over tests/ (real node processes driven by the openai client, tokenizer and
#      chat-template references, the benchmark tool against a scripted server, ...)
#   3. a short libFuzzer run of every parser of untrusted bytes (clang; skipped without it)
# CUDA tests (label cuda) need a GPU: scripts/gpu_suite.sh runs them on the GPU machine.
#   BUILD_DIR (default build), PD_WERROR (default ON), PD_SKIP_FUZZ=1 to skip step 3
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
cd "$top"
export PATH=/usr/local/cuda/bin:$PATH
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DPD_WERROR="${PD_WERROR:-ON}" >/dev/null || exit 1
fi
cmake --build "$build" -j"$(nproc)" >/dev/null || { cmake --build "$build" -j1; exit 1; }
export PDSERVE_BUILD_DIR="$build" PD_BINARY_DIR="$build" PD_SOURCE_DIR="$top"
rc=0

echo "== ctest (unit, net)"
(cd "$build" && ctest --output-on-failure -L 'unit|net' -j"$(nproc)") || rc=1

echo "== pytest"
python3 -m pytest -q tests/ -p no:cacheprovider
prc=$?
# exit 5 = no tests collected: not a failure of the suite itself
if [ $prc -ne 0 ] && [ $prc -ne 5 ]; then rc=1; fi

if [ "${PD_SKIP_FUZZ:-0}" != 1 ] && command -v clang >/dev/null; then
  echo "== fuzz (20000 inputs per target, ASan/UBSan)"
  fbuild="$build-fuzz"
  if CC=clang cmake -S . -B "$fbuild" -DPD_FUZZ=ON -DPD_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
     cmake --build "$fbuild" -j"$(nproc)" --target fuzz_gguf fuzz_safetensors fuzz_tokenizer fuzz_template \
       fuzz_http_json fuzz_kvx_msg $( [ -f tests/fuzz/fuzz_oai_request.c ] && echo fuzz_oai_request ) >/dev/null; then
    (cd "$fbuild" && ctest --output-on-failure -L fuzz -j"$(nproc)") || rc=1
  else
    echo "fuzz build failed"; rc=1
  fi
fi
exit $rc
