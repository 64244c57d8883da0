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
.venv/bin/python -m pip install -q -e ".[all,test,ray]"

# The real TorchServe 0.12.0, run side by side with modelserve by the parity tests, in a venv of its own: its `ts`
# package would hide modelserve's `ts` compatibility package in .venv. Its vision and text handlers import captum and
# torchvision, and PyPI's torchvision does not import beside the CPU build of torch 2.13.0 ("operator torchvision::nms
# does not exist"), so this venv takes torch 2.14.1 with torchvision 0.29.1, pinned (a CUDA build of about 5.5 GB that
# runs on the CPU; an open range could pull a newer one). Skipped when already complete.
TS_PACKAGES=("torch==2.14.1" "torchvision==0.29.1" "torchserve==0.12.0" "torch-model-archiver==0.12.0"
             "captum==0.9.0" pyyaml pillow numpy)
if [ "$(cat .venv-torchserve/.complete 2>/dev/null)" != "${TS_PACKAGES[*]}" ]; then
  echo "setup.sh: installing ${TS_PACKAGES[*]} into .venv-torchserve"
  "$PYTHON" -m venv --clear .venv-torchserve
  .venv-torchserve/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv-torchserve/bin/python -m pip install -qq "${TS_PACKAGES[@]}"
  echo "${TS_PACKAGES[*]}" > .venv-torchserve/.complete
fi
