#!/usr/bin/env bash
# Create .venv and install modelserve with every extra it is tested with. torch is pinned (2.13.0, CPU build here):
# an open range could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0" "setuptools>=77" wheel
.venv/bin/python -m pip install -q -e ".[all,test]"
