#!/usr/bin/env bash
# Set up .venv, then lint, type-check and run the whole test suite. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collects no tests, which fails this script
.venv/bin/pytest "$@"
