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
# pip's stderr is held and filtered, its exit status kept (set -e stops on a failure). Two kinds of
# lines are dropped, each summed up in one line: the resolver's "mediapipe ... requires jax, which is
# not installed" (left out on purpose, see above), and "Location 'file:///...' is ignored", which a
# pip configuration naming local index folders that do not exist here prints once per package.
# Anything else pip says, an error above all, is shown as it came.
pip_log=$(mktemp)
pip_dropped=$(mktemp)
trap 'rm -f "$pip_log" "$pip_dropped"' EXIT
pip_install() {
  local status=0
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>"$pip_log" || status=$?
  awk -v status="$status" -v dropped="$pip_dropped" '
    function flush_block(   i, keep) {
      # The resolver block is dropped only when every line in it is a package mediapipe declares
      # and does not get; any other conflict is a real one and is shown whole.
      keep = (status != 0)
      for (i = 1; i <= nblock; i++) if (block[i] !~ /^mediapipe [^ ]+ requires [^ ]+, which is not installed\.$/) keep = 1
      if (keep) { print header; for (i = 1; i <= nblock; i++) print block[i] }
      else mediapipe = 1
      inblock = 0; nblock = 0
    }
    /^ERROR: pip.s dependency resolver does not currently take into account/ {
      if (inblock) flush_block()
      inblock = 1; header = $0; next
    }
    inblock && /^[A-Za-z0-9._-]+ [^ ]+ requires / { block[++nblock] = $0; next }
    inblock { flush_block() }
    /^WARNING: Location .file:\/\/[^ ]*. is ignored: it is neither a file nor a directory\.$/ { ignored++; next }
    { print }
    END {
      if (inblock) flush_block()
      if (mediapipe) print "mediapipe" >>dropped
      if (ignored) print "ignored " ignored >>dropped
    }' "$pip_log" >&2
  return "$status"
}
# One line for each kind of notice dropped, however many steps printed it.
pip_summary() {
  if grep -q '^mediapipe$' "$pip_dropped"; then
    echo "handpipe setup: pip's resolver notes that mediapipe lacks jax, jaxlib and more it declares; that is on" \
      "purpose (the hand landmarker never uses them), so those lines are not shown" >&2
  fi
  local ignored
  ignored=$(awk '$1 == "ignored" { n += $2 } END { print n + 0 }' "$pip_dropped")
  if [ "$ignored" -gt 0 ]; then
    echo "handpipe setup: pip's configuration names local index folders that do not exist here; pip ignored" \
      "them ($ignored notices not shown)" >&2
  fi
}
pip_install 'pip>=24,<26.3'
pip_install --no-deps mediapipe==0.10.21
pip_install -r requirements-dev.txt
pip_install --no-deps -e .
pip_summary
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
