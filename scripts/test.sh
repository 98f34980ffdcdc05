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
# each runner's own summary line, printed again at the very end (CI's log ends with them)
out=$(mktemp)
summary=()
trap 'rm -f "$out"' EXIT
ctest_summary() { grep -E '^[0-9]+% tests passed|^No tests were found' "$out" | tail -1; }

echo "== ctest (unit, net)"
(cd "$build" && ctest --output-on-failure -L 'unit|net' -j"$(nproc)") 2>&1 | tee "$out" || rc=1
summary+=("ctest (unit, net): $(ctest_summary)")

echo "== pytest"
python3 -m pytest -q tests/ -p no:cacheprovider 2>&1 | tee "$out"
prc=${PIPESTATUS[0]}
summary+=("pytest: $(grep -v '^[[:space:]]*$' "$out" | tail -1)")
# exit 5 = no tests collected: not a failure of the suite itself
if [ $prc -ne 0 ] && [ $prc -ne 5 ]; then rc=1; fi

if [ "${PD_SKIP_FUZZ:-0}" != 1 ] && command -v clang >/dev/null; then
  echo "== fuzz (20000 inputs per target, ASan/UBSan)"
  fbuild="$build-fuzz"
  if CC=clang cmake -S . -B "$fbuild" -DPD_FUZZ=ON -DPD_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
     cmake --build "$fbuild" -j"$(nproc)" --target fuzz_gguf fuzz_safetensors fuzz_tokenizer fuzz_template fuzz_toolcall \
       fuzz_http_json fuzz_kvx_msg $( [ -f tests/fuzz/fuzz_oai_request.c ] && echo fuzz_oai_request ) >/dev/null; then
    (cd "$fbuild" && ctest --output-on-failure -L fuzz -j"$(nproc)") 2>&1 | tee "$out" || rc=1
    summary+=("ctest (fuzz): $(ctest_summary)")
  else
    echo "fuzz build failed"; rc=1
    summary+=("ctest (fuzz): build failed")
  fi
fi

echo "== summary"
[ -n "${CI_START:-}" ] && echo "ci: finished in $(( $(date +%s) - CI_START )) s"
printf '%s\n' "${summary[@]}"
[ $rc -eq 0 ] && echo "all test runners passed" || echo "FAILED (exit $rc)"
exit $rc
