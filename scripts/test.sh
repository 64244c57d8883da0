#!/usr/bin/env bash
# Set up .venv, then lint, type-check, audit the dependencies and run the whole test suite. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# installed direct dependencies against a vendored, dated list of known-vulnerable ranges (offline: see the script)
.venv/bin/python scripts/audit_dependencies.py
# pytest exits 5 when it collects no tests, which fails this script
.venv/bin/pytest "$@"
