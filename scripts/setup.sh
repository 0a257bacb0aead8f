#!/usr/bin/env bash
# Set up a fresh machine: .venv with the project and every extra (CPU torch pinned).
#   scripts/setup.sh            python environment only
#   scripts/setup.sh --browser  also Chromium + chromedriver (browser end-to-end tests; needs root/apt)
# Idempotent: re-installs only when pyproject.toml or constraints-cpu.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

stamp=".venv/.installed-$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pipecat-vibevoice[all,dev,ray] (torch pinned by constraints-cpu.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints-cpu.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[all,dev,ray]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ "${1:-}" = "--browser" ] && [ ! -x /usr/lib/chromium/chromium ]; then
  echo "setup: installing Chromium and chromedriver (apt)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root for apt-get; install 'chromium chromium-driver' yourself" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "setup: ready"
