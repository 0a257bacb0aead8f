#!/usr/bin/env bash
# The project's test command: set up what is missing, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
if [ $# -eq 0 ]; then
  # The numeric tests once more on torch's generic kernels: other CPUs round otherwise,
  # and the tolerances must hold for them too (tests/vibevoice/numerics.py).
  echo "test: tests/vibevoice again with ATEN_CPU_CAPABILITY=default"
  ATEN_CPU_CAPABILITY=default .venv/bin/python -m pytest -q -ra tests/vibevoice
fi
