#!/usr/bin/env bash
# Install audiofind for development and testing into the active Python environment.
# torch is pinned first so pip takes the CPU build (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,ray]"  # ray: tests/test_ray_index.py runs a local Ray cluster
# The browser test drives Debian's Chromium (no browser downloads are possible offline).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Chromium (e.g. 'sudo apt-get install chromium') for the browser test" >&2
  fi
fi
