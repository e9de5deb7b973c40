#!/usr/bin/env bash
# Creates .venv with everything handpipe needs to run and to test. Safe to run again.
# mediapipe goes in with --no-deps: it declares jax, jaxlib and other packages the hand landmarker
# never uses (about 500 MB); requirements-dev.txt lists what it does use.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "handpipe setup: creating .venv with $python" >&2
  "$python" -m venv .venv
fi
echo "handpipe setup: installing packages (the first run downloads about 150 MB)" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check 'pip>=24,<26.3'
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps mediapipe==0.10.21
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "handpipe setup: ready (.venv/bin/handpipe)" >&2
