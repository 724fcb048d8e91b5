#!/usr/bin/env bash
# Browser test, as a person uses the product: Debian's Jupyter Notebook server on loopback,
# a notebook opened in Debian's headless Chromium (driven by playwright-core), the kernel
# "Go (qwengo)" picked from the Kernel menu, Cell → Run All, outputs read from the page and a
# screenshot saved.
#
#   kernel/kerneltest/browser/run.sh [NOTEBOOK.ipynb] [--expect TEXT ...]
#
# Needs: chromium, jupyter-notebook (Debian), node + npm. Artifacts (screenshot.png,
# outputs.json, server.log) go to $BROWSER_ARTIFACTS (default .cache/browser-artifacts).
# QWENGO_MODEL is passed to the kernel when set (the notebooks default to the embedded model).
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD
GO=${GO:-go}
nb=${1:-notebooks/01-quickstart.ipynb}
shift || true
out=${BROWSER_ARTIFACTS:-$root/.cache/browser-artifacts}
mkdir -p "$out"

tmp=$(mktemp -d)
server=
cleanup() {
  [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
export JUPYTER_DATA_DIR="$tmp/data" JUPYTER_PATH="$tmp/data" JUPYTER_CONFIG_DIR="$tmp/config" \
       JUPYTER_RUNTIME_DIR="$tmp/runtime" IPYTHONDIR="$tmp/ipython" JUPYTER_PLATFORM_DIRS=0 \
       QWENGO_HISTORY="$tmp/history.jsonl"

"$GO" build -o "$tmp/bin/qwenkernel" ./kernel/cmd/qwenkernel
"$GO" run ./install --binary "$tmp/bin/qwenkernel" >/dev/null
(cd kernel/kerneltest/browser && npm ci --no-audit --no-fund --silent)

# The notebook runs from a scratch copy: the server's autosave must not touch the repository.
mkdir -p "$tmp/nb"
cp "$nb" "$tmp/nb/"
name=$(basename "$nb")
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token=$(/usr/bin/python3 -c 'import secrets; print(secrets.token_hex(16))')
/usr/bin/python3 -m notebook --no-browser --ip=127.0.0.1 --port="$port" --notebook-dir="$tmp/nb" \
  --NotebookApp.token="$token" --NotebookApp.open_browser=False $( [[ $(id -u) == 0 ]] && echo --allow-root ) \
  >"$out/server.log" 2>&1 &
server=$!
up=
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$port/api/status?token=$token" >/dev/null && { up=1; break; }
  kill -0 "$server" 2>/dev/null || break
  sleep 0.2
done
if [[ -z "$up" ]]; then
  echo "browser test: the Jupyter Notebook server did not start; its log:" >&2
  tail -20 "$out/server.log" >&2
  exit 1
fi
node kernel/kerneltest/browser/browser.mjs --url "http://127.0.0.1:$port/?token=$token" \
  --notebook "$name" --out "$out" "$@"
