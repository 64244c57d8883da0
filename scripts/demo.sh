#!/usr/bin/env bash
# Set up .venv, train the two example models (nothing is downloaded), archive them into model_store/ and start the
# demo server on 127.0.0.1:8080 (inference), :8081 (management) and :8082 (metrics). Stop it with:
#   .venv/bin/modelserve --stop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p model_store
.venv/bin/python examples/mnist/train.py --export-path model_store --samples-dir .
.venv/bin/python examples/iris_onnx/train.py --export-path model_store --samples-dir .
.venv/bin/modelserve --stop >/dev/null 2>&1 || true
# the demo listens on loopback only; the management token is off so the README's curl lines work as written
.venv/bin/modelserve --start --model-store model_store --models mnist=mnist.mar iris=iris.mar \
  --disable-token-auth --ncs
