#!/usr/bin/env bash
# Set up .venv with only what the demo needs, train the two example models (nothing is downloaded), archive them into
# model_store/ and start the demo server on 127.0.0.1:8080 (inference), :8081 (management) and :8082 (metrics).
# Stop it with:
#   .venv/bin/modelserve --stop
# (scripts/test.sh installs everything the tests need on top; this script installs much less.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PIP=(.venv/bin/python -m pip install -q)

# step MESSAGE COMMAND...: says what it starts, prints a dot every few seconds while the command runs, then how long it
# took; the command's own output is shown only if it fails
step() {
  local message="$1" output start pid
  shift
  output="$(mktemp)"
  start=$SECONDS
  printf '%s...' "$message"
  "$@" >"$output" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 3
    if kill -0 "$pid" 2>/dev/null; then printf '.'; fi
  done
  if wait "$pid"; then
    printf ' done (%d s)\n' $((SECONDS - start))
    rm -f "$output"
  else
    printf ' failed:\n'
    tail -n 40 "$output" >&2
    rm -f "$output"
    return 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv" "$PYTHON" -m venv .venv
fi
# torch is pinned: an open range can pull a multi-GB CUDA build
step "installing torch 2.13.0 (CPU)" "${PIP[@]}" "torch==2.13.0" "setuptools>=77" wheel
step "installing modelserve with its torch and ONNX Runtime extras (-e .[all])" "${PIP[@]}" -e ".[all]"
# what examples/*/train.py import besides modelserve and torch
step "installing what the example trainers need (scikit-learn, skl2onnx, onnx)" \
  "${PIP[@]}" "scikit-learn>=1.4" "skl2onnx>=1.17" "onnx>=1.16"
mkdir -p model_store
echo "training the MNIST ConvNet on scikit-learn's bundled 8x8 digits (under a minute):"
.venv/bin/python examples/mnist/train.py --export-path model_store --samples-dir .
echo "training the iris classifier and converting it to ONNX:"
.venv/bin/python examples/iris_onnx/train.py --export-path model_store --samples-dir .
.venv/bin/modelserve --stop >/dev/null 2>&1 || true
echo "starting the demo server..."
# the demo listens on loopback only; the management token is off so the README's curl lines work as written
.venv/bin/modelserve --start --model-store model_store --models mnist=mnist.mar iris=iris.mar \
  --disable-token-auth --ncs
