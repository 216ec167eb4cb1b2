#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the given extras, e.g. "serve,train".
# torch is installed first, pinned to the CPU build: any other resolution pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:?usage: setup_venv.sh EXTRAS}
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[$extras]"
