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
# The viewer's browser test drives Debian's chromium (never a downloaded browser). Installing it needs root;
# without it the test skips (and fails in CI), so this step never stops the setup.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "handpipe setup: installing chromium for the viewer's browser test (apt-get install chromium, about 100 MB)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } >&2; then
      echo "handpipe setup: could not install chromium; the viewer's browser test will skip (and fail in CI)" >&2
    fi
  else
    echo "handpipe setup: /usr/bin/chromium is missing and this is not root: the viewer's browser test will skip" \
      "(install it with: sudo apt-get install chromium)" >&2
  fi
fi
echo "handpipe setup: ready (.venv/bin/handpipe)" >&2
