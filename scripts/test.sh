#!/usr/bin/env bash
# The project's test command: set up what is missing, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
