#!/usr/bin/env bash
# Builds pdserve (if needed) and runs every test that runs on this machine:
# ctest (labels unit and net) and the pytest suites under tests/.  CUDA tests (label
# cuda) need a GPU: run scripts/gpu_suite.sh on the GPU machine.
#   BUILD_DIR (default build), PD_WERROR (default ON in CI)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
cd "$top"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DPD_WERROR="${PD_WERROR:-ON}" >/dev/null || exit 1
fi
cmake --build "$build" -j"$(nproc)" >/dev/null || { cmake --build "$build" -j1; exit 1; }
rc=0
(cd "$build" && ctest --output-on-failure -L 'unit|net' -j"$(nproc)") || rc=1
export PDSERVE_BUILD_DIR="$build"
python3 -m pytest -q tests/ -p no:cacheprovider
prc=$?
# pytest exit 5 = no tests collected: not a failure of the suite itself
if [ $prc -ne 0 ] && [ $prc -ne 5 ]; then rc=1; fi
exit $rc
